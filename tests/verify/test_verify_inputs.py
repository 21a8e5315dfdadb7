"""graphopt.verify.inputs: generation (vocab, masks, dims) and input checks."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InputError
from graphopt.verify import check_inputs, generate_inputs, model_dim_names, run_model

VOCAB = 37
TYPES = 2
POSITIONS = 64


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _table(name: str, rows: int, width: int = 4) -> TensorProto:
    return numpy_helper.from_array(np.arange(rows * width, dtype=np.float32).reshape(rows, width), name)


def bert_embeddings() -> onnx.ModelProto:
    """BERT-style embeddings: ids reach their tables through Cast/Reshape/Flatten."""
    seq = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, seq),
        helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, seq),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, seq),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["word", "ids32"], ["w"]),
        helper.make_node("Flatten", ["token_type_ids"], ["tt_flat"], axis=1),
        helper.make_node("Reshape", ["tt_flat", "shape2d"], ["tt"]),
        helper.make_node("Gather", ["types", "tt"], ["t"]),
        helper.make_node("Gather", ["positions", "position_ids"], ["p"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "minus1"], ["m3"]),
        helper.make_node("Sum", ["w", "t", "p"], ["e"]),
        helper.make_node("Mul", ["e", "m3"], ["out"]),
    ]
    inits = [
        _table("word", VOCAB),
        _table("types", TYPES),
        _table("positions", POSITIONS),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape2d"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1"),
    ]
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 4])]
    return _model(nodes, inputs, out, inits)


def test_bert_inputs_exact_ranges_and_shapes():
    model = bert_embeddings()
    gen = generate_inputs(model, dims={"batch": 2, "sequence": 48}, seed=0)
    assert list(gen) == ["input_ids", "attention_mask", "token_type_ids", "position_ids"]
    for value in gen.values():
        assert value.shape == (2, 48)
        assert value.dtype == np.int64
    ids = gen["input_ids"]
    assert ids.min() >= 0 and ids.max() < VOCAB
    assert set(np.unique(gen["token_type_ids"])) == {0, 1}  # the type table's rows, both drawn
    assert (gen["attention_mask"] == 1).all()
    np.testing.assert_array_equal(gen["position_ids"], np.tile(np.arange(48), (2, 1)))
    run_model(model, gen)  # every index is inside its table: onnxruntime runs it


def test_vocab_is_covered_not_just_bounded():
    ids = generate_inputs(bert_embeddings(), dims={"sequence": 2000}, seed=3)["input_ids"]
    assert ids.min() == 0 and ids.max() == VOCAB - 1


def test_generation_is_seeded():
    a = generate_inputs(bert_embeddings(), seed=5)["input_ids"]
    b = generate_inputs(bert_embeddings(), seed=5)["input_ids"]
    c = generate_inputs(bert_embeddings(), seed=6)["input_ids"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_default_dims():
    model = bert_embeddings()
    assert generate_inputs(model)["input_ids"].shape == (1, 16)  # batch -> 1, sequence -> 16


def test_position_ids_wrap_into_a_short_table(caplog):
    gen = generate_inputs(bert_embeddings(), dims={"sequence": POSITIONS + 3})
    assert gen["position_ids"][0, -3:].tolist() == [0, 1, 2]
    assert "position table has 64 rows" in caplog.text


def test_unknown_dim_name_lists_model_dims():
    with pytest.raises(InputError) as info:
        generate_inputs(bert_embeddings(), dims={"seq_len": 8})
    assert "'seq_len'" in str(info.value)
    assert "batch, sequence" in str(info.value)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_dim_size(bad):
    with pytest.raises(InputError, match="non-negative integer"):
        generate_inputs(bert_embeddings(), dims={"batch": bad})


def test_dim_kinds_and_expressions():
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch_size", "past_sequence_length + 1", 3]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, "foo", "height", "width"]),
    ]
    model = _model(
        [helper.make_node("Identity", ["a"], ["y"]), helper.make_node("Identity", ["b"], ["z"])],
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )  # fmt: skip
    assert model_dim_names(model) == ["batch_size", "foo", "height", "past_sequence_length", "width"]
    gen = generate_inputs(model)
    assert gen["a"].shape == (1, 17, 3)
    assert gen["b"].shape == (1, 1, 64, 64)
    gen = generate_inputs(model, dims={"past_sequence_length": 4, "foo": 7})
    assert gen["a"].shape == (1, 5, 3)
    assert gen["b"].shape == (1, 7, 64, 64)


def test_dtypes_without_tables():
    inputs = [
        helper.make_tensor_value_info("flag", TensorProto.BOOL, [3]),
        helper.make_tensor_value_info("idx", TensorProto.INT32, [200]),
        helper.make_tensor_value_info("img", TensorProto.UINT8, [4000]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT16, [2, 3]),
        helper.make_tensor_value_info("bf", TensorProto.BFLOAT16, [2, 3]),
        helper.make_tensor_value_info("pad_mask", TensorProto.FLOAT, [5]),
        helper.make_tensor_value_info("segment_ids", TensorProto.INT64, [4]),
    ]
    nodes = [helper.make_node("Identity", [i.name], [i.name + "_out"]) for i in inputs]
    outs = [helper.make_tensor_value_info(i.name + "_out", i.type.tensor_type.elem_type, None) for i in inputs]
    gen = generate_inputs(_model(nodes, inputs, outs))
    assert gen["flag"].dtype == np.bool_ and gen["flag"].all()
    assert gen["idx"].dtype == np.int32 and set(np.unique(gen["idx"])) == {0, 1}
    assert gen["img"].dtype == np.uint8 and gen["img"].min() == 0 and gen["img"].max() == 255
    assert gen["h"].dtype == np.float16 and gen["h"].shape == (2, 3)
    assert gen["bf"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(gen["pad_mask"], np.ones(5, np.float32))
    np.testing.assert_array_equal(gen["segment_ids"], np.zeros(4, np.int64))


def test_initializer_inputs_are_not_generated():
    model = bert_embeddings()
    model.graph.input.append(helper.make_tensor_value_info("word", TensorProto.FLOAT, [VOCAB, 4]))
    assert "word" not in generate_inputs(model)


def test_gather_on_axis_one_and_through_constant():
    """Vocab = the table's size on the Gather axis; table from a Constant node."""
    table = helper.make_tensor("t", TensorProto.FLOAT, [3, 5], np.zeros(15, np.float32).tolist())
    nodes = [
        helper.make_node("Constant", [], ["table"], value=table),
        helper.make_node("Unsqueeze", ["ids", "zero"], ["ids2"]),
        helper.make_node("Gather", ["table", "ids2"], ["y"], axis=1),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [500])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )
    ids = generate_inputs(model)["ids"]
    assert ids.min() == 0 and ids.max() == 4


def test_string_and_shapeless_inputs_refused():
    model = _model(
        [helper.make_node("Identity", ["s"], ["y"])],
        [helper.make_tensor_value_info("s", TensorProto.STRING, [2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, None)],
    )
    with pytest.raises(InputError, match="'s' is a string tensor"):
        generate_inputs(model)
    model = _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(InputError, match="'x' declares no shape"):
        generate_inputs(model)


# --- check_inputs ---------------------------------------------------------------


def _good() -> dict[str, np.ndarray]:
    return generate_inputs(bert_embeddings(), dims={"batch": 1, "sequence": 8})


def test_check_inputs_accepts_generated():
    check_inputs(bert_embeddings(), _good())


def test_check_unknown_name():
    feed = _good() | {"input_idz": np.zeros((1, 8), np.int64)}
    expected = r"'input_idz' is not an input of the model.*input_ids: int64\[batch, sequence\]"
    with pytest.raises(InputError, match=expected):
        check_inputs(bert_embeddings(), feed)


def test_check_missing():
    feed = _good()
    del feed["attention_mask"]
    with pytest.raises(InputError, match=r"'attention_mask' \(int64\[batch, sequence\]\) is missing"):
        check_inputs(bert_embeddings(), feed)


def test_check_dtype():
    feed = _good() | {"input_ids": np.zeros((1, 8), np.int32)}
    with pytest.raises(InputError, match="'input_ids': expected dtype int64 .* got int32"):
        check_inputs(bert_embeddings(), feed)


def test_check_rank():
    feed = _good() | {"position_ids": np.zeros((8,), np.int64)}
    with pytest.raises(InputError, match=r"'position_ids': expected rank 2 .* got rank 1 with shape \(8,\)"):
        check_inputs(bert_embeddings(), feed)


def test_check_static_dim():
    model = _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    check_inputs(model, {"x": np.zeros((5, 3), np.float32)})
    with pytest.raises(InputError, match=r"'x': axis 1 must be 3 \(float\[n, 3\]\), got shape \(5, 4\)"):
        check_inputs(model, {"x": np.zeros((5, 4), np.float32)})


def test_check_inconsistent_symbolic_dim_warns(caplog):
    feed = _good() | {"attention_mask": np.ones((1, 9), np.int64)}
    check_inputs(bert_embeddings(), feed)
    assert "dim 'sequence' is 8 in input input_ids but 9 in input attention_mask" in caplog.text

"""Input growth (:class:`graphopt.verify.inputs.Growth`), whole shapes and
fill values in :func:`generate_inputs`, and the position tables of
:func:`graphopt.verify.tables.position_limit`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import MODELS
from graphopt.errors import InputError
from graphopt.verify import generate_inputs
from graphopt.verify.feed import InputRequest, check_request
from graphopt.verify.inputs import Growth, InputSpec, resolve_shape
from graphopt.verify.tables import PositionTable, position_limit

F, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.mark.parametrize(("dims", "grow", "expected"), [
    ((None, None), None, (1, 1)),
    ((None, None), Growth(1, 64), (1, 64)),            # axis 0 is batch-like
    ((2, None, 128), Growth(1, 64), (2, 1, 128)),      # the only dynamic axis of a state: batch-like
    ((None,), Growth(1, 64), (1,)),                    # rank 1: axis 0
    ((128, None), Growth(1, 64), (128, 64)),           # rank 2, last axis: a length
    (("batch", "sequence"), Growth(4, 64), (4, 64)),   # named: by name
    (("batch", "sequence"), Growth(1, 8), (1, 16)),    # never below the default
    ((None, 3, None, None), Growth(1, 256), (1, 3, 256, 256)),  # image spatial dims grow
    ((None, 3, None, None), Growth(1, 16), (1, 3, 64, 64)),
])
def test_resolve_shape_grows_free_dims(dims, grow, expected):
    assert resolve_shape(InputSpec("x", F, dims), {}, grow) == expected


def test_bound_dims_do_not_grow():
    assert resolve_shape(InputSpec("x", F, ("batch", "sequence")), {"sequence": 8}, Growth(16, 256)) == (16, 8)


def _model(*inputs: onnx.ValueInfoProto) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [i.name], [f"{i.name}_out"]) for i in inputs]
    outputs = [helper.make_tensor_value_info(f"{i.name}_out", i.type.tensor_type.elem_type, None) for i in inputs]
    return helper.make_model(helper.make_graph(nodes, "g", list(inputs), outputs),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_shapes_bind_their_named_dims_for_the_other_inputs():
    model = _model(helper.make_tensor_value_info("ids", I64, ["batch", "seq"]),
                   helper.make_tensor_value_info("mask", I64, ["batch", "seq"]))
    feed = generate_inputs(model, shapes={"ids": (2, 40)})
    assert feed["ids"].shape == (2, 40) and feed["mask"].shape == (2, 40)
    assert check_request(model, InputRequest(shapes={"ids": (2, 40)})) == {"batch": 2, "seq": 40}


def test_values_fill_in_the_inputs_dtype():
    model = _model(helper.make_tensor_value_info("sr", I64, []), helper.make_tensor_value_info("flag", TensorProto.BOOL, [2]),
                   helper.make_tensor_value_info("gain", TensorProto.FLOAT16, [3]))
    feed = generate_inputs(model, values={"sr": 8000, "flag": False, "gain": 0.5})
    assert feed["sr"].dtype == np.int64 and feed["sr"].shape == () and int(feed["sr"]) == 8000
    assert feed["flag"].dtype == np.bool_ and not feed["flag"].any()
    assert feed["gain"].dtype == np.float16 and (feed["gain"] == 0.5).all()


def test_conflicting_sizes_for_one_dim_name_are_refused():
    model = _model(helper.make_tensor_value_info("ids", I64, ["batch", "seq"]))
    with pytest.raises(InputError) as e:
        check_request(model, InputRequest(dims={"seq": 8}, shapes={"ids": (1, 9)}))
    assert str(e.value) == "dim 'seq' is 8 by --dim seq=8 but 9 by --shape ids (axis 1); give one size"


def test_value_out_of_the_dtype_range_is_refused():
    model = _model(helper.make_tensor_value_info("n", TensorProto.INT8, []))
    with pytest.raises(InputError, match=r"--value n=300 is outside int8 \[-128, 127\]"):
        check_request(model, InputRequest(values={"n": 300}))


@pytest.mark.parametrize(("name", "expected"), [
    ("bert_tiny_ts.onnx", PositionTable("inner.embeddings.position_embeddings.weight", 128)),
    ("gpt2_tiny_ts.onnx", PositionTable("inner.transformer.wpe.weight", 128)),
    ("llama_gqa_tiny_ts.onnx", None),   # rotary positions: no table
    ("vit_tiny_ts.onnx", None),         # [1, patches + 1, hidden]: not a sequence limit
])
def test_position_limit(name, expected):
    assert position_limit(onnx.load(str(MODELS / name), load_external_data=False)) == expected

"""Verification of models that the numpy bridge cannot carry (issue 20, item 6):
sequence / optional inputs in backend-test ``input_N.pb`` files, backend-test
folders without inputs, and 4-/2-bit and float8e8m0 tensors through packed
``OrtValue``s."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InputError
from graphopt.verify import compare, read_inputs, run_model
from graphopt.verify.ortvalues import from_ort_value, pack, to_ort_value, unpack


def _model(nodes, inputs, outputs, opset: int = 25) -> onnx.ModelProto:
    """Opset 25 (Cast to 2-bit and float8e8m0; IR 12), as the backend cases are."""
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=12 if opset >= 25 else 10)


def _seq_model() -> onnx.ModelProto:
    """y = Concat of the sequence's tensors along axis 0, plus the optional's value."""
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    opt = helper.make_value_info("o", helper.make_optional_type_proto(helper.make_tensor_type_proto(
        TensorProto.FLOAT, [2])))
    return _model(
        [helper.make_node("ConcatFromSequence", ["s"], ["c"], axis=0),
         helper.make_node("OptionalGetElement", ["o"], ["v"]),
         helper.make_node("Add", ["c", "v"], ["y"])],
        [seq, opt], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], opset=18)


def _write_backend_dir(folder: Path, model: onnx.ModelProto, seq: list[np.ndarray], opt: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_list(seq, "s").SerializeToString())
    (folder / "input_1.pb").write_bytes(numpy_helper.from_optional(opt, "o").SerializeToString())


def test_sequence_and_optional_pb_inputs_are_read_by_declared_type_and_compared(tmp_path):
    model = _seq_model()
    seq = [np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0], [5.0, 6.0]], np.float32)]
    opt = np.array([10.0, 20.0], np.float32)
    _write_backend_dir(tmp_path / "test_data_set_0", model, seq, opt)
    feed = read_inputs(tmp_path, model=model)
    assert list(feed) == ["s", "o"]
    assert isinstance(feed["s"], list) and [a.shape for a in feed["s"]] == [(1, 2), (2, 2)]
    np.testing.assert_array_equal(feed["o"], opt)
    out = run_model(model, feed)
    np.testing.assert_array_equal(out["y"], np.array([[11, 22], [13, 24], [15, 26]], np.float32))
    report = compare(model, model, inputs=tmp_path)
    assert report.ok and report.inputs == {"s": "sequence(2)", "o": "float32[2]"}


def test_sequence_pb_without_the_model_is_refused_with_a_reason(tmp_path):
    _write_backend_dir(tmp_path, _seq_model(), [np.zeros((1, 2), np.float32)], np.zeros(2, np.float32))
    with pytest.raises(InputError, match=r"input_0.pb' is not a plain tensor \(it looks like a serialized "
                                         r"onnx.SequenceProto or OptionalProto\); pass the model"):
        read_inputs(tmp_path, model_inputs=["s", "o"])


def test_sequence_input_given_a_plain_array_is_refused():
    with pytest.raises(InputError, match="input 's' is a sequence: give a list of arrays, got ndarray"):
        run_model(_seq_model(), {"s": np.zeros((1, 2), np.float32), "o": np.zeros(2, np.float32)})


def test_backend_folder_without_inputs_is_an_empty_feed(tmp_path):
    model = _model([helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(
        np.array([1.5, -2.0], np.float32)))], [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    ds = tmp_path / "test_data_set_0"
    ds.mkdir()
    (ds / "output_0.pb").write_bytes(numpy_helper.from_array(np.array([1.5, -2.0], np.float32)).SerializeToString())
    assert read_inputs(tmp_path) == {}
    assert read_inputs(ds, model=model) == {}
    assert compare(model, model, inputs=tmp_path).ok
    ds.joinpath("output_0.pb").unlink()
    with pytest.raises(InputError, match="holds no input_N.pb files"):
        read_inputs(ds)  # neither inputs nor outputs: not a backend-test folder


def test_pack_and_unpack_sub_byte_values_exactly():
    int4 = np.array([-1, 2, -8, 7, 3], dtype=ml_dtypes.int4)
    assert pack(int4, 4).tolist() == [0x2F, 0x78, 0x03]
    assert unpack(pack(int4, 4), 4, 5).view(ml_dtypes.int4).tolist() == [-1, 2, -8, 7, 3]
    int2 = np.array([-1, 1, -2, 0, 1], dtype=ml_dtypes.int2)
    assert pack(int2, 2).tolist() == [0b00100111, 0b01]
    assert unpack(pack(int2, 2), 2, 5).view(ml_dtypes.int2).tolist() == [-1, 1, -2, 0, 1]


@pytest.mark.parametrize(("elem", "dtype", "values"), [
    (TensorProto.INT4, ml_dtypes.int4, [-8, -1, 0, 3, 7]),
    (TensorProto.UINT4, ml_dtypes.uint4, [0, 1, 9, 15, 4]),
    (TensorProto.INT2, ml_dtypes.int2, [-2, -1, 0, 1, 1]),
    (TensorProto.UINT2, ml_dtypes.uint2, [0, 1, 2, 3, 2]),
    (TensorProto.FLOAT8E8M0, ml_dtypes.float8_e8m0fnu, [0.25, 1.0, 2.0, 64.0, 0.5]),
])
def test_sub_byte_and_e8m0_round_trip_through_casts(elem, dtype, values):
    """float -> T -> float in one model, and T -> float / float -> T models fed
    and read through run_model: every value exact (these are representable)."""
    x = np.array(values, np.float32)
    to_t = _model([helper.make_node("Cast", ["x"], ["t"], to=elem)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                  [helper.make_tensor_value_info("t", elem, [5])])
    got = run_model(to_t, {"x": x})["t"]
    assert got.dtype == np.dtype(dtype) and got.astype(np.float32).tolist() == values
    from_t = _model([helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)],
                    [helper.make_tensor_value_info("t", elem, [5])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])])
    assert run_model(from_t, {"t": np.array(values, dtype)})["y"].tolist() == values
    assert compare(to_t, to_t, inputs={"x": x}).ok
    assert from_ort_value(to_ort_value(np.array(values, dtype), elem)).astype(np.float32).tolist() == values


def test_sub_byte_outputs_that_differ_fail_the_comparison():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    a = _model([helper.make_node("Cast", ["x"], ["t"], to=TensorProto.INT4)],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
               [helper.make_tensor_value_info("t", TensorProto.INT4, [5])])
    b = _model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["t"], to=TensorProto.INT4)],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
               [helper.make_tensor_value_info("t", TensorProto.INT4, [5])])
    report = compare(a, b, inputs={"x": x})
    out = report.outputs[0]
    assert not report.ok and out.dtype == "int4" and out.max_abs_err == 10.0 and out.mismatched == 5

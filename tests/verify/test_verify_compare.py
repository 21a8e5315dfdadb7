"""graphopt.verify.compare / runtime: running models and comparing their outputs."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import GraphoptError, InputError, LoadError, VerificationError
from graphopt.verify import (
    ModelRunError,
    compare,
    compare_outputs,
    generate_inputs,
    run_model,
    signature_differences,
)

X = np.array([[0.0, 1.0, -2.0, 0.5]], dtype=np.float32)
DELTA = 2.0**-10  # exactly representable, and x + DELTA is exact for every x in X


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def affine(offset: float = 0.0, out: str = "y", elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = 2 * x + offset, x: [batch, 4]."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    return _model(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "off"], [out])],
        [helper.make_tensor_value_info("x", elem, ["batch", 4])],
        [helper.make_tensor_value_info(out, elem, ["batch", 4])],
        [numpy_helper.from_array(np.array(2, dtype), "two"), numpy_helper.from_array(np.array(offset, dtype), "off")],
    )


def test_identical_models():
    report = compare(affine(), affine(), dims={"batch": 3})
    assert report.ok
    (out,) = report.outputs
    assert (out.name, out.dtype, out.shape) == ("y", "float32", (3, 4))
    assert out.max_abs_err == 0.0 and out.max_rel_err == 0.0 and out.tol_ratio == 0.0
    assert out.cosine == 1.0
    assert out.argmax_agreement == 1.0  # rank 2, last dim 4: looks like logits
    assert (out.rtol, out.atol) == (1e-5, 1e-5)
    assert report.inputs == {"x": "float32[3, 4]"} and report.generated_inputs and report.seed == 0
    report.raise_for_failure()


def test_perturbed_model_exact_errors():
    report = compare(affine(), affine(DELTA), inputs={"x": X})
    assert not report.ok
    (out,) = report.outputs
    assert out.max_abs_err == DELTA
    # |a| = 2|x| = [0, 2, 4, 1]; the a = 0 element is relative to the atol floor 1e-5
    assert out.max_rel_err == pytest.approx(DELTA / 1e-5, rel=1e-12)
    assert out.tol_ratio == pytest.approx(DELTA / 1e-5, rel=1e-12)
    assert out.mismatched == 4
    assert report.worst == out.max_rel_err and report.worst_output is out
    with pytest.raises(VerificationError, match=r"output 'y' differs: 4 elements outside .*max_abs_err=0.000976562"):
        report.raise_for_failure()


def test_tolerance_boundary_is_allclose():
    ref = {"y": np.array([0.0, 100.0])}
    # atol + rtol*|a| = [1e-5, 1e-5 + 1e-3]
    assert compare_outputs(ref, {"y": np.array([1e-5, 100.00101])}).ok
    report = compare_outputs(ref, {"y": np.array([0.0, 100.0012])})
    assert not report.ok and report.outputs[0].mismatched == 1
    assert compare_outputs(ref, {"y": np.array([0.0, 100.0012])}, rtol=1e-4).ok


def test_argmax_agreement_exact():
    ref = np.array([[[1, 2, 3], [3, 2, 1], [0, 5, 1], [1, 0, 0]]], dtype=np.float32)
    got = np.array([[[1, 2, 3], [1, 2, 3], [0, 5, 1], [0, 1, 0]]], dtype=np.float32)
    out = compare_outputs({"logits": ref}, {"logits": got}).outputs[0]
    assert out.argmax_agreement == 0.5
    assert out.max_abs_err == 2.0
    a, b = ref.ravel().astype(np.float64), got.ravel().astype(np.float64)
    assert out.cosine == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-15)
    # no argmax for rank 1, or a last axis of 1, or integers
    assert compare_outputs({"v": ref.ravel()}, {"v": ref.ravel()}).outputs[0].argmax_agreement is None
    assert compare_outputs({"v": ref[..., :1]}, {"v": ref[..., :1]}).outputs[0].argmax_agreement is None
    assert compare_outputs({"v": ref.astype(np.int64)}, {"v": ref.astype(np.int64)}).outputs[0].argmax_agreement is None


def test_nan_and_inf_placement():
    ref = {"y": np.array([1.0, np.nan, np.inf, -np.inf], np.float32)}
    same = compare_outputs(ref, {"y": np.array([1.0, np.nan, np.inf, -np.inf], np.float32)})
    assert same.ok and same.outputs[0].max_abs_err == 0.0
    moved = compare_outputs(ref, {"y": np.array([np.nan, 2.0, -np.inf, -np.inf], np.float32)})
    out = moved.outputs[0]
    assert not moved.ok
    assert out.nonfinite_mismatch == 3  # NaN moved (2 positions) and +inf became -inf
    assert out.mismatched == 3
    assert "NaN/Inf at different positions in 3 elements" in out.reason


def test_integer_outputs_exact_and_dtype_shape_changes():
    ref = {"i": np.array([1, 2, 3], np.int64)}
    assert compare_outputs(ref, {"i": np.array([1, 2, 3], np.int64)}).ok
    off = compare_outputs(ref, {"i": np.array([1, 2, 4], np.int64)})
    assert not off.ok and off.outputs[0].max_abs_err == 1.0 and off.outputs[0].tol_ratio == float("inf")
    dtype = compare_outputs(ref, {"i": np.array([1, 2, 3], np.int32)}).outputs[0]
    assert not dtype.ok and dtype.reason == "dtype int64 vs int32" and dtype.max_abs_err == 0.0
    shape = compare_outputs(ref, {"i": np.array([[1, 2, 3]], np.int64)}).outputs[0]
    assert not shape.ok and shape.reason == "shape (3,) vs (1, 3)"


def test_fp16_default_tolerance():
    ref = {"h": np.array([1.0, 2.0], np.float16)}
    out = compare_outputs(ref, {"h": np.array([1.0, 2.001], np.float16)}).outputs[0]
    assert (out.rtol, out.atol) == (1e-3, 1e-3) and out.ok
    # explicit float32-sized tolerances do not go below float16's own (one rounding apart: 2.001 -> 2.00195)
    explicit = compare_outputs(ref, {"h": np.array([1.0, 2.001], np.float16)}, rtol=1e-5, atol=1e-5).outputs[0]
    assert (explicit.rtol, explicit.atol) == (1e-3, 1e-3) and explicit.ok
    far = compare_outputs(ref, {"h": np.array([1.0, 2.01], np.float16)}, rtol=1e-5, atol=1e-5).outputs[0]
    assert not far.ok and far.reason == "1 elements outside |a-b| <= 0.001 + 0.001*|a|"
    # looser explicit values still apply, and float32 outputs keep the explicit bar
    assert compare_outputs(ref, {"h": np.array([1.0, 2.01], np.float16)}, rtol=1e-2).outputs[0].rtol == 1e-2
    f32 = compare_outputs({"f": np.array([2.0], np.float32)}, {"f": np.array([2.0001], np.float32)}, rtol=1e-5,
                          atol=1e-5).outputs[0]
    assert (f32.rtol, f32.atol) == (1e-5, 1e-5) and not f32.ok


def test_output_name_mismatch_is_a_signature_failure():
    report = compare(affine(out="y"), affine(out="z"))
    assert not report.ok and report.outputs == []
    assert "output 'y' is missing from the second model" in report.signature_diffs
    assert "output 'z' is only in the second model" in report.signature_diffs
    with pytest.raises(VerificationError, match="signatures differ: output 'y' is missing"):
        report.raise_for_failure()


def test_declared_signature_differences():
    b = affine()
    b.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert signature_differences(affine(), b) == ["output 'y' axis 0 is 'batch' vs 'N'"]
    report = compare(affine(), b)
    assert not report.ok and report.outputs[0].ok  # numbers agree, the signature does not


def test_second_model_with_other_inputs_is_not_run():
    b = affine()
    b.graph.input[0].name = "x2"
    b.graph.node[0].input[0] = "x2"
    report = compare(affine(), b)
    assert not report.ok and report.outputs == []
    assert "input 'x2' is only in the second model" in report.signature_diffs


def test_paths_and_npz_inputs(tmp_path):
    onnx.save(affine(), tmp_path / "a.onnx")
    onnx.save(affine(DELTA), tmp_path / "b.onnx")
    np.savez(tmp_path / "in.npz", x=X)
    report = compare(tmp_path / "a.onnx", str(tmp_path / "b.onnx"), inputs=tmp_path / "in.npz", atol=1e-3)
    assert report.ok and report.outputs[0].max_abs_err == DELTA
    assert not report.generated_inputs and report.seed is None
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["outputs"][0]["max_abs_err"] == DELTA


def test_to_dict_writes_non_finite_as_strings():
    report = compare_outputs({"y": np.zeros(2)}, {"y": np.zeros(3)})
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["ok"] is False and data["worst_rel_err"] == "inf" and data["worst_output"] == "y"
    assert data["outputs"][0]["shape"] == [2]


def test_run_model_and_compare_outputs_for_verify_each():
    feed = generate_inputs(affine(), dims={"batch": 2})
    ref = run_model(affine(), feed)
    np.testing.assert_array_equal(ref["y"], 2 * feed["x"])
    assert compare_outputs(ref, run_model(affine(), feed)).ok


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="'x': expected dtype float32"):
        compare(affine(), affine(), inputs={"x": X.astype(np.float64)})
    with pytest.raises(InputError, match="'x': axis 1 must be 4"):
        compare(affine(), affine(), inputs={"x": np.zeros((1, 5), np.float32)})
    with pytest.raises(InputError, match="dims \\['seq'\\] name no dim .* dim names are: batch"):
        compare(affine(), affine(), dims={"seq": 3})


def test_model_onnxruntime_cannot_load():
    bad = _model(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    with pytest.raises(LoadError, match="onnxruntime cannot load model <ModelProto>: .*NoSuchOp"):
        compare(affine(), bad)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        compare(tmp_path / "none.onnx", affine())
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk\xff")
    with pytest.raises(LoadError, match="cannot read .*junk.onnx.* as an ONNX model"):
        run_model(tmp_path / "junk.onnx", {})


def test_runtime_failure_is_model_run_error():
    model = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([3], np.int64), "shape")],
    )
    with pytest.raises(ModelRunError, match="onnxruntime failed running model") as info:
        run_model(model, {"x": np.zeros(5, np.float32)})
    assert isinstance(info.value, VerificationError)


def test_model_without_inputs():
    const = numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "c")
    model = _model(
        [helper.make_node("Constant", [], ["y"], value=const)],
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    report = compare(model, model)
    assert report.ok and report.inputs == {} and report.outputs[0].max_abs_err == 0.0


def bf16_double() -> onnx.ModelProto:
    """y = bf16(2 * float(x)): onnxruntime's CPU EP has no bfloat16 Mul."""
    return _model(
        [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["xf", "xf"], ["yf"]),
            helper.make_node("Cast", ["yf"], ["y"], to=TensorProto.BFLOAT16),
        ],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])],
    )


def test_bfloat16_runs_through_ort_values():
    x = np.array([[1.0, 2.5, -3.0, 0.125]], dtype=ml_dtypes.bfloat16)
    out = run_model(bf16_double(), {"x": x})["y"]
    assert out.dtype == ml_dtypes.bfloat16
    assert out.astype(np.float32).tolist() == [[2.0, 5.0, -6.0, 0.25]]
    report = compare(bf16_double(), bf16_double(), dims={"batch": 3})
    assert report.ok and (report.outputs[0].rtol, report.outputs[0].atol) == (1e-2, 1e-2)


def test_graphopt_ir_model_is_converted():
    ir = pytest.importorskip("graphopt.ir")
    report = compare(ir.from_proto(affine()), affine())
    assert report.ok and report.outputs[0].max_abs_err == 0.0


def test_errors_are_graphopt_errors():
    assert issubclass(ModelRunError, GraphoptError)

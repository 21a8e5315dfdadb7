"""qdq for target ort rewrites Gemm with a constant weight as MatMul + Add (onnxruntime's CPU QDQ fusion takes
MatMul, not a Gemm with a float output): exact outputs, the graph output kept, the cases left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.calibrate.data import CalibrationData
from graphopt.passes.quantization.gemm import unfuse_gemms
from graphopt.passmanager import PassContext, PassManager


def _model(trans_b: int = 1, alpha: float = 1.0, bias: bool = True, k: int = 8, n: int = 6) -> onnx.ModelProto:
    """x [2, k] -> Gemm "fc" (W [n, k] transB=1 or [k, n], b [n]) -> g -> Relu -> y (g a graph output too)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Gemm", inputs, ["g"], name="fc", transB=trans_b, alpha=alpha),
             helper.make_node("Relu", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, [2, n]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def test_gemm_becomes_matmul_add_with_the_same_outputs():
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    for trans_b, bias in ((1, True), (0, True), (1, False)):
        proto = _model(trans_b, bias=bias)
        model = ir.from_proto(proto)
        assert unfuse_gemms(model.graph) == 1
        ops = [(n.op_type, n.name) for n in model.graph]
        assert ops == ([("MatMul", "fc"), ("Add", "fc_bias"), ("Relu", "")] if bias else
                       [("MatMul", "fc"), ("Relu", "")])
        out = ir.to_proto(model)
        onnx.checker.check_model(out, full_check=True)
        assert [o.name for o in out.graph.output] == ["g", "y"]
        for got, want in zip(_run(out, x), _run(proto, x)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gemm_with_alpha_or_a_small_weight_stays():
    model = ir.from_proto(_model(alpha=0.5))
    assert unfuse_gemms(model.graph) == 0 and [n.op_type for n in model.graph] == ["Gemm", "Relu"]
    model = ir.from_proto(_model())
    assert unfuse_gemms(model.graph, min_elements=49) == 0 and unfuse_gemms(model.graph, min_elements=48) == 1


def test_int8_for_ort_quantizes_the_gemm_as_matmul_integer_to_float():
    """Through qdq (target ort) the Gemm is quantized as a MatMul: MatMulIntegerToFloat with the bias inside,
    where the Gemm stayed float behind DequantizeLinear before; the outputs stay close to the original's."""
    proto = _model(k=64, n=64)
    data = CalibrationData.generated(proto, count=4)
    result = PassManager("int8", PassContext(target="ort", calibration=data)).run(ir.from_proto(proto))
    assert [n.op_type for n in result.model.graph] == ["QuantizeLinear", "MatMulIntegerToFloat", "Relu"]
    sess = ort.InferenceSession(ir.to_proto(result.model).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    got, want = sess.run(None, {"x": x}), _run(proto, x)
    for g, w in zip(got, want):
        assert np.dot(g.ravel(), w.ravel()) / np.linalg.norm(g) / np.linalg.norm(w) > 0.999

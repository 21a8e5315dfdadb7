"""The qdq pass: exact graphs per target (ort, tensorrt, onnx) on small models,
what onnxruntime fuses them into (MatMulIntegerToFloat, QLinearConv,
QAttention), the int8 pipeline on bert_tiny, "nothing changes" cases and
refusals, the metadata record, idempotence, mixed precision under a budget
(cosine, argmax, a callable metric) and the per-site SQNR against numpy."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import MODELS
from graphopt import ir
from graphopt.errors import InputError, PassError
from graphopt.calibrate.data import CalibrationData
from graphopt.passes.quantization.collect import collect_ranges
from graphopt.passes.quantization.insert import QuantConfig, activation_names
from graphopt.passes.quantization.params import params_from_range, quantize_array, quantize_weight
from graphopt.passes.quantization.placement import plan_sites
from graphopt.passes.quantization.sensitivity import layer_sqnr
from graphopt.passmanager import PassContext, PassManager
from helpers import ops

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'
MS_HEAD = '<ir_version: 10, opset_import: ["" : 17, "com.microsoft" : 1]>'


def vals(array: np.ndarray) -> str:
    """An ONNX-text tensor literal of ``array``'s values."""
    return "{" + ", ".join(repr(float(v)) for v in np.asarray(array).ravel()) + "}"


def calib(**arrays: np.ndarray | list[np.ndarray]) -> CalibrationData:
    """One batch per entry of each list (a bare array: one batch)."""
    lists = {k: v if isinstance(v, list) else [v] for k, v in arrays.items()}
    count = len(next(iter(lists.values())))
    return CalibrationData.from_arrays([{k: v[i] for k, v in lists.items()} for i in range(count)])


def run(model: ir.Model, data, spec: str = "qdq", target: str = "ort", **ctx):  # noqa: ANN001
    result = PassManager(spec, PassContext(target=target, calibration=data, **ctx)).run(model)
    return result.model, result.report.records[-1]


def record(model: ir.Model) -> dict:
    return json.loads(model.metadata_props["graphopt.quantization"])


def session(model: ir.Model, optimized: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized is not None:
        so.optimized_model_filepath = optimized
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_ops(model: ir.Model, tmp_path) -> Counter:  # noqa: ANN001
    """Op types of the graph onnxruntime runs (ORT_ENABLE_ALL, saved via optimized_model_filepath)."""
    path = str(tmp_path / "optimized.onnx")
    session(model, path)
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- MatMul, target ort -------------------------------------------------------

# column n of W holds (k + n) % 7 - 3 over k (64 % 7 == 1): every column spans [-0.75, 0.75]
W64 = ((np.arange(64 * 64).reshape(64, 64) % 7 - 3) / 4).astype(np.float32)
MATMUL = HEAD + """
g (float[2, 64] x) => (float[2, 64] y) <float[64, 64] w = %s> {
  y = MatMul(x, w)
}""" % vals(W64)
X_RANGE = np.linspace(-1.0, 3.0, 128, dtype=np.float32).reshape(2, 64)  # range [-1, 3]: scale 4/255, zero point 64

MATMUL_ORT = """opset ai.onnx=17
graph {
  input %x: float[2,64]
  init %w0: float[] = [0.015686275]
  init %w1: uint8[] = [64]
  init %w2: int8[64,64] sha256:83c44ed839116247
  init %w3: float[64] sha256:c04b11d3ab7cce77
  init %w4: int8[64] sha256:f5a5fd42d16a2030
  %0 = QuantizeLinear(%x, %w0, %w1)
  %1 = DequantizeLinear(%0, %w0, %w1)
  %2 = DequantizeLinear{axis=1}(%w2, %w3, %w4)
  %y = MatMul(%1, %2)
  output %y: float[2,64]
}
"""


def test_matmul_ort_exact_graph_and_matmul_integer_to_float(tmp_path):
    model, rec = run(ir.from_text(MATMUL), calib(x=X_RANGE))
    assert ir.to_text(model) == MATMUL_ORT
    assert rec.modified
    assert rec.stats == {"sites": 1, "weights": 1, "biases": 0, "qattention": 0, "bias into MatMulIntegerToFloat": 0, "activations": 1, "kept float": 0}
    assert "w" not in model.graph.initializers  # the float weight is gone
    dq_w = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].dtype == ir.DataType.INT8)
    # symmetric per column: scale 0.75 / 127; -0.75 .. 0.75 in steps of 0.25 -> -127, -85, -42, 0, 42, 85, 127
    expected = np.rint((np.arange(64 * 64).reshape(64, 64) % 7 - 3) * 127 / 3).astype(np.int8)
    np.testing.assert_array_equal(ir.const_array(dq_w.inputs[0]), expected)
    np.testing.assert_array_equal(ir.const_array(dq_w.inputs[1]), np.full(64, 0.75 / 127, np.float32))
    assert ir.const_array(dq_w.inputs[2]).tolist() == [0] * 64
    assert ort_ops(model, tmp_path) == Counter({"QuantizeLinear": 1, "MatMulIntegerToFloat": 1})


def test_matmul_numerics_match_numpy_simulation():
    model, _ = run(ir.from_text(MATMUL), calib(x=X_RANGE))
    x = np.random.default_rng(0).uniform(-1, 3, (2, 64)).astype(np.float32)
    xp = params_from_range(-1.0, 3.0, "uint8")
    xq = (quantize_array(x, xp).astype(np.float32) - 64) * xp.scale
    wq, wp = quantize_weight(W64, 1)
    expected = xq @ (wq.astype(np.float32) * wp.scale)
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)


# -- Conv + Relu + Conv, target ort -------------------------------------------

W1 = (((np.arange(4 * 2 * 3 * 3) % 5) - 2) / 2).astype(np.float32).reshape(4, 2, 3, 3)  # every filter spans [-1, 1]
B1 = np.array([0.5, -0.5, 1.0, 0.0], np.float32)
W2 = ((np.arange(3 * 4) % 3) - 1).astype(np.float32).reshape(3, 4, 1, 1)
B2 = np.array([0.25, 0.0, -0.25], np.float32)
CONV_CHAIN = HEAD + """
g (float[1, 2, 5, 5] x) => (float[1, 3, 5, 5] y) <float[4, 2, 3, 3] w1 = %s, float[4] b1 = %s, float[3, 4, 1, 1] w2 = %s, float[3] b2 = %s> {
  c1 = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
  r = Relu(c1)
  y = Conv(r, w2, b2)
}""" % (vals(W1), vals(B1), vals(W2), vals(B2))
X_CONV = np.linspace(-1.0, 3.0, 50, dtype=np.float32).reshape(1, 2, 5, 5)

# bias 0.5 / (4/255 * 1/127) = 4048.1; 0.25 / (s_r / 127) = 2471.8; W2 in {-1, 0, 1} -> -127, 0, 127
CONV_ORT = """opset ai.onnx=17
graph {
  input %x: float[1,2,5,5]
  init %w0: float[] = [0.015686275]
  init %w1: uint8[] = [64]
  init %w2: int8[4,2,3,3] sha256:6869958044d6a291
  init %w3: float[4] = [0.007874016, 0.007874016, 0.007874016, 0.007874016]
  init %w4: int8[4] = [0, 0, 0, 0]
  init %w5: int32[4] = [4048, -4048, 8096, 0]
  init %w6: float[4] = [0.00012351398, 0.00012351398, 0.00012351398, 0.00012351398]
  init %w7: float[] = [0.012845138]
  init %w8: uint8[] = [0]
  init %w9: int8[3,4,1,1] = [-127, 0, 127, -127, 0, 127, -127, 0, 127, -127, 0, 127]
  init %w10: float[3] = [0.007874016, 0.007874016, 0.007874016]
  init %w11: int8[3] = [0, 0, 0]
  init %w12: int32[3] = [2472, 0, -2472]
  init %w13: float[3] = [0.00010114282, 0.00010114282, 0.00010114282]
  %0 = QuantizeLinear(%x, %w0, %w1)
  %1 = DequantizeLinear(%0, %w0, %w1)
  %2 = DequantizeLinear{axis=0}(%w2, %w3, %w4)
  %3 = DequantizeLinear{axis=0}(%w5, %w6)
  %4 = Conv{pads=[1, 1, 1, 1]}(%1, %2, %3)
  %5 = Relu(%4)
  %6 = QuantizeLinear(%5, %w7, %w8)
  %7 = DequantizeLinear(%6, %w7, %w8)
  %8 = DequantizeLinear{axis=0}(%w9, %w10, %w11)
  %9 = DequantizeLinear{axis=0}(%w12, %w13)
  %y = Conv(%7, %8, %9)
  output %y: float[1,3,5,5]
}
"""


def test_conv_relu_conv_ort_exact_graph_and_qlinearconv(tmp_path):
    model, rec = run(ir.from_text(CONV_CHAIN), calib(x=X_CONV))
    assert ir.to_text(model) == CONV_ORT
    assert rec.stats == {"sites": 2, "weights": 2, "biases": 2, "qattention": 0, "bias into MatMulIntegerToFloat": 0, "activations": 2, "kept float": 0}
    assert not {"w1", "b1", "w2", "b2"} & set(model.graph.initializers)  # float weights and biases gone
    r = record(model)["activations"]["r"]
    x = record(model)["activations"]["x"]
    # bias scale = s_x * s_w: 4/255 * 1/127 for the first Conv, s_r * 1/127 for the second
    convs = [n for n in model.graph if n.op_type == "Conv"]
    bias_scales = [ir.const_array(c.inputs[2].producer().inputs[1]) for c in convs]
    np.testing.assert_array_equal(bias_scales[0], np.full(4, np.float32(x["scale"]) * np.float32(1 / 127), np.float32))
    np.testing.assert_array_equal(bias_scales[1], np.full(3, np.float32(r["scale"]) * np.float32(1 / 127), np.float32))
    # the second Conv reads the Relu output's one pair (the first Conv's output quantization)
    assert convs[1].inputs[0].producer().inputs[0].producer().inputs[0].name == "r"
    found = ort_ops(model, tmp_path)
    assert found["QLinearConv"] == 1  # the last Conv writes a graph output: it stays DQ -> Conv
    assert found["Conv"] == 1


# -- target tensorrt ----------------------------------------------------------

W3 = (((np.arange(4 * 4 * 3 * 3) % 7) - 3) / 3).astype(np.float32).reshape(4, 4, 3, 3)
RESIDUAL = HEAD + """
g (float[1, 4, 5, 5] x) => (float[1, 4, 5, 5] y) <float[4, 4, 3, 3] w = %s, float[4] b = %s> {
  s = Sigmoid(x)
  c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
  y = Add(c, s)
}""" % (vals(W3), vals(B1))

# x in [-2, 1]: scale 2/127; Sigmoid(x) in [0.119, 0.731] (widened to 0): scale 0.731/127; the bias stays float
RESIDUAL_TRT = """opset ai.onnx=17
graph {
  input %x: float[1,4,5,5]
  init %w0: float[] = [0.015748031]
  init %w1: int8[] = [0]
  init %w2: int8[4,4,3,3] sha256:24138333a264cd68
  init %w3: float[4] = [0.007874016, 0.007874016, 0.007874016, 0.007874016]
  init %w4: int8[4] = [0, 0, 0, 0]
  init %w5: float[4] = [0.5, -0.5, 1.0, 0.0]
  init %w6: float[] = [0.005756367]
  init %w7: int8[] = [0]
  %0 = QuantizeLinear(%x, %w0, %w1)
  %1 = DequantizeLinear(%0, %w0, %w1)
  %2 = DequantizeLinear{axis=0}(%w2, %w3, %w4)
  %3 = Conv{pads=[1, 1, 1, 1]}(%1, %2, %w5)
  %4 = Sigmoid(%x)
  %5 = QuantizeLinear(%4, %w6, %w7)
  %6 = DequantizeLinear(%5, %w6, %w7)
  %y = Add(%3, %6)
  output %y: float[1,4,5,5]
}
"""


def test_tensorrt_symmetric_int8_no_conv_output_residual_add_input():
    x = np.linspace(-2.0, 1.0, 100, dtype=np.float32).reshape(1, 4, 5, 5)
    model, rec = run(ir.from_text(RESIDUAL), calib(x=x), target="tensorrt")
    assert ir.to_text(model) == RESIDUAL_TRT
    assert rec.stats == {"sites": 1, "weights": 1, "biases": 0, "qattention": 0, "bias into MatMulIntegerToFloat": 0, "activations": 2, "kept float": 0}
    acts = record(model)["activations"]
    assert acts["x"] == {"dtype": "int8", "method": "minmax", "rmin": -2.0, "rmax": 1.0,
                         "scale": pytest.approx(2.0 / 127), "zero_point": 0}
    assert acts["s"]["dtype"] == "int8" and acts["s"]["zero_point"] == 0
    assert record(model)["symmetric_activations"] is True


MATMULS = HEAD + """
g (float[1, 64] v, float[4, 64] h, float[4, 16] t) => (float[1, 64] gemv, float[4, 1] col, float[4, 16] small, float[4, 64] big) <float[64, 64] w = %s, float[64, 1] w1 = %s, float[16, 16] w16 = %s> {
  gemv = MatMul(v, w)
  col = MatMul(h, w1)
  small = MatMul(t, w16)
  big = MatMul(h, w)
}""" % (vals(W64), vals(W64[:, :1]), vals(W64[:16, :16]))


def test_tensorrt_skips_gemv_and_small_gemm():
    rng = np.random.default_rng(0)
    data = calib(v=rng.standard_normal((1, 64)).astype(np.float32), h=rng.standard_normal((4, 64)).astype(np.float32),
                 t=rng.standard_normal((4, 16)).astype(np.float32))
    model, rec = run(ir.from_text(MATMULS), data, target="tensorrt")
    assert rec.stats["sites"] == 1
    assert rec.stats["skipped small GEMM or GEMV"] == 3
    quantized = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[0].producer() is not None]
    assert [n.outputs[0].name for n in quantized] == ["big"]
    zero_points = [ir.const_array(n.inputs[2]) for n in model.graph if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # target ort keeps the M=1 GEMV (onnxruntime's MatMulIntegerToFloat pays there) but not N=1 or K*N < 4096
    _, rec = run(ir.from_text(MATMULS), data, target="ort")
    assert rec.stats["sites"] == 2 and rec.stats["skipped small GEMM or GEMV"] == 2


# -- target onnx --------------------------------------------------------------


def test_onnx_target_standard_ops_only():
    model, rec = run(ir.from_text(CONV_CHAIN), calib(x=X_CONV), target="onnx")
    assert {n.domain for n in model.graph} == {""}
    assert ops(model) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv", "Relu",
                          "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv"]
    att, att_rec = run(ir.from_text(ATTENTION), calib(x=X_ATT, mask=MASK), target="onnx")
    assert not att_rec.modified
    assert att_rec.stats == {"sites": 0, "skipped contrib Attention outside target ort": 1}
    assert ops(att) == ["Attention"]


# -- com.microsoft Attention -> QAttention ------------------------------------

W_ATT = (((np.arange(8 * 24) % 9) - 4) / 8).astype(np.float32).reshape(8, 24)
B_ATT = np.linspace(-0.5, 0.5, 24, dtype=np.float32)
ATTENTION = MS_HEAD + """
g (float[1, 4, 8] x, int32[1, 4] mask) => (float[1, 4, 8] y) <float[8, 24] w = %s, float[24] b = %s> {
  y = com.microsoft.Attention<num_heads = 2>(x, w, b, mask)
}""" % (vals(W_ATT), vals(B_ATT))
X_ATT = np.linspace(-2.0, 2.0, 32, dtype=np.float32).reshape(1, 4, 8)
MASK = np.ones((1, 4), np.int32)


def test_attention_becomes_qattention_and_runs():
    before = ir.from_text(ATTENTION)
    model, rec = run(ir.from_text(ATTENTION), calib(x=X_ATT, mask=MASK))
    assert rec.stats["qattention"] == 1 and rec.stats["sites"] == 1
    qa = next(n for n in model.graph if n.op_type == "QAttention")
    assert qa.domain == "com.microsoft"
    assert {k: a.value for k, a in qa.attributes.items()} == {"num_heads": 2}
    names = [v.name if v is not None else None for v in qa.inputs]
    quantize = qa.inputs[0].producer()
    assert quantize.op_type == "QuantizeLinear" and quantize.inputs[0].name == "x"
    assert ir.const_array(qa.inputs[6]).dtype == np.uint8 and qa.inputs[6] is quantize.inputs[2]  # zp_x
    assert qa.inputs[3] is quantize.inputs[1]  # s_x
    assert qa.inputs[1].dtype == ir.DataType.INT8 and names[2] == "b" and names[5] == "mask"
    # per column of the packed QKV weight: max |w| / 127 (0.5 or 0.375)
    np.testing.assert_array_equal(ir.const_array(qa.inputs[4]), (np.abs(W_ATT).max(axis=0) / 127).astype(np.float32))
    np.testing.assert_array_equal(ir.const_array(qa.inputs[1]), quantize_weight(W_ATT, 1)[0])
    assert qa.outputs[0].name == "y" and model.graph.outputs[0] is qa.outputs[0]
    assert "Attention" not in ops(model)
    feed = {"x": X_ATT, "mask": MASK}
    assert cosine(session(model).run(None, feed)[0], session(before).run(None, feed)[0]) > 0.9999


@pytest.fixture(scope="module")
def bert():
    return ir.load(MODELS / "bert_tiny_ts.onnx"), onnx.load(MODELS / "bert_tiny_ts.onnx")


def test_bert_o2_attention_with_attention_bias_is_skipped(bert):
    model, proto = bert
    o2 = PassManager("O2", PassContext(target="ort")).run(ir.clone(model)).model
    attention = [n for n in o2.graph if n.op_type == "Attention"]
    assert len(attention) == 2 and all(n.inputs[5] is not None for n in attention)  # attention_bias (the mask)
    _, rec = run(o2, CalibrationData.generated(proto, count=1))
    assert rec.stats["qattention"] == 0
    assert rec.stats["skipped Attention with past, attention bias, packed sizes or rotary"] == 2
    assert rec.stats["sites"] == 6  # the MatMuls around it


def test_int8_pipeline_on_bert_tiny(bert):
    model, proto = bert
    data = CalibrationData.generated(proto, count=2)
    result = PassManager("int8", PassContext(target="ort", calibration=data)).run(ir.clone(model))
    counts = Counter(n.op_type for n in result.model.graph)
    # masked attention stays unfused in the int8 pipeline (masked-multi-head=false): its Q.K^T and P.V MatMuls
    # read two activations and are skipped as such
    assert counts["MultiHeadAttention"] == 0 and counts["Attention"] == 0 and counts["Softmax"] == 2
    # 8 MatMuls + the pooler Gemm, which qdq rewrites as MatMul + Add for target ort (onnxruntime does not fuse
    # a QDQ Gemm with a float output); all 9 with a bias Add become MatMulIntegerToFloat (bias inside), so no
    # DequantizeLinear, Gemm, bias Add or BiasGelu is left
    assert counts["QuantizeLinear"] == 9 and counts["DequantizeLinear"] == 0 and counts["Gemm"] == 0
    assert counts["MatMulIntegerToFloat"] == 9 and counts["MatMul"] == 4 and counts["BiasGelu"] == 0
    assert counts["Gelu"] == 2
    assert result.report.records[-1].stats == {"sites": 9, "weights": 9, "biases": 0, "qattention": 0,
                                               "bias into MatMulIntegerToFloat": 9, "activations": 9,
                                               "kept float": 0, "skipped activation weight": 4}
    for node in result.model.graph:
        if node.op_type == "Gemm":
            assert node.inputs[1].producer().op_type == "DequantizeLinear", node.name
        if node.op_type == "MatMulIntegerToFloat":
            assert node.inputs[0].producer().op_type == "QuantizeLinear" and len(node.inputs) == 7
    feed = next(iter(CalibrationData.generated(proto, count=1, seed=7)))
    want = session(model).run(None, feed)
    got = session(result.model).run(None, feed)
    assert min(cosine(a, b) for a, b in zip(want, got)) >= 0.999


# -- nothing changes ----------------------------------------------------------


def test_no_quantizable_op_is_unmodified():
    text = HEAD + """
g (float[4] x) => (float[4] y) {
  r = Relu(x)
  y = Sigmoid(r)
}"""
    model, rec = run(ir.from_text(text), calib(x=np.ones(4, np.float32)))
    assert not rec.modified and rec.stats == {"sites": 0}
    assert ops(model) == ["Relu", "Sigmoid"]
    assert "graphopt.quantization" not in model.metadata_props


def test_matmul_of_two_activations_is_skipped():
    text = HEAD + """
g (float[4, 64] a, float[64, 64] b) => (float[4, 64] y) {
  y = MatMul(a, b)
}"""
    model, rec = run(ir.from_text(text), calib(a=np.ones((4, 64), np.float32), b=np.ones((64, 64), np.float32)))
    assert not rec.modified and rec.stats == {"sites": 0, "skipped activation weight": 1}
    assert ops(model) == ["MatMul"]


def test_exclude_ops_and_nodes():
    model, rec = run(ir.from_text(CONV_CHAIN), calib(x=X_CONV), spec="qdq{exclude-ops=Conv}")
    assert not rec.modified and rec.stats == {"sites": 0, "skipped excluded": 2}
    assert ops(model) == ["Conv", "Relu", "Conv"]
    named = ir.from_text(CONV_CHAIN)
    for node, name in zip(named.graph, ("stem/conv", "stem/relu", "head/conv")):
        node.name = name
    model, rec = run(named, calib(x=X_CONV), spec="qdq{exclude-nodes=head/*}")
    assert rec.stats["sites"] == 1 and rec.stats["skipped excluded"] == 1
    assert ops(model) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv", "Relu",
                          "QuantizeLinear", "DequantizeLinear", "Conv"]
    head = next(n for n in model.graph if n.name == "head/conv")
    assert [v.name for v in head.inputs[1:]] == ["w2", "b2"]  # float weight and bias kept


def test_second_run_does_not_quantize_again():
    model, _ = run(ir.from_text(MATMUL), calib(x=X_RANGE))
    text = ir.to_text(model)
    again, rec = run(model, calib(x=X_RANGE))
    assert not rec.modified
    assert rec.stats == {"sites": 0, "skipped activation weight": 1}  # its weight is a DequantizeLinear output now
    assert ir.to_text(again) == text
    conv, _ = run(ir.from_text(CONV_CHAIN), calib(x=X_CONV))
    _, rec = run(conv, calib(x=X_CONV))
    assert rec.stats == {"sites": 0, "skipped Conv with activation weight": 2}


# -- refusals -----------------------------------------------------------------


def test_no_calibration_is_refused():
    with pytest.raises(PassError, match="the qdq pass needs calibration data: give graphopt quantize --calib PATH") as e:
        run(ir.from_text(MATMUL), None)
    assert isinstance(e.value.__cause__, InputError)


def test_opset_12_is_refused():
    text = MATMUL.replace('"" : 17', '"" : 12')
    with pytest.raises(PassError, match=r"quantization needs default-domain opset >= 13 \(the model has 12\)"):
        run(ir.from_text(text), calib(x=X_RANGE))


def test_bad_activation_type_is_refused():
    with pytest.raises(PassError, match="activation-type must be uint8 or int8, not 'int16'"):
        run(ir.from_text(MATMUL), calib(x=X_RANGE), spec="qdq{activation-type=int16}")


# -- metadata -----------------------------------------------------------------


def test_metadata_record():
    model, _ = run(ir.from_text(CONV_CHAIN), calib(x=X_CONV), spec="qdq{method=minmax}")
    rec = record(model)
    assert set(rec) == {"target", "method", "activation_type", "symmetric_activations", "weight_type", "per_channel",
                        "kept_float", "activations", "sqnr_db"}
    assert (rec["target"], rec["method"], rec["activation_type"], rec["weight_type"]) == ("ort", "minmax", "uint8", "int8")
    assert rec["per_channel"] is True and rec["symmetric_activations"] is False and rec["kept_float"] == []
    assert rec["activations"]["x"] == {"dtype": "uint8", "method": "minmax", "rmin": -1.0, "rmax": 3.0,
                                       "scale": pytest.approx(4 / 255), "zero_point": 64}
    relu = rec["activations"]["r"]
    assert relu["rmin"] == 0.0 and relu["zero_point"] == 0 and relu["scale"] == pytest.approx(relu["rmax"] / 255)
    assert sorted(rec["activations"]) == ["r", "x"]
    assert sorted(rec["sqnr_db"]) == ["c1", "y"]  # the sites' outputs
    assert all(isinstance(v, float) and 30.0 < v < 60.0 for v in rec["sqnr_db"].values())
    no_sqnr, _ = run(ir.from_text(CONV_CHAIN), calib(x=X_CONV), spec="qdq{report-sqnr=false}")
    assert record(no_sqnr)["sqnr_db"] == {}


# -- mixed precision under a budget -------------------------------------------

_rng = np.random.default_rng(0)
WA = (_rng.standard_normal((64, 64)) / 8).astype(np.float32)
WA[0] = 0.0  # the outlier column of a meets zeros: it stretches a's range without reaching the outputs
WB = (_rng.standard_normal((64, 64)) / 8).astype(np.float32)
TWO = HEAD + """
g (float[4, 64] a, float[4, 64] b) => (float[4, 64] ya, float[4, 64] yb) <float[64, 64] wa = %s, float[64, 64] wb = %s> {
  ya = MatMul(a, wa)
  yb = MatMul(b, wb)
}""" % (vals(WA), vals(WB))


def outlier_data() -> CalibrationData:
    rng = np.random.default_rng(1)
    a = [rng.standard_normal((4, 64)).astype(np.float32) for _ in range(2)]
    a[0][0, 0] = -1000.0  # a's scale ~ 4: its ordinary values quantize to a few steps
    return calib(a=a, b=[rng.standard_normal((4, 64)).astype(np.float32) for _ in range(2)])


def test_budget_cosine_keeps_the_outlier_site_float():
    model, rec = run(ir.from_text(TWO), outlier_data(), spec="qdq{budget-cosine=0.99}")
    assert record(model)["kept_float"] == ["MatMul:ya"]
    assert rec.stats["sites"] == 1 and rec.stats["kept float"] == 1
    ya = next(n for n in model.graph if n.outputs[0].name == "ya")
    assert [v.name for v in ya.inputs] == ["a", "wa"]
    assert sorted(record(model)["activations"]) == ["b"]
    # without a budget both are quantized
    _, rec = run(ir.from_text(TWO), outlier_data())
    assert rec.stats["sites"] == 2 and rec.stats["kept float"] == 0


def test_budget_argmax_from_the_context():
    model, rec = run(ir.from_text(TWO), outlier_data(), accuracy_budget={"argmax": 0.85})
    assert record(model)["kept_float"] == ["MatMul:ya"]


def test_budget_callable_metric():
    def yb_cosine(outputs, reference):  # noqa: ANN001, ANN202 - only yb counts
        return cosine(np.concatenate([o["yb"] for o in outputs]), np.concatenate([r["yb"] for r in reference]))

    model, rec = run(ir.from_text(TWO), outlier_data(), accuracy_budget={"metric": yb_cosine, "threshold": 0.999999})
    assert record(model)["kept_float"] == ["MatMul:yb"]  # ya's noise does not reach yb: it stays quantized
    assert sorted(record(model)["activations"]) == ["a"]


def test_budget_batches_sets_how_many_evaluation_batches_decide():
    sizes = []

    def counting(outputs, reference):  # noqa: ANN001, ANN202
        sizes.append(len(outputs))
        return 1.0

    data = outlier_data()
    evaluation = [b for _ in range(6) for b in data]  # 12 batches
    run(ir.from_text(TWO), data, evaluation=evaluation, accuracy_budget={"metric": counting, "threshold": 0.5})
    assert sizes and set(sizes) == {8}  # the default: the first 8
    sizes.clear()
    run(ir.from_text(TWO), data, spec="qdq{budget-batches=12}", evaluation=evaluation,
        accuracy_budget={"metric": counting, "threshold": 0.5})
    assert sizes and set(sizes) == {12}


@pytest.mark.parametrize("budget, message", [
    ({"psnr": 30.0}, r"unknown accuracy budget \['psnr'\]; give one of \{'cosine': 0.99\}"),
    ({"cosine": 0.9, "argmax": 0.9}, r"unknown accuracy budget \['argmax', 'cosine'\]"),
    ({"metric": len}, "accuracy_budget with a metric needs"),
    ({"metric": "cosine", "threshold": 0.9}, "accuracy_budget with a metric needs"),
    ({"cosine": 1.5}, r"a cosine, argmax, rank-fidelity budget must be in \(0, 1\], not 1.5"),
])
def test_bad_budget_is_refused(budget, message):
    with pytest.raises(PassError, match=message) as e:
        run(ir.from_text(TWO), outlier_data(), accuracy_budget=budget)
    assert isinstance(e.value.__cause__, InputError)


# -- per-site SQNR ------------------------------------------------------------


def test_layer_sqnr_matches_numpy():
    model = ir.from_text(MATMUL)
    xs = [np.random.default_rng(i).uniform(-1, 3, (2, 64)).astype(np.float32) for i in range(2)]
    data = calib(x=xs)
    plan = plan_sites(model, "ort")
    ranges = collect_ranges(model, activation_names(plan), data)
    got = layer_sqnr(model, plan, ranges, QuantConfig(), data)
    lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
    xp = params_from_range(lo, hi, "uint8")
    wq, wp = quantize_weight(W64, 1)
    w_dq = wq.astype(np.float64) * wp.scale.astype(np.float64)
    signal = noise = 0.0
    for x in xs:
        x_dq = (quantize_array(x, xp).astype(np.float64) - float(xp.zero_point)) * float(xp.scale)
        y = x.astype(np.float64) @ W64.astype(np.float64)
        signal += float(np.sum(y**2))
        noise += float(np.sum((y - x_dq @ w_dq) ** 2))
    assert list(got) == ["y"]
    assert got["y"] == pytest.approx(10 * np.log10(signal / noise), abs=0.01)


def test_qattention_leaves_no_dead_nodes():
    model, _ = run(ir.from_text(ATTENTION), calib(x=X_ATT, mask=MASK))
    assert ops(model) == ["QuantizeLinear", "QAttention"]

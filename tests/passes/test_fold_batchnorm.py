"""fold-batchnorm beyond the golden cases: dtypes, older opsets,
shared weights, subgraphs and function bodies, stats, and numerics on the
committed PaddleOCR models with image-sized inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphopt import ir
from graphopt.passmanager import ModelRunner, PassContext, PassManager
from graphopt.verify import compare_outputs, signature_differences

MODELS = Path(__file__).resolve().parents[2] / "models"
HEAD = '<ir_version: {ir}, opset_import: ["" : {opset}]>'
BN_STATS = """
  s = Constant<value = {t}[2] {{2.0, 0.5}}>()
  t = Constant<value = {t}[2] {{1.0, -1.0}}>()
  mean = Constant<value = {t}[2] {{0.5, -0.5}}>()
  var = Constant<value = {t}[2] {{4.0, 0.25}}>()
"""


def run(model: ir.Model, spec: str):
    return PassManager(spec, PassContext()).run(model)


def stats(result, name: str) -> dict:
    return next(r.stats for r in result.report.records if r.name == name)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


TO = {"float": 1, "float16": 10, "double": 11}


def conv_bn(dtype: str = "float", opset: int = 17, bn_attrs: str = "", ir_version: int = 10) -> ir.Model:
    """Conv then BatchNormalization; weights and statistics in ``dtype`` (via a
    Cast that fold-constants folds: the text syntax writes float16 as bits)."""
    return ir.from_text(HEAD.format(ir=ir_version, opset=opset) + f"""
g ({dtype}[1, 2, 3, 3] x) => ({dtype}[1, 2, 3, 3] y) {{
  wf = Constant<value = float[2, 2, 1, 1] {{1.0, 2.0, 3.0, 4.0}}>()
  w = Cast<to = {TO[dtype]}>(wf)
  {BN_STATS.format(t="float")}
  c = Conv(x, w)
  y = BatchNormalization{bn_attrs}(c, s, t, mean, var)
}}""")


def check_numerics(before: ir.Model, after: ir.Model, **kwargs) -> None:
    reference = ModelRunner(seed=0, **kwargs)
    expected = reference.run(before)
    report = compare_outputs(expected, ModelRunner(inputs=reference.inputs).run(after), rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()


@pytest.mark.parametrize("dtype", ["float", "float16", "double"])
def test_conv_bn_folds_in_each_float_dtype(dtype):
    model = conv_bn(dtype)
    before = ir.clone(model)
    result = run(model, "fold-constants,fold-batchnorm,dce")
    assert ops(result.model) == ["Conv"]
    conv = next(iter(result.model.graph))
    assert conv.inputs[1].dtype == conv.inputs[2].dtype == ir.DataType[{"float": "FLOAT", "float16": "FLOAT16",
                                                                         "double": "DOUBLE"}[dtype]]
    if dtype == "float":  # onnxruntime's CPU Conv is float-only; float16 rounding is beyond 1e-5 anyway
        check_numerics(before, result.model)


def test_float32_conv_fold_follows_onnxruntime_order():
    # float32 Conv+BN is folded step by step in float32, as onnxruntime's
    # ConvBNFusion does at load time, so the folded model runs bit-identically
    # to the original under onnxruntime's default optimizations.
    result = run(conv_bn(), "fold-constants,fold-batchnorm,dce")
    conv = next(iter(result.model.graph))
    w = conv.inputs[1].const_value.numpy()
    f = np.float32
    s = np.array([2.0, 0.5], f) / np.sqrt(np.array([4.0, 0.25], f) + f(1e-5))
    assert s.dtype == np.float32
    expected = np.array([[1.0, 2.0], [3.0, 4.0]], f) * s[:, None]
    assert np.array_equal(w.reshape(2, 2), expected)


def test_opset_6_needs_is_test_and_opset_7_spatial_0_stays():
    kept = run(conv_bn(opset=6, ir_version=3), "fold-constants,fold-batchnorm")
    assert "BatchNormalization" in ops(kept.model) and stats(kept, "fold-batchnorm")["kept"] == 1
    folded = run(conv_bn(opset=6, ir_version=3, bn_attrs="<is_test = 1>"), "fold-constants,fold-batchnorm,dce")
    assert ops(folded.model) == ["Conv"]
    spatial = run(conv_bn(opset=7, ir_version=3, bn_attrs="<spatial = 0>"), "fold-constants,fold-batchnorm")
    assert "BatchNormalization" in ops(spatial.model)
    assert not spatial.report.records[-1].modified


def test_shared_weight_is_not_changed_and_stats_count():
    model = ir.from_text(HEAD.format(ir=10, opset=17) + f"""
g (float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y, float[1, 2, 3, 3] z) {{
  w = Constant<value = float[2, 2, 1, 1] {{1.0, 2.0, 3.0, 4.0}}>()
  {BN_STATS.format(t="float")}
  c = Conv(x, w)
  y = BatchNormalization(c, s, t, mean, var)
  z = Conv(x, w)
}}""")
    before = ir.clone(model)
    result = run(model, "fold-batchnorm,dce")
    assert stats(result, "fold-batchnorm") == {"conv": 1, "convtranspose": 0, "gemm": 0, "matmul": 0, "kept": 0}
    first, second = [n for n in result.model.graph if n.op_type == "Conv"]
    assert first.inputs[1] is not second.inputs[1]
    assert ir.const_array(second.inputs[1]).reshape(-1).tolist() == [1.0, 2.0, 3.0, 4.0]
    check_numerics(before, result.model)


def test_large_shared_weight_is_kept():
    """A [2, 2, 5, 5] weight (100 elements > 64) read by two Convs: folding the BN into one would store a
    second, scaled copy (the growth rule), so the BN stays and is counted as kept."""
    values = ", ".join(f"{0.01 * i:.2f}" for i in range(100))
    model = ir.from_text(HEAD.format(ir=10, opset=17) + f"""
g (float[1, 2, 5, 5] x) => (float[1, 2, 1, 1] y, float[1, 2, 1, 1] z) {{
  w = Constant<value = float[2, 2, 5, 5] {{{values}}}>()
  {BN_STATS.format(t="float")}
  c = Conv(x, w)
  y = BatchNormalization(c, s, t, mean, var)
  z = Conv(x, w)
}}""")
    result = run(model, "fold-batchnorm,dce")
    assert stats(result, "fold-batchnorm") == {"conv": 0, "convtranspose": 0, "gemm": 0, "matmul": 0, "kept": 1}
    assert ops(result.model) == ["Constant", "Constant", "Constant", "Constant", "Constant", "Conv",
                                 "BatchNormalization", "Conv"]


def test_subgraph_folds_and_function_body_stays():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
g (bool c, float[1, 2, 3, 3] x) => (float[1, 2, 3, 3] y, float[1, 2, 3, 3] z) {
  y = If(c) <
    then_branch = t () => (float[1, 2, 3, 3] ty) {
      w = Constant<value = float[2, 2, 1, 1] {1.0, 2.0, 3.0, 4.0}>()
      s = Constant<value = float[2] {2.0, 0.5}>()
      b = Constant<value = float[2] {1.0, -1.0}>()
      cv = Conv(x, w)
      ty = BatchNormalization(cv, s, b, b, s)
    },
    else_branch = e () => (float[1, 2, 3, 3] ey) { ey = Relu(x) }
  >
  z = local.F(x)
}
<domain: "local", opset_import: ["" : 17]>
F (a) => (r) {
  w = Constant<value = float[2, 2, 1, 1] {1.0, 2.0, 3.0, 4.0}>()
  s = Constant<value = float[2] {2.0, 0.5}>()
  cv = Conv(a, w)
  r = BatchNormalization(cv, s, s, s, s)
}""")
    result = run(model, "fold-batchnorm")
    then = next(iter(result.model.graph)).attributes["then_branch"].value
    assert [n.op_type for n in then if n.op_type != "Constant"] == ["Conv"]
    assert "BatchNormalization" in [n.op_type for n in next(iter(result.model.functions.values()))]


@pytest.mark.parametrize(("name", "shape", "nodes"), [
    ("paddleocr_cls", [1, 3, 48, 192], 179),
    ("paddleocr_det", [1, 3, 64, 64], 325),
])
def test_paddleocr_o1_folds_every_batchnorm_within_tolerance(name, shape, nodes):
    model = ir.load(MODELS / f"{name}.onnx")
    before = ir.clone(model)
    result = run(model, "O1")
    counts = {op: ops(result.model).count(op) for op in ("BatchNormalization", "MatMul")}
    assert counts == {"BatchNormalization": 0, "MatMul": 0}
    assert len(list(result.model.graph.all_nodes())) <= nodes
    assert signature_differences(ir.to_proto(before), ir.to_proto(result.model)) == []
    rng = np.random.default_rng(0)
    image = {"x": rng.uniform(-1.0, 1.0, shape).astype(np.float32)}
    report = compare_outputs(ModelRunner(inputs=image).run(before), ModelRunner(inputs=image).run(result.model),
                             rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()

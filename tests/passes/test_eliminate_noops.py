"""Tests of ``eliminate-noops`` beyond the golden cases: the lossless-cast
table, per-family stats, older-opset attribute forms, cases that must stay,
and numerics / signature / idempotence on the committed models."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from graphopt import ir
from graphopt.passes.cleanup.noop_rules import lossless_cast
from graphopt.passmanager import ModelRunner, PassContext, PassManager
from graphopt.verify import compare_outputs, signature_differences

MODELS = Path(__file__).resolve().parents[2] / "models"
DT = ir.DataType


def run(model: ir.Model, pipeline: str = "eliminate-noops"):
    return PassManager(pipeline, PassContext()).run(model)


def stats(result, name: str = "eliminate-noops") -> dict:
    return next(r.stats for r in result.report.records if r.name == name)


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def check_numerics(before_text: str, after: ir.Model) -> None:
    reference = ModelRunner(seed=0)
    ref = reference.run(ir.from_text(before_text))
    got = ModelRunner(inputs=reference.inputs).run(after)
    report = compare_outputs(ref, got, rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()


@pytest.mark.parametrize(("src", "dst", "ok"), [
    (DT.FLOAT, DT.DOUBLE, True), (DT.FLOAT16, DT.FLOAT, True), (DT.BFLOAT16, DT.FLOAT, True),
    (DT.FLOAT, DT.FLOAT16, False), (DT.DOUBLE, DT.FLOAT, False), (DT.FLOAT16, DT.BFLOAT16, False),
    (DT.INT32, DT.INT64, True), (DT.INT64, DT.INT32, False), (DT.UINT8, DT.INT16, True),
    (DT.UINT8, DT.INT8, False), (DT.INT8, DT.UINT16, False), (DT.UINT32, DT.UINT64, True),
    (DT.BOOL, DT.INT64, True), (DT.BOOL, DT.FLOAT16, True), (DT.INT64, DT.BOOL, False),
    (DT.INT16, DT.FLOAT, True), (DT.INT32, DT.FLOAT, False), (DT.INT32, DT.DOUBLE, True),
    (DT.INT64, DT.DOUBLE, False), (DT.UINT8, DT.FLOAT16, True), (DT.INT16, DT.FLOAT16, False),
    (DT.UINT8, DT.BFLOAT16, True), (DT.UINT16, DT.BFLOAT16, False), (DT.FLOAT, DT.INT32, False),
    (DT.STRING, DT.STRING, True), (DT.STRING, DT.FLOAT, False),
])
def test_lossless_cast_table(src, dst, ok):
    assert lossless_cast(src, dst) is ok


STATS_MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[3, 2] y)
<float one = {1.0}, int64[2] s = {2, 3}>
{
  a = Relu(x)
  b = Identity(a)
  c = Cast<to = 1>(b)
  d = Reshape(c, s)
  e = Transpose<perm = [1, 0]>(d)
  f = Transpose<perm = [1, 0]>(e)
  g2 = Mul(f, one)
  h = Concat<axis = 0>(g2)
  y = Transpose<perm = [1, 0]>(h)
}
"""


def test_stats_count_each_family_and_nothing_left_to_do_reports_unmodified():
    result = run(ir.from_text(STATS_MODEL))
    counted = {k: v for k, v in stats(result).items() if v}
    assert counted == {"identity": 1, "cast": 1, "reshape": 1, "transpose": 1, "arith": 1, "concat": 1}
    assert ops(result.model) == ["Relu", "Transpose"]
    check_numerics(STATS_MODEL, result.model)
    again = run(result.model)
    assert again.report.records[-1].modified is False


def test_cast_chain_to_a_narrower_float_is_not_collapsed_but_float_to_int_is():
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x, float16[4] h) => (float16[4] y, int32[4] z) {
      x0 = Relu(x)
      d = Cast<to = 11>(x0)
      y = Cast<to = 10>(d)
      h0 = Relu(h)
      f = Cast<to = 1>(h0)
      z = Cast<to = 6>(f)
    }"""
    result = run(ir.from_text(text))
    graph = result.model.graph
    y, z = graph.outputs
    assert y.producer().inputs[0].producer().op_type == "Cast"  # float32 -> float64 -> float16 stays
    assert z.producer().inputs[0].producer().op_type == "Relu"  # float16 -> float32 -> int32 is Cast(h0, int32)
    assert stats(result)["cast"] == 1
    check_numerics(text, result.model)


def test_reshape_allowzero_keeps_a_literal_zero_target():
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[M, 4] y) <int64[2] s = {0, 4}> {
      x0 = Relu(x)
      y = Reshape<allowzero = 1>(x0, s)
    }"""
    result = run(ir.from_text(text))
    assert ops(result.model) == ["Relu", "Reshape"]
    assert result.report.records[-1].modified is False


def test_squeeze_without_axes_pairs_with_unsqueeze_on_static_shape():
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[1, 4, 1] x) => (float[1, 4, 1] y) <int64[2] ax = {0, -1}> {
      x0 = Relu(x)
      s = Squeeze(x0)
      y = Unsqueeze(s, ax)
    }"""
    result = run(ir.from_text(text))
    assert ops(result.model) == ["Relu"]
    check_numerics(text, result.model)


def test_old_opset_attribute_forms_of_slice_and_pad():
    text = """<ir_version: 7, opset_import: ["" : 9]>
    g (float[N, 4] x) => (float[N, 4] y, float[N, 4] z) {
      x0 = Relu(x)
      s = Slice<starts = [0, 0], ends = [2147483647, 4], axes = [0, 1]>(x0)
      y = Pad<pads = [0, 0, 0, 0]>(s)
      z = Slice<starts = [1], ends = [2147483647], axes = [0]>(x0)
    }"""
    result = run(ir.from_text(text))
    assert ops(result.model) == ["Relu", "Slice"]
    assert stats(result)["slice"] == 1 and stats(result)["pad"] == 1


def test_dropout_in_training_mode_stays():
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) <float r = {0.5}, bool t = {1}> {
      x0 = Relu(x)
      y = Dropout(x0, r, t)
    }"""
    result = run(ir.from_text(text))
    assert ops(result.model) == ["Relu", "Dropout"]


def test_transpose_without_perm_composes_by_rank():
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[2, 3, 4] x) => (float[2, 3, 4] y) {
      x0 = Relu(x)
      t = Transpose(x0)
      y = Transpose(t)
    }"""
    result = run(ir.from_text(text))
    assert ops(result.model) == ["Relu"]


def test_graph_output_that_cannot_be_renamed_is_counted_as_kept():
    text = """<ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { y = Identity(x) }"""
    result = run(ir.from_text(text))
    assert ops(result.model) == ["Identity"]
    assert stats(result)["kept"] == 1 and result.report.records[-1].modified is False


CORPUS = sorted(MODELS.glob("*.onnx"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_models_keep_numerics_and_signature(path: Path):
    model = ir.load(path)
    reference = ModelRunner(seed=1)
    ref = reference.run(model)
    before_proto = ir.to_proto(model)
    nodes = sum(1 for _ in model.graph.all_nodes())
    result = run(model, "eliminate-noops,dce")
    after = result.model
    assert sum(1 for _ in after.graph.all_nodes()) <= nodes
    assert result.report.rolled_back == []
    onnx.checker.check_model(ir.to_proto(after))
    assert signature_differences(before_proto, ir.to_proto(after)) == []
    report = compare_outputs(ref, ModelRunner(inputs=reference.inputs).run(after), rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()
    again = run(after, "eliminate-noops")
    assert again.report.records[-1].modified is False

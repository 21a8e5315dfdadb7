"""eliminate-reshape-pairs beyond the golden cases: a partial region (the
first Reshape also read elsewhere), a graph output at the end, and the dynamo
GPT-2 export, where the pair around each MLP's GELU goes."""

from __future__ import annotations

from pathlib import Path

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager
from helpers import check_numerics, ops

MODELS = Path(__file__).resolve().parents[2] / "models"
HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def run(model: ir.Model, spec: str = "eliminate-reshape-pairs,dce"):
    return PassManager(spec, PassContext()).run(model)


def test_first_reshape_read_elsewhere_stays_and_output_keeps_its_name():
    model = ir.from_text(HEAD + """
g (float[6, 4] x) => (float[6, 4] y, float[2, 3, 4] r) {
  s1 = Constant<value = int64[3] {2, 3, 4}>()
  r = Reshape(x, s1)
  a = Sigmoid(r)
  m = Mul(r, a)
  s2 = Constant<value = int64[2] {-1, 4}>()
  y = Reshape(m, s2)
}""")
    before = ir.clone(model)
    result = run(model)
    assert ops(result.model) == ["Reshape", "Sigmoid", "Mul"]
    assert [v.name for v in result.model.graph.outputs] == ["y", "r"]
    assert list(result.model.graph.outputs[0].shape) == [6, 4]
    assert result.report.records[-2].stats == {"pairs": 1}
    check_numerics(before, result.model)


def test_gpt2_dynamo_mlp_reshapes_go_under_o1():
    model = ir.load(MODELS / "gpt2_tiny_dynamo.onnx")
    before = ir.clone(model)
    result = run(model, "O1")
    pairs = sum(r.stats.get("pairs", 0) for r in result.report.records if r.name == "eliminate-reshape-pairs")
    assert pairs == 2  # one per layer
    # 103: the Transpose of the tied embedding table (read by the Gather too) stays since fold-constants'
    # growth rule (folding it stored a second 256 kB copy of the table: the file grew 25%).
    assert len(list(result.model.graph.all_nodes())) <= 103
    check_numerics(before, result.model)


def test_the_readers_of_the_removed_pair_keep_shapes_current():
    # Inference names the second Reshape's -1 dim unk__N; its reader reads the
    # region's output once the pair goes, of x's shape [batch, 3, 4]: unk__N
    # is renamed batch and fold-shapes does not infer again.
    model = ir.from_text(HEAD + """
g (float[batch, 3, 4] x, float[n] w) => (float[batch, 3, 4] y, int64[1] d) {
  s1 = Constant<value = int64[2] {-1, 4}>()
  r = Reshape(x, s1)
  a = Sigmoid(r)
  s2 = Constant<value = int64[3] {-1, 3, 4}>()
  b = Reshape(a, s2)
  c = Neg(b)
  y = Relu(c)
  d = Shape(w)
}""")
    result = run(model, "fold-shapes,eliminate-reshape-pairs,fold-shapes")
    assert [r.stats["inferred"] for r in result.report.records if r.name == "fold-shapes"] == [1, 0]
    assert ops(result.model) == ["Sigmoid", "Neg", "Relu", "Shape"]
    shapes = {n.op_type: str(n.outputs[0].shape) for n in result.model.graph}
    assert (shapes["Sigmoid"], shapes["Neg"]) == ("[batch,3,4]", "[batch,3,4]")

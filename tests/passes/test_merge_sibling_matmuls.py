"""merge-sibling-matmuls beyond the golden cases: O1 on the ViT model, Split
before opset 11, graph outputs, weights shared with other readers, biases
that do not qualify, float16, subgraphs, and O1's interplay with fold-bias."""

from __future__ import annotations

from pathlib import Path

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager
from helpers import check_numerics, ops, pass_stats

ROOT = Path(__file__).resolve().parents[2]
HEAD = '<ir_version: 10, opset_import: ["" : 17]>'
W42 = "{1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}"
W42B = "{-1.0, 0.5, 3.0, 2.0, 5.0, -6.0, 7.0, 1.5}"


def run(model: ir.Model, spec: str = "infer-shapes,merge-sibling-matmuls,dce"):
    return PassManager(spec, PassContext()).run(model)


def stats(result) -> dict:
    return pass_stats(result, "merge-sibling-matmuls")


def merged(text: str, spec: str = "infer-shapes,merge-sibling-matmuls,dce"):
    model = ir.from_text(text)
    before = ir.clone(model)
    result = run(model, spec)
    check_numerics(before, result.model)
    return result


def test_o1_merges_vit_qkv_below_the_peers_node_count():
    model = ir.load(ROOT / "models" / "vit_tiny_dynamo.onnx")
    before = ir.clone(model)
    result = run(model, "O1")
    merges = [r.stats for r in result.report.records if r.name == "merge-sibling-matmuls" and r.modified]
    assert merges == [{"groups": 2, "merged": 6, "biases": 6, "kept": 0}]  # Q, K, V of both layers, with their bias Adds
    assert len(list(result.model.graph)) == 76  # onnxslim 0.1.98: 82, onnxsim 0.8.1: 84
    check_numerics(before, result.model)
    assert not run(result.model, "O1").report.records[-1].modified  # idempotent


def test_opset_10_split_attribute_and_positive_axis():
    result = merged('<ir_version: 5, opset_import: ["" : 10]>' + f"""
g (float[2, 3, 4] x) => (float[2, 3, 2] y1, float[2, 3, 2] y2) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  y1 = MatMul(x, w1)
  y2 = MatMul(x, w2)
}}""")
    split = next(n for n in result.model.graph if n.op_type == "Split")
    assert split.attributes["axis"].as_int() == 2
    assert list(split.attributes["split"].as_ints()) == [2, 2]
    assert len(split.inputs) == 1


def test_opset_10_unknown_rank_is_kept():
    model = ir.from_text('<ir_version: 5, opset_import: ["" : 10]>' + f"""
g (float[2, 3, 4] x) => (float[2, 3, 2] y1, float[2, 3, 2] y2) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  y1 = MatMul(x, w1)
  y2 = MatMul(x, w2)
}}""")
    model.graph.inputs[0].shape = None
    result = run(model, "merge-sibling-matmuls")
    assert not result.report.records[-1].modified
    assert stats(result)["kept"] == 2


def test_graph_output_read_elsewhere_and_shared_weight():
    result = merged(HEAD + f"""
g (float[3, 4] x, float[3, 4] z) => (float[3, 2] y1, float[3, 2] r, float[3, 2] y3, float[3, 2] y4) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  shared = Constant<value = float[4, 2] {{0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0}}>()
  y1 = MatMul(x, w1)
  m2 = MatMul(x, w2)
  r = Relu(y1)
  y3 = Mul(m2, m2)
  t = MatMul(x, shared)
  u = MatMul(z, shared)
  y4 = Add(t, u)
}}""")
    assert stats(result) == {"groups": 1, "merged": 2, "biases": 0, "kept": 1}
    assert ops(result.model).count("MatMul") == 3  # merged + the two readers of the shared weight
    split = next(n for n in result.model.graph if n.op_type == "Split")
    assert split.outputs[0].name == "y1" and split.outputs[0].is_graph_output()


def test_biases_merge_only_when_every_branch_has_one():
    partial = merged(HEAD + f"""
g (float[2, 3, 4] x) => (float[2, 3, 2] y1, float[2, 3, 2] y2, float[2, 3, 2] y3) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  w3 = Constant<value = float[4, 2] {W42}>()
  b1 = Constant<value = float[1, 1, 2] {{1.0, 2.0}}>()
  m1 = MatMul(x, w1)
  m2 = MatMul(x, w2)
  m3 = MatMul(x, w3)
  y1 = Add(m1, b1)
  y2 = Add(m2, b1)
  y3 = Relu(m3)
}}""")
    assert stats(partial)["biases"] == 0
    assert ops(partial.model) == ["MatMul", "Split", "Add", "Add", "Relu"]
    # [1, 1, 2] per column merges; a rank-4 constant would broadcast the output and stays
    full = merged(HEAD + f"""
g (float[2, 3, 4] x) => (float[2, 3, 2] y1, float[2, 3, 2] y2) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  b1 = Constant<value = float[1, 1, 2] {{1.0, 2.0}}>()
  s = Constant<value = float {{0.5}}>()
  m1 = MatMul(x, w1)
  m2 = MatMul(x, w2)
  y1 = Add(m1, b1)
  y2 = Add(s, m2)
}}""")
    assert stats(full)["biases"] == 2
    assert ops(full.model) == ["MatMul", "Add", "Split"]
    bias = next(n for n in full.model.graph if n.op_type == "Add").inputs[1]
    assert ir.const_array(bias).tolist() == [1.0, 2.0, 0.5, 0.5]
    broadcast = merged(HEAD + f"""
g (float[3, 4] x) => (float[1, 3, 2] y1, float[1, 3, 2] y2) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  b = Constant<value = float[1, 1, 2] {{1.0, 2.0}}>()
  m1 = MatMul(x, w1)
  m2 = MatMul(x, w2)
  y1 = Add(m1, b)
  y2 = Add(m2, b)
}}""")
    assert stats(broadcast)["biases"] == 0 and ops(broadcast.model) == ["MatMul", "Split", "Add", "Add"]


def test_float16_weights_keep_their_dtype():
    result = merged(HEAD + f"""
g (float16[3, 4] x) => (float16[3, 2] y1, float16[3, 2] y2) {{
  f1 = Constant<value = float[4, 2] {W42}>()
  f2 = Constant<value = float[4, 2] {W42B}>()
  w1 = Cast<to = 10>(f1)
  w2 = Cast<to = 10>(f2)
  y1 = MatMul(x, w1)
  y2 = MatMul(x, w2)
}}""", "fold-constants,infer-shapes,merge-sibling-matmuls,dce")
    matmul = next(n for n in result.model.graph if n.op_type == "MatMul")
    assert matmul.inputs[1].dtype == ir.DataType.FLOAT16
    assert ir.const_array(matmul.inputs[1]).shape == (4, 4)


def test_subgraph_siblings_merge_inside_the_branch():
    result = merged(HEAD + f"""
g (bool c, float[3, 4] x) => (float[3, 2] y) {{
  y = If(c) <then_branch = t () => (float[3, 2] ty) {{
      w1 = Constant<value = float[4, 2] {W42}>()
      w2 = Constant<value = float[4, 2] {W42B}>()
      a = MatMul(x, w1)
      b = MatMul(x, w2)
      ty = Add(a, b)
    }}, else_branch = e () => (float[3, 2] ey) {{
      s0 = Constant<value = int64[1] {{0}}>()
      s1 = Constant<value = int64[1] {{1}}>()
      s2 = Constant<value = int64[1] {{2}}>()
      ey = Slice(x, s0, s2, s1)
    }}>
}}""")
    assert stats(result)["groups"] == 1
    then = result.model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then if n.op_type != "Constant"] == ["MatMul", "Split", "Add"]


def test_o1_folds_2d_biases_into_gemms_then_merges_them():
    result = merged(HEAD + f"""
g (float[3, 4] x) => (float[3, 2] y1, float[3, 2] y2) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  b1 = Constant<value = float[2] {{1.0, 2.0}}>()
  b2 = Constant<value = float[2] {{-1.0, 0.5}}>()
  m1 = MatMul(x, w1)
  m2 = MatMul(x, w2)
  y1 = Add(m1, b1)
  y2 = Add(m2, b2)
}}""", "O1")
    assert ops(result.model) == ["Gemm", "Split"]
    gemm = next(n for n in result.model.graph if n.op_type == "Gemm")
    assert ir.const_array(gemm.inputs[2]).tolist() == [1.0, 2.0, -1.0, 0.5]


def test_nothing_to_do_reports_unmodified():
    result = run(ir.from_text(HEAD + f"""
g (float[3, 4] x) => (float[3, 2] y) {{
  w = Constant<value = float[4, 2] {W42}>()
  y = MatMul(x, w)
}}"""), "merge-sibling-matmuls")
    assert not result.report.records[-1].modified
    assert stats(result) == {"groups": 0, "merged": 0, "biases": 0, "kept": 0}


def test_max_bytes_keeps_every_group_over_budget():
    text = HEAD + f"""
g (float[3, 4] x, float[3, 4] z) => (float[3, 2] y1, float[3, 2] y2, float[3, 2] y3, float[3, 2] y4) {{
  w1 = Constant<value = float[4, 2] {W42}>()
  w2 = Constant<value = float[4, 2] {W42B}>()
  w3 = Constant<value = float[4, 2] {W42}>()
  w4 = Constant<value = float[4, 2] {W42B}>()
  y1 = MatMul(x, w1)
  y2 = MatMul(x, w2)
  y3 = MatMul(z, w3)
  y4 = MatMul(z, w4)
}}"""
    over = run(ir.from_text(text), "merge-sibling-matmuls{max-bytes=127}")  # four 32-byte weights
    assert not over.report.records[-1].modified
    assert stats(over) == {"groups": 0, "merged": 0, "biases": 0, "kept": 4}
    within = run(ir.from_text(text), "merge-sibling-matmuls{max-bytes=128}")
    assert stats(within) == {"groups": 2, "merged": 4, "biases": 0, "kept": 0}

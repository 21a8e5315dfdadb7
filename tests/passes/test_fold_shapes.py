"""fold-shapes: static dims fold, symbolic dims stay symbolic."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager

HEAD = '<ir_version: 10, opset_import: ["" : {opset}]>'


def run(text: str, opset: int = 17, spec: str = "fold-shapes,dce") -> ir.Model:
    model = ir.from_text(HEAD.format(opset=opset) + text)
    return PassManager(spec, PassContext()).run(model).model


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


def test_static_dim_folds_symbolic_dim_stays():
    m = run("""g (float[batch, 128, 64] x) => (int64 d0, int64 d1) {
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()
      i1 = Constant<value = int64 {1}>()
      d0 = Gather(s, i0)
      d1 = Gather(s, i1)
    }""")
    assert ops(m) == ["Shape", "Constant", "Gather"]  # i0 is fold-constants' job
    d1 = m.graph.outputs[1]
    assert d1.is_initializer() and d1.const_value.numpy().tolist() == 128
    assert d1.const_value.numpy().shape == ()


def test_fully_static_shape_and_size_fold():
    m = run("""g (float[2, 3] x) => (int64[2] s, int64 n) {
      s = Shape(x)
      n = Size(x)
    }""")
    assert ops(m) == []
    assert m.graph.outputs[0].const_value.numpy().tolist() == [2, 3]
    assert m.graph.outputs[1].const_value.numpy().tolist() == 6


def test_shape_start_end_opset_15():
    m = run("""g (float[batch, 7, 5] x) => (int64[2] s) {
      s = Shape<start = 1>(x)
    }""", opset=15)
    assert m.graph.outputs[0].const_value.numpy().tolist() == [7, 5]


def test_shape_of_intermediate_value_uses_inference():
    m = run("""g (float[batch, 16] x, float[16, 8] w) => (float[batch, 4, 2] y) {
      h = MatMul(x, w)
      s = Shape(h)
      i = Constant<value = int64[1] {1}>()
      d = Gather(s, i)
      four = Constant<value = int64[1] {4}>()
      q = Div(d, four)
      m1 = Constant<value = int64[1] {-1}>()
      t = Concat<axis = 0>(m1, four, q)
      y = Reshape(h, t)
    }""")
    assert ops(m) == ["MatMul", "Reshape"]
    reshape = m.graph.node(1)
    assert ir.const_array(reshape.inputs[1]).tolist() == [-1, 4, 2]


def test_torchscript_reshape_chain_copies_symbolic_dims():
    # Shape -> Gather -> Unsqueeze -> Concat -> Reshape: batch and sequence are
    # copied (0), the constant head dims stay, nothing is frozen.
    m = run("""g (float[batch, sequence, 64] x) => (float[batch, sequence, 4, 16] y) {
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()
      i1 = Constant<value = int64 {1}>()
      b = Gather(s, i0)
      q = Gather(s, i1)
      ax = Constant<value = int64[1] {0}>()
      bu = Unsqueeze(b, ax)
      qu = Unsqueeze(q, ax)
      h = Constant<value = int64[1] {4}>()
      d = Constant<value = int64[1] {16}>()
      t = Concat<axis = 0>(bu, qu, h, d)
      y = Reshape(x, t)
    }""")
    assert ops(m) == ["Reshape"]
    assert ir.const_array(m.graph.node(0).inputs[1]).tolist() == [0, 0, 4, 16]
    assert [str(d) for d in m.graph.outputs[0].shape] == ["batch", "sequence", "4", "16"]


def test_symbolic_dims_of_inputs_stay_symbolic():
    text = """g (float[batch, sequence] x) => (int64[2] s) {
      s = Shape(x)
    }"""
    model = ir.from_text(HEAD.format(opset=17) + text)
    before = ir.to_text(model)
    result = PassManager("fold-shapes", PassContext()).run(model)
    assert ir.to_text(result.model) == before
    assert [str(d) for d in result.model.graph.inputs[0].shape] == ["batch", "sequence"]


# The exporters' guard in front of Expand: Where(Equal(shape, -1), 1, shape).
_GUARD = """g (float[batch, 1] x, float[batch, 8] z) => (float[batch, 8] y, int64 d) {
  s = Shape(z)
  m1 = Constant<value = int64[2] {-1, -1}>()
  e = Equal(s, m1)
  one = Constant<value = int64[2] {1, 1}>()
  t = Where(e, one, s)
  y = Expand(x, t)
  s2 = Shape(y)
  i1 = Constant<value = int64 {1}>()
  d = Gather(s2, i1)
}"""


def test_expand_guard_where_equal_minus_one_is_bypassed():
    m = run(_GUARD.replace(", int64 d)", ")").replace("""  s2 = Shape(y)
  i1 = Constant<value = int64 {1}>()
  d = Gather(s2, i1)
""", ""))
    assert ops(m) == ["Shape", "Expand"]


def test_stale_value_info_cannot_freeze_a_dynamic_dim():
    model = ir.from_text(HEAD.format(opset=17) + """g (float[batch, 4] x) => (int64[2] s) {
      r = Relu(x)
      s = Shape(r)
    }""")
    relu = model.graph.node(0)
    relu.outputs[0].shape = ir.Shape([2, 4])  # a traced batch size left by an exporter
    result = PassManager("fold-shapes", PassContext()).run(model)
    assert [n.op_type for n in result.model.graph] == ["Relu", "Shape"]


def test_folds_inside_subgraph_with_outer_shapes():
    m = run("""g (bool c, float[batch, 5] x) => (int64[1] y) {
      y = If(c) <
        then_branch = t () => (int64[1] ty) { s = Shape<start = 1>(x)
          ty = Identity(s) },
        else_branch = e () => (int64[1] ey) { ey = Shape<end = 1>(x) }
      >
    }""")
    if_node = next(n for n in m.graph if n.op_type == "If")
    then = if_node.attributes["then_branch"].value
    assert "Shape" not in [n.op_type for n in then]
    els = if_node.attributes["else_branch"].value
    assert [n.op_type for n in els] == ["Shape"]


def test_equal_and_where_values_are_exact():
    m = run("""g (float[3, batch] x) => (bool[2] e) {
      s = Shape(x)
      k = Constant<value = int64[2] {3, -1}>()
      e = Equal(s, k)
    }""")
    assert m.graph.outputs[0].const_value.numpy().tolist() == [True, False]
    assert m.graph.outputs[0].const_value.numpy().dtype == np.bool_


def _fold_shapes_once(text: str):  # noqa: ANN202 - (model, stats)
    result = PassManager("fold-shapes", PassContext()).run(ir.from_text(HEAD.format(opset=17) + text))
    return result.model, result.report.records[-1].stats





def test_bypassed_where_is_carried_by_the_shape_rules_in_the_same_run():
    # Only after the Where guard is gone is Expand's output known to be
    # [batch, 8]: the shape rules carry that (no second inference) and the
    # Shape below it folds in the same run of the pass.
    m, stats = _fold_shapes_once(_GUARD)
    assert stats == {"folded": 2, "reshapes": 0, "wheres": 1, "bypassed": 0, "inferred": 1, "sharpened": 1,
                     "refined": 0}
    assert m.graph.outputs[1].const_value.numpy().tolist() == 8
    assert [str(d) for d in m.graph.outputs[0].shape] == ["batch", "8"]


def test_reshape_target_that_tells_more_is_carried_in_the_same_run():
    # Inference does not see through Div of a shape value, so r is [?, 4, 16]
    # until the target is the constant [0, 4, 16]; the shape rules carry
    # [batch, 4, 16] to Relu(r), and Shape(Relu(r))[1] folds.
    m, stats = _fold_shapes_once("""g (float[batch, 64] x) => (float[batch, 4, 16] y, int64 d) {
      s = Shape(x)
      i0 = Constant<value = int64[1] {0}>()
      b = Gather(s, i0)
      one = Constant<value = int64[1] {1}>()
      q = Div(b, one)
      h = Constant<value = int64[1] {4}>()
      w = Constant<value = int64[1] {16}>()
      t = Concat<axis = 0>(q, h, w)
      r = Reshape(x, t)
      y = Relu(r)
      s2 = Shape(y)
      i1 = Constant<value = int64 {1}>()
      d = Gather(s2, i1)
    }""")
    assert stats == {"folded": 1, "reshapes": 1, "wheres": 0, "bypassed": 0, "inferred": 1, "sharpened": 1,
                     "refined": 0}
    assert m.graph.outputs[1].const_value.numpy().tolist() == 4
    reshape = next(n for n in m.graph if n.op_type == "Reshape")
    assert ir.const_array(reshape.inputs[1]).tolist() == [0, 4, 16]


def test_reshape_target_that_tells_nothing_new_is_not_inferred_again():
    # Concat of Shape slices: inference already knows the output is [batch, 4, 16].
    m, stats = _fold_shapes_once("""g (float[batch, 64] x) => (float[batch, 4, 16] y) {
      s = Shape(x)
      i0 = Constant<value = int64[1] {0}>()
      b = Gather(s, i0)
      h = Constant<value = int64[1] {4}>()
      w = Constant<value = int64[1] {16}>()
      t = Concat<axis = 0>(b, h, w)
      y = Reshape(x, t)
    }""")
    assert stats == {"folded": 0, "reshapes": 1, "wheres": 0, "bypassed": 0, "inferred": 1, "sharpened": 0,
                     "refined": 0}


def test_an_op_without_a_shape_rule_below_a_bypass_is_inferred_again():
    # As above, with a TopK (no shape rule) reading the Expand: inference
    # decides its output, in a second inference of the same run.
    m, stats = _fold_shapes_once(_GUARD.replace("float[batch, 8] y,", "float[batch, 2] w,").replace(
        "s2 = Shape(y)", "k = Constant<value = int64[1] {2}>()\n  v, i = TopK(y, k)\n  w = Relu(v)\n  s2 = Shape(v)"))
    # folded: Equal (a dim is never -1), and Shape(v)[1] once inference told TopK's output
    assert stats == {"folded": 2, "reshapes": 0, "wheres": 1, "bypassed": 0, "inferred": 2, "sharpened": 0,
                     "refined": 0}
    assert m.graph.outputs[1].const_value.numpy().tolist() == 2
    assert str(next(n for n in m.graph if n.op_type == "TopK").outputs[0].shape) == "[batch,2]"


def _fold_shapes_runs(text: str, spec: str) -> list[dict]:
    """The stats of every fold-shapes run of ``spec``."""
    result = PassManager(spec, PassContext()).run(ir.from_text(HEAD.format(opset=17) + text))
    return [r.stats for r in result.report.records if r.name == "fold-shapes"]


# Shape(x) folds to [2, 3]; inference knew that value (it carries Shape values
# through Reshape targets), so the Reshape's output is [2, 3] already. The
# Shape of w (symbolic) stays: there is something for a later run to fold.
_KNOWN = """g (float[2, 3] x, float[6] z, float[n] w) => (float[2, 3] y, int64[1] d) {
  s = Shape(x)
  y = Reshape(z, s)
  d = Shape(w)
  unused = Relu(z)
}"""


def test_shapes_stay_current_through_dce():
    first, second = _fold_shapes_runs(_KNOWN, "fold-shapes,dce,fold-shapes")
    assert (first["folded"], first["inferred"]) == (1, 1)
    assert second["inferred"] == 0  # dce removed a dead node: nothing a new inference could tell


def test_another_modifying_pass_makes_shapes_stale():
    text = _KNOWN.replace("unused = Relu(z)", "unused = Relu(z)\n  i = Identity(z)\n  y2 = Neg(i)").replace(
        "=> (float[2, 3] y, int64[1] d)", "=> (float[2, 3] y, int64[1] d, float[6] y2)")
    first, second = _fold_shapes_runs(text, "fold-shapes,eliminate-identity,fold-shapes")
    assert (first["inferred"], second["inferred"]) == (1, 1)


# Inference does not carry values through Max: the Reshape's output stays
# unknown until the folded target is a constant it reads.
_MAX_TARGET = """  s = Shape(x)
  one = Constant<value = int64[2] {1, 1}>()
  m = Max(s, one)
  r = Reshape(z, m)
  y = Relu(r)
"""


def test_a_fold_inference_could_learn_from_makes_shapes_stale():
    runs = _fold_shapes_runs("""g (float[2, 3] x, float[6] z, float[n] w) => (float[2, 3] y, int64[1] d) {
""" + _MAX_TARGET + """  d = Shape(w)
}""", "fold-shapes,dce,fold-shapes")
    assert [(r["folded"], r["inferred"]) for r in runs] == [(2, 1), (0, 1)]


def test_cse_keeps_shapes_current_unless_a_merge_meets_a_value_without_shape():
    base = """g (float[2, 3] x, float[n] w) => (float[2, 3] y, int64[1] d, float[2, 3] y2) {
      a = Constant<value = float[1] {2.0}>()
      b = Constant<value = float[1] {2.0}>()
      y = Mul(x, a)
      y2 = Mul(x, b)
      d = Shape(w)
    }"""
    spec = "fold-constants,fold-shapes,cse,fold-shapes"
    assert [r["inferred"] for r in _fold_shapes_runs(base, spec)] == [1, 0]  # equal initializers merged
    merged = base.replace("y2 = Mul(x, b)", "r1 = Relu(x)\n      r2 = Relu(x)\n      y2 = Add(r1, r2)").replace(
        "y = Mul(x, a)", "y = Mul(x, a)\n      y0 = Mul(x, b)").replace("float[2, 3] y2)", "float[2, 3] y2, float[2, 3] y0)")
    assert [r["inferred"] for r in _fold_shapes_runs(merged, spec)] == [1, 0]  # equal nodes, equal shapes
    # Outputs of an op inference does not know have no shape: a merge there may tell it more.
    unknown = merged.replace("r1 = Relu(x)\n      r2 = Relu(x)", "c = custom.Foo(x)\n      r1 = Relu(c)\n      r2 = Relu(c)")
    assert [r["inferred"] for r in _fold_shapes_runs(unknown, spec)] == [1, 1]


def test_cse_renames_the_unknown_dims_a_merge_proves_equal():
    # Inference gives each NonZero its own unknown dim (unk__0, unk__1); once
    # one NonZero is left, its reader's dims name one symbol, and the shapes
    # stay current: no new inference.
    text = """g (float[4] x, float[n] w) => (int64[1] d, float[?, ?] y) {
      z1 = NonZero(x)
      z2 = NonZero(x)
      c1 = Cast<to = 1>(z1)
      c2 = Cast<to = 1>(z2)
      e = Exp(c2)
      y = Add(c1, e)
      d = Shape(w)
    }"""
    model = ir.from_text(HEAD.format(opset=17) + text)
    result = PassManager("fold-shapes,cse,fold-shapes", PassContext()).run(model)
    assert [r.stats["inferred"] for r in result.report.records if r.name == "fold-shapes"] == [1, 0]
    assert [n.op_type for n in model.graph] == ["NonZero", "Cast", "Exp", "Add", "Shape"]
    cast, exp = model.graph.node(1), model.graph.node(2)
    assert str(cast.outputs[0].shape) == str(exp.outputs[0].shape) == "[1,unk__0]"


def test_noops_keep_shapes_current_when_readers_see_the_same_shape():
    text = """g (float[2, 3] x, float[n] w) => (float[2, 3] y, int64[1] d) {
      i = Identity(x)
      y = Relu(i)
      d = Shape(w)
    }"""
    assert [r["inferred"] for r in _fold_shapes_runs(text, "fold-shapes,eliminate-noops,fold-shapes")] == [1, 0]


def test_noops_make_shapes_stale_when_they_rewire_a_shape_value():
    # inference may carry the contents of a shape value (int64, rank 1) further than before
    text = """g (float[2, 3] x, float[n] w) => (float[2, 3] y, int64[1] d) {
      y = Relu(x)
      s = Shape(w)
      i = Identity(s)
      one = Constant<value = int64[1] {1}>()
      d = Add(i, one)
    }"""
    runs = _fold_shapes_runs(text, "fold-shapes,eliminate-noops,fold-shapes")
    assert [r["inferred"] for r in runs] == [1, 1]


# A Reshape to its input's own shape ([-1, 6] of [k, 6]): inference names
# the -1 dim of its output with a fresh symbol (unk__0) and of everything
# after it. Bypassing it proves unk__0 == k.
_RESHAPE_SAME = """g (float[k, 6] x, float[n] w) => (float[a, 6] y, int64[1] d) {
  t = Relu(x)
  c = Constant<value = int64[2] {-1, 6}>()
  r = Reshape(t, c)
  u = Relu(r)
  y = Neg(u)
  d = Shape(w)
}"""


def test_noops_write_the_dims_a_bypass_proves_equal_and_keep_shapes_current():
    model = ir.from_text(HEAD.format(opset=17) + _RESHAPE_SAME)
    result = PassManager("fold-shapes,eliminate-noops,fold-shapes", PassContext()).run(model)
    runs = [r.stats for r in result.report.records if r.name == "fold-shapes"]
    assert [r["inferred"] for r in runs] == [1, 0]
    u = next(n for n in result.model.graph if n.op_type == "Neg").inputs[0]
    assert str(u.shape) == "[k,6]"  # was [unk__0,6]: renamed, not inferred again
    assert str(result.model.graph.outputs[0].shape) == "[a,6]"  # a declared output shape is the user's



def test_noops_keep_shapes_current_when_inference_carried_the_shape_value():
    # Inference carries a shape value's contents through Cast (not through
    # Identity, see above): its readers saw Shape(w) already.
    text = """g (float[2, 3] x, float[n] w) => (float[2, 3] y, int64[1] d) {
      y = Relu(x)
      s = Shape(w)
      i = Cast<to = 7>(s)
      one = Constant<value = int64[1] {1}>()
      d = Add(i, one)
    }"""
    runs = _fold_shapes_runs(text, "fold-shapes,eliminate-noops,fold-shapes")
    assert [r["inferred"] for r in runs] == [1, 0]


_RESHAPE_TWICE = """g (float[3, 4] x{t0}, float[m] w) => (float[?, 3] y, int64[1] d) {{
  {first}
  r0 = Reshape(x, t0)
  t1 = Constant<value = int64[2] {{-1, 3}}>()
  r1 = Reshape(r0, t1)
  y = Relu(r1)
  d = Shape(w)
}}"""


@pytest.mark.parametrize(("text", "inferred"), [
    # Unsqueeze(Unsqueeze(x)) -> one Unsqueeze: the same dims, [n, 1, 1]
    ("""g (float[n] x, float[m] w) => (float[n, 1, 1] y, int64[1] d) {
      a0 = Constant<value = int64[1] {1}>()
      u = Unsqueeze(x, a0)
      a1 = Constant<value = int64[1] {2}>()
      v = Unsqueeze(u, a1)
      y = Relu(v)
      d = Shape(w)
    }""", [1, 0]),
    # Reshape(Reshape(x, [6, 2]), [-1, 3]): the output is static already
    (_RESHAPE_TWICE.format(t0="", first="t0 = Constant<value = int64[2] {6, 2}>()"), [1, 0]),
    # Reshape(Reshape(x, t0), [-1, 3]) with t0 an input: inference knew no
    # dim of the middle tensor; from the static x it solves the -1 (4)
    (_RESHAPE_TWICE.format(t0=", int64[2] t0", first=""), [1, 1]),
])
def test_noops_edits_keep_shapes_current_when_inference_would_give_the_same(text, inferred):
    runs = _fold_shapes_runs(text, "fold-shapes,eliminate-noops,fold-shapes")
    assert [r["inferred"] for r in runs] == inferred


def test_shape_guard_chain_folds_in_one_run():
    # TorchScript's Expand guard: Where(Equal(Reshape(Concat(..), [-1]) * C, -1), 1, ..)
    # where C = ConstantOfShape(Shape(..)) * -1 is computed from a folded
    # shape value: evaluated in the walk, the guard and the flat Reshape are
    # bypassed at once, and the shape rules carry the Expand's output in the same run.
    m, stats = _fold_shapes_once(_GUARD.replace("""  m1 = Constant<value = int64[2] {-1, -1}>()
  e = Equal(s, m1)""", """  k = Shape(s)
  c = ConstantOfShape<value = int64[1] {1}>(k)
  m1 = Constant<value = int64 {-1}>()
  neg = Mul(c, m1)
  flat = Constant<value = int64[1] {-1}>()
  r = Reshape(s, flat)
  e = Equal(r, neg)""").replace("t = Where(e, one, s)", "t = Where(e, one, r)"))
    # folded: Shape(s), ConstantOfShape, Mul, Equal (a dim is never -1), Gather(Shape(y), 1)
    assert stats == {"folded": 5, "reshapes": 0, "wheres": 1, "bypassed": 1, "inferred": 1, "sharpened": 1,
                     "refined": 0}
    assert m.graph.outputs[1].const_value.numpy().tolist() == 8
    assert [n.op_type for n in m.graph if n.op_type in ("ConstantOfShape", "Mul", "Reshape", "Where")] == []


_UNSHAPED = """g (float[2, 3] x, float[6] z) => (float[?, ?] y) {
""" + _MAX_TARGET + """  dead = Neg(z)
}"""


def _unshaped_runs(text: str) -> tuple[ir.Model, list[dict]]:
    """fold-shapes, then the values after the Reshape lose their shapes (as
    when a rewrite made them after the last inference), then dce and
    fold-shapes in a new context (dce changes the graph)."""
    model = ir.from_text(HEAD.format(opset=17) + text)
    first = PassManager("fold-shapes", PassContext()).run(model).report.records[-1].stats
    for node in model.graph:
        if node.op_type not in ("Shape", "Max", "Neg"):
            for value in node.outputs:
                value.shape = None
    second = PassManager("dce,fold-shapes", PassContext()).run(model).report.records[-1].stats
    return model, [first, second]


def test_values_without_shape_get_them_from_the_shape_rules():
    # No Shape left to fold: the Reshape's and the Relu's shapes come from
    # their shape rules over the folded target, not from a new inference.
    model, runs = _unshaped_runs(_UNSHAPED)
    assert [(r["folded"], r["inferred"]) for r in runs] == [(2, 1), (0, 0)]
    assert [(n.op_type, str(n.outputs[0].shape)) for n in model.graph] == [("Reshape", "[2,3]"), ("Relu", "[2,3]")]


def test_a_value_the_shape_rules_cannot_name_is_inferred():
    # TopK is not a rule of NativeDims: inference runs.
    text = _UNSHAPED.replace("y = Relu(r)", "k = Constant<value = int64[1] {2}>()\n  y, i = TopK(r, k)")
    model, runs = _unshaped_runs(text)
    assert [(r["folded"], r["inferred"]) for r in runs] == [(2, 1), (0, 1)]
    assert [str(v.shape) for n in model.graph if n.op_type == "TopK" for v in n.outputs] == ["[2,2]", "[2,2]"]


def test_a_fold_of_a_value_inference_carried_keeps_shapes_current():
    # Gather(Shape(x), 1) folds to [4]. The Expand's output is [unk, 4]
    # (batch * 16 has no name), so a new inference could in principle learn
    # from the constant; but inference carried that value through Gather
    # and Concat into the Expand's shape already: no second inference.
    text = """g (float[batch, 4, 16] x, float[1, 1] z, float[n] w) => (float[?, 4] y, int64[1] d) {
      s = Shape(x)
      i0 = Constant<value = int64[1] {0}>()
      b = Gather(s, i0)
      k = Constant<value = int64[1] {16}>()
      bk = Mul(b, k)
      i1 = Constant<value = int64[1] {1}>()
      c = Gather(s, i1)
      t = Concat<axis = 0>(bk, c)
      e = Expand(z, t)
      y = Relu(e)
      d = Shape(w)
      dead = Neg(x)
    }"""
    model = ir.from_text(HEAD.format(opset=17) + text)
    result = PassManager("fold-shapes,dce,fold-shapes", PassContext()).run(model)
    runs = [r.stats for r in result.report.records if r.name == "fold-shapes"]
    assert [(r["folded"], r["inferred"]) for r in runs] == [(1, 1), (0, 0)]
    assert str(next(n for n in model.graph if n.op_type == "Expand").outputs[0].shape) == "[unk__0,4]"
    # The same value through Max, which inference does not carry: stale.
    runs = _fold_shapes_runs(text.replace("c = Gather(s, i1)", "g = Gather(s, i1)\n      c = Max(g, i1)"),
                             "fold-shapes,dce,fold-shapes")
    assert [(r["folded"], r["inferred"]) for r in runs] == [(2, 1), (0, 1)]

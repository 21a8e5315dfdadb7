"""fold-shapes: PaddlePaddle-style shape chains (Cast int64->int32->int64,
Slice of a shape, a literal 0 in the Reshape target) and re-inference when the
graph has no Shape/Size left."""

from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager

HEAD = '<ir_version: 10, opset_import: ["" : {opset}]>'

# paddle2onnx: Concat(0, Cast(Slice(Cast(Shape(x), to=int32), [1:2]), to=int64), 3, 8, 15)
PADDLE = """g (float[batch, seq, 360] x) => (float[batch, seq, 3, 8, 15] y) {{
  s = Shape(x)
  s32 = Cast<to = 6>(s)
  {slice}
  d = Cast<to = 7>(d32)
  zero = Constant<value = int64[1] {{0}}>()
  tail = Constant<value = int64[3] {{3, 8, 15}}>()
  t = Concat<axis = 0>(zero, d, tail)
  y = Reshape(x, t)
}}"""
SLICE_10 = """st = Constant<value = int64[1] {1}>()
  en = Constant<value = int64[1] {2}>()
  ax = Constant<value = int64[1] {0}>()
  d32 = Slice(s32, st, en, ax, st)"""
SLICE_9 = "d32 = Slice<starts = [1], ends = [2], axes = [0]>(s32)"


def run(text: str, opset: int = 17, spec: str = "fold-shapes,dce") -> ir.Model:
    model = ir.from_text(HEAD.format(opset=opset) + text)
    return PassManager(spec, PassContext()).run(model).model


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


def reshape_target(model: ir.Model) -> list[int]:
    (node,) = [n for n in model.graph if n.op_type == "Reshape"]
    return node.inputs[1].const_value.numpy().tolist()


def test_paddle_cast_slice_chain_folds_with_literal_zero():
    m = run(PADDLE.format(slice=SLICE_10))
    assert ops(m) == ["Reshape"]
    assert reshape_target(m) == [0, 0, 3, 8, 15]


def test_paddle_opset9_slice_attributes():
    m = run(PADDLE.format(slice=SLICE_9), opset=9)
    assert ops(m) == ["Reshape"]
    assert reshape_target(m) == [0, 0, 3, 8, 15]


def test_literal_zero_and_unknown_entry_becomes_minus_one():
    m = run("""g (float[batch, 120, h, w] x) => (float[batch, 1, hw, 120] y) {
      s = Shape(x)
      s32 = Cast<to = 6>(s)
      st = Constant<value = int64[1] {-1}>()
      en = Constant<value = int64[1] {9223372036854775807}>()
      w32 = Slice(s32, st, en)
      w = Cast<to = 7>(w32)
      head = Constant<value = int64[2] {0, 1}>()
      c = Constant<value = int64[1] {120}>()
      t = Concat<axis = 0>(head, w, c)
      y = Reshape(x, t)
    }""")
    # w is x's dim 3 at position 2: not x's own dim there, so it becomes the one -1
    assert reshape_target(m) == [0, 1, -1, 120]


def test_literal_minus_one_leaves_no_room_for_unknown():
    m = run("""g (float[batch, 120, h, w] x) => (float[a, b, c] y) {
      s = Shape(x)
      st = Constant<value = int64[1] {3}>()
      en = Constant<value = int64[1] {4}>()
      w = Slice(s, st, en)
      head = Constant<value = int64[2] {0, -1}>()
      t = Concat<axis = 0>(head, w)
      y = Reshape(x, t)
    }""")
    assert "Shape" in ops(m)  # two entries would need -1: left alone


def test_allowzero_symbolic_entry_not_rewritten():
    m = run("""g (float[batch, 8] x) => (float[a, b] y) {
      s = Shape(x)
      st = Constant<value = int64[1] {0}>()
      en = Constant<value = int64[1] {1}>()
      d = Slice(s, st, en)
      eight = Constant<value = int64[1] {8}>()
      t = Concat<axis = 0>(d, eight)
      y = Reshape<allowzero = 1>(x, t)
    }""")
    assert "Shape" in ops(m)  # with allowzero, 0 means zero: batch cannot become 0


def test_cast_of_bool_shape_value_is_int():
    m = run("""g (float[batch, 4] x) => (int64[2] y) {
      s = Shape(x)
      m1 = Constant<value = int64[2] {-1, 4}>()
      e = Equal(s, m1)
      y = Cast<to = 7>(e)
    }""")
    y = m.graph.outputs[0]
    assert y.is_initializer() and y.const_value.numpy().tolist() == [0, 1]
    assert y.const_value.numpy().dtype == np.int64


def test_reinfers_when_no_shape_ops_and_values_lack_shapes():
    # A Reshape target made constant by someone else: no Shape/Size to fold,
    # yet the pass establishes "shapes-inferred", so y's shape gets inferred.
    model = ir.from_text(HEAD.format(opset=17) + """g (float[batch, 6] x) => (float y) {
      t = Constant<value = int64[3] {0, 2, 3}>()
      r = Reshape(x, t)
      y = Relu(r)
    }""")
    r = next(n for n in model.graph if n.op_type == "Reshape").outputs[0]
    assert r.shape is None
    result = PassManager("fold-shapes", PassContext()).run(model)
    assert str(r.shape) == "[batch,2,3]"
    assert result.report.records[-1].stats["inferred"] == 1
    # nothing changed since: no second inference
    result = PassManager("fold-shapes", PassContext()).run(model)
    assert result.report.records[-1].stats["inferred"] == 0


def test_no_inference_when_every_value_has_a_shape_and_no_shape_ops():
    model = ir.from_text(HEAD.format(opset=17) + """g (float[2, 3] x) => (float[2, 3] y) {
      y = Relu(x)
    }""")
    result = PassManager("fold-shapes", PassContext()).run(model)
    assert result.report.records[-1].stats["inferred"] == 0

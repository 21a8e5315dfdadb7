"""fold-shapes with strict symbolic dims: the dims ONNX inference leaves
unknown (``unk__N``) come from the producers' shape rules
(``passes/folding/shape_dims.py``), which never assume two broadcast dims
are equal."""

from __future__ import annotations

import numpy as np
import pytest
import onnxruntime as ort

from graphopt import ir
from graphopt.passes.folding.shape_dims import NativeDims
from graphopt.passes.folding.shape_values import Propagator
from graphopt.passmanager import PassContext, PassManager

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'

# ONNX inference gives Range's output the dim unk__0; the symbolic inference
# knows it is seq (Range(0, Shape(x)[1], 1)), so the Reshape target
# Concat(-1, Shape(r)) is [-1, seq]: its second entry is the data's own dim.
_SEQ_RANGE = """  s = Shape(x)
  i1 = Constant<value = int64 {1}>()
  n = Gather(s, i1)
  zero = Constant<value = int64 {0}>()
  one = Constant<value = int64 {1}>()
  r = Range(zero, n, one)
"""
_RANGE = HEAD + """g (float[batch, seq] x) => (float[batch, seq] y) {
""" + _SEQ_RANGE + """  rs = Shape(r)
  m1 = Constant<value = int64[1] {-1}>()
  t = Concat<axis = 0>(m1, rs)
  y = Reshape(x, t)
}"""


def _native(model: ir.Model, opset: int = 17) -> NativeDims:
    """NativeDims over a propagator that has visited every node of the graph."""
    names = {d.value for v in model.graph.inputs for d in v.shape if not isinstance(d, int)}
    prop = Propagator(opset)
    dims = NativeDims(opset, prop.read, names)
    prop.set_refine(dims)
    for node in model.graph:
        sym = prop.visit(node)
        if sym is not None:
            prop.values[node.outputs[0]] = sym
    return dims


def _dims(text: str, name: str, opset: int = 17) -> tuple:
    model = ir.from_text(text)
    ir.infer_shapes(model)
    value = next(v for n in model.graph for v in n.outputs if v.name == name)
    return _native(model, opset)(value)


def _run(text: str, spec: str) -> tuple[ir.Model, list[dict]]:
    result = PassManager(spec, PassContext()).run(ir.from_text(text))
    return result.model, [r.stats for r in result.report.records if r.name == "fold-shapes"]


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph if n.op_type != "Constant"]


def test_unknown_dim_from_the_symbolic_inference_gives_the_reshape_a_constant_target():
    model = ir.from_text(_RANGE)
    ir.infer_shapes(model)
    r = next(n for n in model.graph if n.op_type == "Range").outputs[0]
    assert str(r.shape[0]).startswith("unk__")  # what ONNX inference leaves
    assert _native(model)(r) == ("seq",)

    m, stats = _run(_RANGE, "fold-shapes,dce")
    assert _ops(m) == ["Reshape"]
    reshape = next(n for n in m.graph if n.op_type == "Reshape")
    assert ir.const_array(reshape.inputs[1]).tolist() == [-1, 0]
    assert stats[0]["refined"] == 1 and stats[0]["reshapes"] == 1
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = ort.InferenceSession(ir.to_proto(m).SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, x)


def test_symbolic_option_off_leaves_the_target():
    m, stats = _run(_RANGE, "fold-shapes{symbolic=false},dce")
    assert _ops(m) == ["Shape", "Gather", "Range", "Shape", "Concat", "Reshape"]
    assert stats[0]["refined"] == 0 and stats[0]["reshapes"] == 0


# The shape rules the TorchScript LLaMA/GPT-2 exports need: ONNX inference
# loses the dims behind Range and behind a computed Reshape/Expand target.
_RULES = HEAD + """g (float[batch, seq, 32] x, float[batch, 4, seq, 8] k) => (float[c] y) {
  s = Shape(x)
  i0 = Constant<value = int64 {0}>()
  i1 = Constant<value = int64 {1}>()
  b = Gather(s, i0)
  n = Gather(s, i1)
  zero = Constant<value = int64 {0}>()
  one = Constant<value = int64 {1}>()
  r = Range(zero, n, one)
  rs = Shape(r)
  bu = Unsqueeze(b, i0)
  m1 = Constant<value = int64[1] {-1}>()
  c8 = Constant<value = int64[1] {8}>()
  t = Concat<axis = 0>(bu, m1, rs, c8)
  x4 = Reshape(x, t)
  xt = Transpose<perm = [0, 2, 1, 3]>(x4)
  kt = Transpose<perm = [0, 1, 3, 2]>(k)
  att = MatMul(xt, kt)
  two = Constant<value = int64[1] {2}>()
  c4 = Constant<value = int64[1] {4}>()
  k5 = Unsqueeze(k, two)
  es = Concat<axis = 0>(bu, c4, two, rs, c8)
  kx = Expand(k5, es)
  kt4 = Constant<value = int64[4] {0, 8, -1, 8}>()
  kr = Reshape(kx, kt4)
  rel = Relu(r)
  cast = Cast<to = 1>(rel)
  s0 = Constant<value = int64[1] {0}>()
  s1 = Constant<value = int64[1] {1}>()
  ax = Constant<value = int64[1] {2}>()
  xs = Slice(x, s0, s1, ax)
  xq = Squeeze(xs, ax)
  w = Add(cast, xq)
  y = Shape(w)
}"""


def test_shape_rules_give_the_dims_onnx_inference_leaves_unknown():
    assert _dims(_RULES, "r") == ("seq",)
    assert _dims(_RULES, "x4") == ("batch", 4, "seq", 8)  # -1 solved: batch*seq*32 / (batch*seq*8)
    assert _dims(_RULES, "xt") == ("batch", "seq", 4, 8)
    assert _dims(_RULES, "att") == ("batch", 4, 4, "seq")  # batch dims seq vs 4: 4 (seq is 1 or 4)
    assert _dims(_RULES, "kr") == ("batch", 8, "seq", 8)
    assert _dims(_RULES, "w") == ("batch", "seq")  # [seq] + [batch, seq]: Slice(0:1) of 32 squeezed


# z = x + y broadcasts [a] with [b]. With a = 1 and b = 5 the model is valid
# and z is [5]; an inference that merged a and b (auto_merge, or the broadcast
# checks onnxruntime's engine makes without it) would call Shape(z) [a] and
# turn the target [Shape(z)[0], -1] into [0, -1], copying q's dim 1: output
# [1, 5] instead of [5, 1]. The strict inference keeps b's dim unknown.
_BROADCAST = HEAD + """g (float[a] x, float[b] y, float[a, 5] q) => (float[c, d] w) {
  z = Add(x, y)
  sz = Shape(z)
  m1 = Constant<value = int64[1] {-1}>()
  t = Concat<axis = 0>(sz, m1)
  w = Reshape(q, t)
}"""


def test_broadcast_dims_are_not_merged():
    m, stats = _run(_BROADCAST, "fold-shapes,dce")
    assert _ops(m) == ["Add", "Shape", "Concat", "Reshape"]
    assert stats[0]["reshapes"] == 0
    feeds = {"x": np.ones(1, np.float32), "y": np.ones(5, np.float32), "q": np.arange(5, dtype=np.float32)[None]}
    got = ort.InferenceSession(ir.to_proto(m).SerializeToString()).run(None, feeds)[0]
    assert got.shape == (5, 1)


def test_broadcast_keeps_a_named_dim_against_an_unknown_one_unknown():
    model = ir.from_text(_BROADCAST)
    ir.infer_shapes(model)
    z = next(n for n in model.graph if n.op_type == "Add").outputs[0]
    assert _native(model)(z) == (None,)


# Flatten and the reductions, over a Range whose length only the rules name
# (seq): ONNX inference gives each of these outputs an unknown dim there.
_FLAT_REDUCE = HEAD.replace('"" : 17', '"" : 18') + """g (float[batch, seq] x, float[batch, 4, 8] z) => (int64[?] y) {
""" + _SEQ_RANGE + """  four = Constant<value = int64[2] {4, 1}>()
  u = Unsqueeze(r, zero)
  e = Expand(u, four)
  f = Flatten<axis = 1>(e)
  f0 = Flatten<axis = 0>(e)
  ax = Constant<value = int64[1] {1}>()
  m = ReduceMax(e, ax)
  m0 = ReduceMax<keepdims = 0>(e, ax)
  mall = ReduceSum<keepdims = 0>(e)
  zs = ReduceMean<keepdims = 1>(z, ax)
  y = Shape(f)
}"""


def test_flatten_and_reduce_rules():
    assert _dims(_FLAT_REDUCE, "e", 18) == (4, "seq")
    assert _dims(_FLAT_REDUCE, "f", 18) == (4, "seq")
    assert _dims(_FLAT_REDUCE, "f0", 18) == (1, None)  # 4 * seq is no single name
    assert _dims(_FLAT_REDUCE, "m", 18) == (4, 1)
    assert _dims(_FLAT_REDUCE, "m0", 18) == (4,)
    assert _dims(_FLAT_REDUCE, "mall", 18) == ()
    assert _dims(_FLAT_REDUCE, "zs", 18) == ("batch", 1, 8)


def _window_case(op: str, attrs: str, x: str, w: str | None) -> str:
    inputs = f"float{x} x" + (f", float{w} w" if w else "")
    args = "x, w" if w else "x"
    return HEAD + f"""g ({inputs}) => (float[?, ?, ?, ?] y) {{
  y = {op}{attrs}({args})
}}"""


@pytest.mark.parametrize(("op", "attrs", "w"), [
    ("Conv", "", "[8, 3, 3, 3]"),
    ("Conv", "<pads = [1, 1, 1, 1]>", "[8, 3, 3, 3]"),
    ("Conv", "<strides = [2, 2], pads = [1, 0, 1, 0]>", "[8, 3, 3, 3]"),
    ("Conv", "<dilations = [2, 2], strides = [3, 1]>", "[8, 3, 3, 2]"),
    ("Conv", "<auto_pad = \"SAME_UPPER\", strides = [2, 2]>", "[8, 3, 3, 3]"),
    ("Conv", "<auto_pad = \"VALID\", strides = [2, 3]>", "[8, 3, 2, 2]"),
    ("Conv", "<group = 3>", "[6, 1, 1, 1]"),
    ("MaxPool", "<kernel_shape = [3, 3], strides = [2, 2]>", None),
    ("MaxPool", "<kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1>", None),
    ("AveragePool", "<kernel_shape = [2, 4], pads = [0, 1, 0, 1], strides = [2, 2]>", None),
    ("GlobalAveragePool", "", None),
])
def test_window_rules_agree_with_onnx_inference(op, attrs, w):
    # static input: the rule's dims are exactly what ONNX inference gives
    text = _window_case(op, attrs, "[2, 3, 17, 10]", w)
    model = ir.from_text(text)
    ir.infer_shapes(model)
    inferred = tuple(model.graph.node(0).outputs[0].shape)
    model.graph.node(0).outputs[0].shape = None
    assert _native(model)(model.graph.node(0).outputs[0]) == inferred


def test_window_rule_passes_a_symbolic_dim_only_where_every_position_is_kept():
    model = ir.from_text(_window_case("Conv", "", "[batch, 3, h, 10]", "[8, 3, 1, 3]"))
    assert _native(model)(model.graph.node(0).outputs[0]) == ("batch", 8, "h", 8)
    model = ir.from_text(_window_case("Conv", "<strides = [2, 1]>", "[batch, 3, h, 10]", "[8, 3, 1, 3]"))
    assert _native(model)(model.graph.node(0).outputs[0]) == ("batch", 8, None, 8)

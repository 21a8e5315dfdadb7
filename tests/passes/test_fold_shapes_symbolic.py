"""fold-shapes with the strict symbolic inference: the dims ONNX inference leaves
unknown (``unk__N``) come from onnxruntime's SymbolicShapeInference, which
never assumes two broadcast dims are equal."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from graphopt import ir
from graphopt.analysis.shapes import SymbolicShapes
from graphopt.passmanager import PassContext, PassManager

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'

# ONNX inference gives Range's output the dim unk__0; the symbolic inference
# knows it is seq (Range(0, Shape(x)[1], 1)), so the Reshape target
# Concat(-1, Shape(r)) is [-1, seq]: its second entry is the data's own dim.
_RANGE = HEAD + """g (float[batch, seq] x) => (float[batch, seq] y) {
  s = Shape(x)
  i1 = Constant<value = int64 {1}>()
  n = Gather(s, i1)
  zero = Constant<value = int64 {0}>()
  one = Constant<value = int64 {1}>()
  r = Range(zero, n, one)
  rs = Shape(r)
  m1 = Constant<value = int64[1] {-1}>()
  t = Concat<axis = 0>(m1, rs)
  y = Reshape(x, t)
}"""


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
    assert SymbolicShapes(model, strict=True).shape(r) == ("seq",)

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


def test_later_runs_reuse_the_answers_kept_on_the_values(monkeypatch):
    calls = []
    real = SymbolicShapes.__init__

    def counting(self, model, strict=False):
        calls.append(strict)
        real(self, model, strict)

    monkeypatch.setattr(SymbolicShapes, "__init__", counting)
    # Shape(b)[0] is batch in both inferences: nothing to fold, the graph stays.
    text = HEAD + """g (float[batch] x, float[batch] y) => (int64 d) {
      z = Add(x, y)
      r = Relu(z)
      zero = Constant<value = int64 {0}>()
      one = Constant<value = int64 {1}>()
      s = Shape(x)
      i0 = Constant<value = int64 {0}>()
      n = Gather(s, i0)
      q = Range(zero, n, one)
      qs = Shape(q)
      d = Gather(qs, i0)
    }"""
    _, stats = _run(text, "fold-shapes,fold-shapes")
    assert calls == [True]  # the second run reads the answer kept in the value's meta
    assert [s["refined"] for s in stats] == [1, 1]


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


def test_strict_method_is_reported():
    model = ir.from_text(_BROADCAST)
    shapes = SymbolicShapes(model, strict=True)
    z = next(n for n in model.graph if n.op_type == "Add").outputs[0]
    dims = shapes.shape(z)
    assert shapes.method.startswith("strict")
    assert dims is None or dims[0] not in ("a", "b")

"""unify_dims.DimEqualities: the dim equalities a bypassed no-op proves."""

from __future__ import annotations

import pytest

from graphopt import ir
from graphopt.passes.cleanup.unify_dims import DimEqualities

_TEXT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[k, 6] x) => (float[k, 6] y) {
  t = Relu(x)
  r = Identity(t)
  u = Relu(r)
  v = Relu(t)
  y = Neg(u)
}"""


def _values() -> tuple[ir.Model, dict[str, ir.Value]]:
    model = ir.from_text(_TEXT)
    values = {v.name: v for n in model.graph for v in n.outputs}
    values["x"] = model.graph.inputs[0]
    return model, values


def _set(values: dict[str, ir.Value], **shapes: list) -> None:
    for name, dims in shapes.items():
        values[name].shape = ir.Shape(dims)


def _shapes(values: dict[str, ir.Value], *names: str) -> list[str]:
    return [str(values[n].shape) for n in names]


def test_two_fresh_symbols_become_one_in_every_value():
    model, v = _values()
    _set(v, t=["unk__1", 6], r=["unk__2", 6], u=["unk__2", 6], v=["unk__1", 6])
    equal = DimEqualities()
    assert equal.equate(v["r"], v["t"]) is True
    assert equal.apply([model.graph]) == 2  # r and u (t and v had the kept symbol already)
    assert _shapes(v, "t", "r", "u", "v") == ["[unk__1,6]"] * 4


@pytest.mark.parametrize(("known", "expect"), [("seq", "[seq,6]"), (4, "[4,6]")])
def test_a_fresh_symbol_takes_a_name_or_an_int(known, expect):
    model, v = _values()
    _set(v, t=["unk__1", 6], r=[known, 6], u=[known, 6], v=["unk__1", 6])
    equal = DimEqualities()
    assert equal.equate(v["r"], v["t"]) is True
    equal.apply([model.graph])
    assert _shapes(v, "t", "v") == [expect, expect]  # v reads t: its dim is the same run-time size


def test_an_anonymous_input_dim_takes_the_outputs_name():
    model, v = _values()
    _set(v, t=[None, 6], r=["seq", 6])
    assert DimEqualities().equate(v["r"], v["t"]) is True
    assert _shapes(v, "t") == ["[seq,6]"]


def test_readers_that_would_see_more_are_not_neutral():
    model, v = _values()
    _set(v, t=["seq", 6], r=[None, 6])  # the input knows a dim the readers did not
    assert DimEqualities().equate(v["r"], v["t"]) is False


def test_two_different_names_are_not_renamed():
    model, v = _values()
    _set(v, t=["batch", 6], r=["seq", 6], u=["seq", 6])
    equal = DimEqualities()
    assert equal.equate(v["r"], v["t"]) is False
    assert equal.apply([model.graph]) == 0
    assert _shapes(v, "t", "r", "u") == ["[batch,6]", "[seq,6]", "[seq,6]"]


def test_declared_shapes_are_never_changed():
    model, v = _values()
    x, y = model.graph.inputs[0], model.graph.outputs[0]
    x.shape = ir.Shape([None, 6])
    _set(v, t=["unk__1", 6], r=["unk__3", 6])
    y.shape = ir.Shape(["unk__3", 6])
    equal = DimEqualities()
    assert equal.equate(v["t"], x) is False  # a graph input does not take the dim
    assert str(x.shape) == "[None,6]"
    assert equal.equate(v["r"], v["t"]) is True
    equal.apply([model.graph])
    assert str(v["r"].shape) == "[unk__1,6]"
    assert str(y.shape) == "[unk__3,6]"  # a graph output keeps its declared shape


def test_rank_mismatch_or_missing_shape_is_not_neutral():
    model, v = _values()
    _set(v, t=["unk__1", 6], r=["unk__1"])
    assert DimEqualities().equate(v["r"], v["t"]) is False
    v["r"].shape = None
    assert DimEqualities().equate(v["r"], v["t"]) is False

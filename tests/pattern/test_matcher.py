"""The pattern matcher: structure, commutativity, literals, attributes, escapes, reasons."""

from __future__ import annotations

import pytest

from graphopt import ir
from graphopt.pattern import Failure, Match, Matcher, build_pattern

OPSETS = {"": 18}


def model(body: str, inputs: str = "float[2, 4] x, float[2, 4] y", outputs: str = "float[2, 4] z",
          opset: int = 18) -> ir.Model:
    return ir.from_text(f'<ir_version: 10, opset_import: ["" : {opset}]> g ({inputs}) => ({outputs}) {{ {body} }}')


def node(m: ir.Model, output: str) -> ir.Node:
    return next(n for n in m.graph if any(o.name == output for o in n.outputs))


def mul_of_add(op, a, b, c):  # noqa: ANN001, ANN201
    return op.Mul(op.Add(a, b), c)


def test_match_binds_variables_and_lists_nodes_root_first():
    m = model("s = Add(x, y)\n z = Mul(s, x)")
    found = Matcher(build_pattern(mul_of_add), OPSETS).match(node(m, "z"))
    assert isinstance(found, Match)
    assert {k: v.name for k, v in found.values.items()} == {"a": "x", "b": "y", "c": "x"}
    assert [n.op_type for n in found.nodes] == ["Mul", "Add"]
    assert [v.name for v in found.outputs] == ["z"]


def test_commutative_inputs_match_in_either_order():
    m = model("s = Add(x, y)\n z = Mul(x, s)")  # the Add is Mul's second input here
    found = Matcher(build_pattern(mul_of_add), OPSETS).match(node(m, "z"))
    assert isinstance(found, Match)
    assert found.values["c"].name == "x"


def test_non_commutative_op_keeps_order_and_says_why():
    def sub_of_add(op, a, b, c):  # noqa: ANN001, ANN202
        return op.Sub(op.Add(a, b), c)

    m = model("s = Add(x, y)\n z = Sub(x, s)")
    found = Matcher(build_pattern(sub_of_add), OPSETS).match(node(m, "z"))
    assert isinstance(found, Failure)
    assert found.reason == "input 0 of Sub must be the output of Add, found %x (graph input)"


def test_same_variable_must_bind_the_same_value():
    def square(op, a):  # noqa: ANN001, ANN202
        return op.Mul(a, a)

    m = model("z = Mul(x, y)")
    found = Matcher(build_pattern(square), OPSETS).match(node(m, "z"))
    assert isinstance(found, Failure)
    assert "must be %x (graph input) (as 'a'), found %y (graph input)" in found.reason


def test_literal_matches_a_close_scalar_constant_and_reports_the_value_otherwise():
    def half(op, a):  # noqa: ANN001, ANN202
        return op.Mul(a, 0.5)

    good = model("c = Constant<value = float {0.5}>()\n z = Mul(x, c)")
    assert isinstance(Matcher(build_pattern(half), OPSETS).match(node(good, "z")), Match)
    bad = model("c = Constant<value = float {0.25}>()\n z = Mul(x, c)")
    found = Matcher(build_pattern(half), OPSETS).match(node(bad, "z"))
    assert isinstance(found, Failure)
    assert found.reason == "input 1 of Mul: expected the constant 0.5, found 0.25"
    wide = model("c = Constant<value = float[2, 4] {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}>()\n z = Mul(x, c)")
    found = Matcher(build_pattern(half), OPSETS).match(node(wide, "z"))
    assert found.reason == "input 1 of Mul: expected the constant 0.5, found a constant of shape [2, 4]"


def test_attribute_constraint_uses_schema_default_and_capture_binds():
    def softmax_last(op, a):  # noqa: ANN001, ANN202
        return op.Softmax(a, axis=-1)

    def softmax_any(op, a):  # noqa: ANN001, ANN202
        return op.Softmax(a, axis=op.capture("axis"))

    m = model("z = Softmax(x)")  # opset 18: the default axis is -1
    assert isinstance(Matcher(build_pattern(softmax_last), OPSETS).match(node(m, "z")), Match)
    old = model("z = Softmax(x)", opset=11)  # opset 11: the default axis is 1
    found = Matcher(build_pattern(softmax_last), {"": 11}).match(node(old, "z"))
    assert found.reason == "Softmax has axis=1, the pattern needs -1"
    assert Matcher(build_pattern(softmax_any), {"": 11}).match(node(old, "z")).attrs == {"axis": 1}


def test_axes_attribute_matches_the_axes_input_of_later_opsets():
    def mean_last(op, a):  # noqa: ANN001, ANN202
        return op.ReduceMean(a, axes=[-1])

    new = model("ax = Constant<value = int64[1] {-1}>()\n z = ReduceMean(x, ax)", outputs="float[2, 1] z")
    assert isinstance(Matcher(build_pattern(mean_last), OPSETS).match(node(new, "z")), Match)
    old = model("z = ReduceMean<axes = [-1]>(x)", outputs="float[2, 1] z", opset=17)
    assert isinstance(Matcher(build_pattern(mean_last), {"": 17}).match(node(old, "z")), Match)
    other = model("ax = Constant<value = int64[1] {0}>()\n z = ReduceMean(x, ax)", outputs="float[1, 4] z")
    found = Matcher(build_pattern(mean_last), OPSETS).match(node(other, "z"))
    assert found.reason == "ReduceMean has axes=[0], the pattern needs [-1]"


def test_inner_value_read_outside_the_match_is_refused():
    m = model("s = Add(x, y)\n z = Mul(s, x)\n w = Relu(s)", outputs="float[2, 4] z, float[2, 4] w")
    found = Matcher(build_pattern(mul_of_add), OPSETS).match(node(m, "z"))
    assert isinstance(found, Failure)
    assert found.reason == "%s (output of Add) is also read by Relu outside the match"


def test_inner_graph_output_is_refused_unless_it_is_a_pattern_output():
    m = model("s = Add(x, y)\n z = Mul(s, x)", outputs="float[2, 4] z, float[2, 4] s")
    found = Matcher(build_pattern(mul_of_add), OPSETS).match(node(m, "z"))
    assert found.reason == "%s (output of Add) is a graph output inside the match"

    def both(op, a, b, c):  # noqa: ANN001, ANN202
        s = op.Add(a, b)
        return op.Mul(s, c), s

    found = Matcher(build_pattern(both), OPSETS).match(node(m, "z"))
    assert isinstance(found, Match)
    assert [v.name for v in found.outputs] == ["z", "s"]


def test_optional_variable_matches_absent_inputs():
    def clip(op, a):  # noqa: ANN001, ANN202
        return op.Clip(a, op.opt("lo"), op.opt("hi"))

    m = model("z = Clip(x)")
    found = Matcher(build_pattern(clip), OPSETS).match(node(m, "z"))
    assert found.values == {"a": node(m, "z").inputs[0], "lo": None, "hi": None}


def test_outputs_must_be_below_the_first_output():
    def apart(op, a, b):  # noqa: ANN001, ANN202
        return op.Relu(a), op.Relu(b)

    with pytest.raises(TypeError, match="every output must be produced below the first one's node"):
        build_pattern(apart)

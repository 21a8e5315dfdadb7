"""Rules: check / rewrite, applying them, metadata, targets and opsets, explain."""

from __future__ import annotations

from typing import Any

import pytest

from graphopt import ir
from graphopt.pattern import RULE_KEY, Rule, RuleEnv, apply_rules, explain
from helpers import check_numerics


def model(body: str, outputs: str = "float[2, 4] z", opset: int = 18) -> ir.Model:
    return ir.from_text(f'<ir_version: 10, opset_import: ["" : {opset}]> g (float[2, 4] x, float[2, 4] y) => '
                        f'({outputs}) {{ {body} }}')


class AddRelu(Rule):
    """Relu(Add(a, b)) -> Max(Add(a, b), 0) written as one Relu of a Sum: a
    test rule that changes the graph without changing numbers."""

    name = "add-relu"

    def pattern(self, op, a, b):  # noqa: ANN001, ANN201
        return op.Relu(op.Add(a, b))

    def check(self, ctx, a, b, **_):  # noqa: ANN001, ANN003, ANN201
        return ctx.require(not ir.is_constant(a), "the left operand is constant", at=a)

    def rewrite(self, op, a, b, **_):  # noqa: ANN001, ANN003, ANN201
        return op.Relu(op.Sum(a, b))


def test_rewrite_replaces_the_match_and_tags_new_nodes():
    m = model("s = Add(x, y)\n z = Relu(s)")
    before = ir.clone(m)
    fired = apply_rules(RuleEnv(m, "ort"), [AddRelu()])
    assert fired == {"add-relu": 1}
    assert [n.op_type for n in m.graph] == ["Sum", "Relu"]
    assert all(n.metadata_props[RULE_KEY] == "add-relu" for n in m.graph)
    assert [v.name for v in m.graph.outputs] == ["z"]  # the graph output keeps its name
    check_numerics(before, m)


def test_check_runs_on_every_commutative_order():
    # Add(c, x): the order (a=c, b=x) fails the check; (a=x, b=c) passes.
    m = model("c = Constant<value = float[2, 4] {1, 2, 3, 4, 5, 6, 7, 8}>()\n s = Add(c, x)\n z = Relu(s)")
    assert apply_rules(RuleEnv(m, "ort"), [AddRelu()]) == {"add-relu": 1}


def test_refused_check_is_the_explained_reason():
    m = model("c = Constant<value = float[2, 4] {1, 2, 3, 4, 5, 6, 7, 8}>()\n"
              "d = Constant<value = float[2, 4] {1, 2, 3, 4, 5, 6, 7, 8}>()\n s = Add(c, d)\n z = Relu(s)")
    result = explain(RuleEnv(m, "ort"), AddRelu())
    assert [(s.node.op_type, s.fires, s.reason) for s in result.sites] == [
        ("Relu", False, "the left operand is constant")]
    assert apply_rules(RuleEnv(m, "ort"), [AddRelu()]) == {}


class OrtOnly(AddRelu):
    name = "add-relu-ort"
    targets = frozenset({"ort"})
    opsets = (13, 17)


def test_target_and_opset_ranges_are_reported_and_respected():
    m = model("s = Add(x, y)\n z = Relu(s)")
    assert explain(RuleEnv(m, "onnx"), OrtOnly()).inapplicable == (
        "rule 'add-relu-ort' does not apply to target onnx (targets: ort)")
    assert explain(RuleEnv(m, "ort"), OrtOnly()).inapplicable == (
        "rule 'add-relu-ort' applies to opsets 13..17; the model has opset 18")
    assert apply_rules(RuleEnv(m, "ort"), [OrtOnly()]) == {}
    assert apply_rules(RuleEnv(model("s = Add(x, y)\n z = Relu(s)", opset=17), "ort"), [OrtOnly()]) == {
        "add-relu-ort": 1}


class SumAndRelu(Rule):
    """A two-output pattern: Relu(s) and s itself; s is produced again only
    when something outside reads it."""

    name = "sum-and-relu"

    def pattern(self, op, a, b):  # noqa: ANN001, ANN201
        s = op.Add(a, b)
        return op.Relu(s), s

    def rewrite(self, op: Any, a, b, **_):  # noqa: ANN001, ANN003, ANN201
        s = op.Sum(a, b)
        return op.Relu(s), (s if op.used_outside(1) else None)


@pytest.mark.parametrize("extra, expected", [
    ("", ["Sum", "Relu"]),
    ("\n w = Neg(s)", ["Sum", "Relu", "Neg"]),
])
def test_secondary_output_is_rewired_only_when_read(extra, expected):
    outputs = "float[2, 4] z" + (", float[2, 4] w" if extra else "")
    m = model("s = Add(x, y)\n z = Relu(s)" + extra, outputs=outputs)
    before = ir.clone(m)
    assert apply_rules(RuleEnv(m, "ort"), [SumAndRelu()]) == {"sum-and-relu": 1}
    assert [n.op_type for n in m.graph] == expected
    check_numerics(before, m)


def test_rewrite_returning_too_few_values_is_an_error():
    class Broken(SumAndRelu):
        name = "broken"

        def rewrite(self, op, a, b, **_):  # noqa: ANN001, ANN003, ANN201
            return op.Relu(op.Sum(a, b))

    m = model("s = Add(x, y)\n z = Relu(s)")
    with pytest.raises(ValueError, match="returned 1 values for 2 outputs"):
        apply_rules(RuleEnv(m, "ort"), [Broken()])


def test_new_domains_are_imported():
    class ToGelu(Rule):
        name = "to-gelu"

        def pattern(self, op, a):  # noqa: ANN001, ANN201
            return op.Relu(a)

        def rewrite(self, op, a, **_):  # noqa: ANN001, ANN003, ANN201
            return op.Gelu(a, _domain="com.microsoft")

    m = model("z = Relu(x)")
    apply_rules(RuleEnv(m, "ort"), [ToGelu()])
    assert m.opset_imports["com.microsoft"] == 1

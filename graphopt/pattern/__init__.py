"""graphopt's pattern engine: rewrite rules declared as ``pattern`` / ``check`` /
``rewrite``, matched from the pattern's output backward.

Example (a rule; see :mod:`graphopt.pattern.rule` for the contract)::

    class ConvRelu(Rule):
        name = "conv-relu"
        targets = frozenset({"ort"})

        def pattern(self, op, x, w):
            return op.Relu(op.Conv(x, w, _label="conv"))

        def check(self, ctx, w, **_):
            return ctx.require(ctx.const(w) is not None, "the weight is not constant", at=w)

        def rewrite(self, op, x, w, conv, **_):
            return op.FusedConv(x, w, activation="Relu", _domain="com.microsoft")

    fired = apply_rules(RuleEnv(model, target="ort"), [ConvRelu()])
"""

from graphopt.pattern.explain import Explanation, Site, all_rules, explain, find_rule
from graphopt.pattern.matcher import Failure, Match, Matcher, attribute_value, describe_node, describe_value
from graphopt.pattern.pattern import Capture, Literal, Out, Pattern, PatternBuilder, PNode, Var, build_pattern
from graphopt.pattern.rule import (
    ALL_TARGETS, RULE_KEY, CheckContext, CheckResult, RewriteBuilder, Rule, RuleEnv, apply_rules, default_opset,
)

__all__ = [
    "Explanation", "Site", "all_rules", "explain", "find_rule",
    "Failure", "Match", "Matcher", "attribute_value", "describe_node", "describe_value",
    "Capture", "Literal", "Out", "Pattern", "PatternBuilder", "PNode", "Var", "build_pattern",
    "ALL_TARGETS", "RULE_KEY", "CheckContext", "CheckResult", "RewriteBuilder", "Rule", "RuleEnv", "apply_rules",
    "default_opset",
]

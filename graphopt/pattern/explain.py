"""Why a rule did (not) fire: every candidate site with its verdict.

A candidate site is a node whose operator is the root of one of the rule's
patterns. For each, :func:`explain` reports either that the rule matches
there (and would rewrite it) or the reason it does not: the structural
mismatch that got furthest, an inner value that escapes, the ``check`` that
refused it, or that the node is inside a larger match found first (sites are
visited in :func:`~graphopt.pattern.apply_rules`' order). Nothing is
rewritten. Used by ``graphopt explain RULE IN``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from graphopt import ir
from graphopt.errors import InputError
from graphopt.pattern.matcher import describe_node, describe_value
from graphopt.pattern.rule import Rule, RuleEnv, default_opset

__all__ = ["Site", "Explanation", "explain", "all_rules", "find_rule"]


@dataclass
class Site:
    """One candidate site.

    Attributes:
        node: the candidate root node.
        fires: True when the rule matches and passes its check here.
        reason: why not (empty when it fires).
        at: the node or value the reason is about (None when it fires).
    """

    node: ir.Node
    fires: bool
    reason: str = ""
    at: Any = None

    def where(self) -> str:
        """The reason's subject as text (a node or a value)."""
        if self.at is None:
            return ""
        if isinstance(self.at, ir.Node):
            return describe_node(self.at)
        return describe_value(self.at)


@dataclass
class Explanation:
    """The verdicts of one rule on one model.

    Attributes:
        rule: the rule's name.
        pass_name: the pass that runs it.
        target: the target explained for.
        inapplicable: why the rule does not run at all (target or opset), or "".
        sites: every candidate site, in graph order.
    """

    rule: str
    pass_name: str
    target: str
    inapplicable: str
    sites: list[Site]

    @property
    def fired(self) -> int:
        return sum(s.fires for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "pass": self.pass_name, "target": self.target,
                "inapplicable": self.inapplicable or None, "fires": self.fired,
                "sites": [{"node": s.node.name, "op": s.node.op_type, "fires": s.fires,
                           "reason": s.reason or None, "at": s.where() or None} for s in self.sites]}


def all_rules() -> dict[str, tuple[str, Rule]]:
    """Rule name -> (pass name, rule) for every registered pass with ``rules``."""
    from graphopt.passmanager import registered_passes

    found: dict[str, tuple[str, Rule]] = {}
    for pass_name, cls in registered_passes().items():
        for rule in getattr(cls, "rules", ()):
            found[rule.name] = (pass_name, rule)
    return found


def find_rule(name: str) -> tuple[str, Rule]:
    """The (pass name, rule) registered as ``name``.

    Raises:
        InputError: unknown rule; the message lists the closest and all rules.
    """
    rules = all_rules()
    if name not in rules:
        close = difflib.get_close_matches(name, rules, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"unknown rule '{name}'.{hint} Rules: {', '.join(sorted(rules))} (see `graphopt passes`)")
    return rules[name]


def explain(env: RuleEnv, rule: Rule, pass_name: str = "") -> Explanation:
    """The verdict of ``rule`` at every candidate site of ``env.model`` (main
    graph and subgraphs) for ``env.target``. The model is not changed."""
    model, target = env.model, env.target
    inapplicable = rule.applicable(target, default_opset(model)) or ""
    roots = {p.root.op_type for p in rule.patterns()}
    sites: list[Site] = []
    for graph in ir.all_graphs(model):
        claimed: dict[int, ir.Node] = {}  # node -> root of the match that takes it, as apply_rules would
        found: list[Site] = []
        for node in reversed(list(graph)):  # apply_rules' order: consumers first
            if node.op_type not in roots:
                continue
            if id(node) in claimed:
                root = claimed[id(node)]
                found.append(Site(node, False, f"inside the match rooted at {describe_node(root)}", root))
                continue
            match, why = rule.try_match(node, env)
            if match is not None:
                found.append(Site(node, not inapplicable, inapplicable))
                claimed.update((id(n), node) for n in match.nodes)
            else:
                found.append(Site(node, False, why.reason, why.at))
        sites.extend(reversed(found))
    return Explanation(rule.name, pass_name, target, inapplicable, sites)

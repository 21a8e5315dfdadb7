"""Rewrite rules: ``pattern`` / ``check`` / ``rewrite``, and applying them.

A :class:`Rule` subclass declares

- one or more pattern methods (``variants``, default ``("pattern",)``) that
  build the subgraph to find with a :class:`~graphopt.pattern.pattern.PatternBuilder`;
- ``check(ctx, **bindings)``: the constraints a structural match must also
  meet, returning ``ctx.ok()`` or a reason (``ctx.require(cond, reason, at=v)``);
- ``rewrite(op, **bindings)``: builds the replacement with a
  :class:`RewriteBuilder` and returns one value per pattern output;
- ``opsets`` (the default-domain opset range it applies to), ``targets``,
  ``labels`` and ``benefit`` (larger rules are tried first at a node).

:func:`apply_rules` runs a rule list over every graph of a model: for each
node, last to first (so a pattern rooted at a consumer is tried before a
smaller one rooted inside it), the rules whose pattern is rooted at that
node's operator are tried by benefit; the first match that passes ``check`` is rewritten, the
pattern's outputs are replaced by the rewrite's values, and the matched nodes
that nothing reads any more are removed. New nodes carry the rule's name in
``metadata_props["graphopt.rule"]``. Prior art: onnxscript's rewriter and
MLIR's PDLL (pattern / constraint / rewrite, benefit).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from graphopt import ir
from graphopt.pattern.matcher import Failure, Match, Matcher
from graphopt.pattern.pattern import Pattern, build_pattern

__all__ = ["Rule", "RuleEnv", "CheckResult", "CheckContext", "RewriteBuilder", "apply_rules", "RULE_KEY",
           "ALL_TARGETS", "default_opset"]

_LOG = logging.getLogger(__name__)

RULE_KEY = "graphopt.rule"
"""``metadata_props`` key naming the rule that created a node."""

ALL_TARGETS = frozenset({"onnx", "ort", "tensorrt"})


def default_opset(model: ir.Model) -> int:
    """The model's default-domain (``ai.onnx``) opset version."""
    imports = model.opset_imports
    return int(imports.get("", imports.get("ai.onnx", 1)))


@dataclass
class RuleEnv:
    """Where rules run: the model, the target, the running pass's options, the
    shape analysis and the pass context.

    Attributes:
        model: the IR model being rewritten.
        target: ``onnx``, ``ort`` or ``tensorrt``.
        options: the running pass's options dataclass (None outside a pass).
        shapes: a :class:`~graphopt.analysis.shapes.SymbolicShapes` (created
            on first use when None).
        pass_ctx: the :class:`~graphopt.passmanager.PassContext`, or None.
        serial: numbers the nodes rewrites create (``<root>/<rule>_<n>``),
            counted per environment, i.e. per pass run, so the names a
            pipeline gives a model do not depend on what ran before in the
            same process.
    """

    model: ir.Model
    target: str = "ort"
    options: Any = None
    shapes: Any = None
    pass_ctx: Any = None
    serial: Any = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.shapes is None:
            from graphopt.analysis.shapes import symbolic_shapes

            self.shapes = symbolic_shapes(self.model, self.pass_ctx)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a rule's ``check``: truthy when the rewrite may proceed."""

    ok: bool
    reason: str = ""
    at: Any = None

    def __bool__(self) -> bool:
        return self.ok


_OK = CheckResult(True)


class CheckContext:
    """What a rule's ``check`` can read: the match, the model, the target and
    helpers for constants and shapes.

    Attributes:
        match: the structural :class:`~graphopt.pattern.matcher.Match`.
        env: the :class:`RuleEnv`.
        model / graph: the model and the graph the match is in.
        target: ``onnx``, ``ort`` or ``tensorrt``.
        opset: the model's default-domain opset.
        options: the running pass's options (or None).
    """

    def __init__(self, match: Match, env: RuleEnv) -> None:
        self.match = match
        self.env = env
        self.model = env.model
        self.graph = match.root.graph
        self.target = env.target
        self.opset = default_opset(env.model)
        self.options = env.options

    @staticmethod
    def ok() -> CheckResult:
        """The match may be rewritten."""
        return _OK

    @staticmethod
    def fail(reason: str, at: Any = None) -> CheckResult:
        """The match is refused for ``reason`` (about node or value ``at``)."""
        return CheckResult(False, reason, at)

    def require(self, condition: Any, reason: str, at: Any = None) -> CheckResult:
        """``ok()`` when ``condition`` holds, else ``fail(reason, at)``; chain with ``and``."""
        return _OK if condition else CheckResult(False, reason, at)

    @staticmethod
    def const(value: ir.Value | None, max_elements: int | None = None) -> np.ndarray | None:
        """The array of a constant value (None when not constant or larger than ``max_elements``)."""
        return ir.const_array(value, max_elements=max_elements)

    @staticmethod
    def scalar(value: ir.Value | None) -> float | None:
        """The number of a one-element numeric constant, else None."""
        array = ir.const_array(value, max_elements=1)
        if array is None or array.size != 1 or array.dtype.kind not in "fiub":
            return None
        return float(array.reshape(()))

    def shape(self, value: ir.Value | None) -> list[int | str | None] | None:
        """The value's symbolic shape (:mod:`graphopt.analysis.shapes`): ints
        for static dims, strings for symbolic dims and expressions, None for
        unknown dims; None when even the rank is unknown."""
        dims = self.env.shapes.shape(value)
        return None if dims is None else list(dims)

    def dim(self, value: ir.Value | None, axis: int) -> int | None:
        """The static size of ``value``'s dim ``axis`` (negative counts from
        the end), from the IR's shape when it has it (cheap), else from the
        symbolic shapes; None when not static."""
        for source in (_ir_static, self.shape):
            dims = source(value)
            if dims is not None and -len(dims) <= axis < len(dims) and isinstance(dims[axis], int):
                return dims[axis]
        return None

    def rank(self, value: ir.Value | None) -> int | None:
        """The value's rank, or None when unknown."""
        shape = self.shape(value)
        return None if shape is None else len(shape)


_INT64_OUT = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})
_BOOL_OUT = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                       "IsNaN", "IsInf"})


def _output_dtype(op_type: str, inputs: list, attrs: dict) -> ir.DataType | None:
    """The element type of output 0 of a node a rewrite creates, for the ops
    whose type follows from their inputs (the data input's type for
    elementwise, shape, normalization and attention ops; ``to`` for Cast), so
    later checks in the same pass see it; None when unsure."""
    if op_type == "Cast":
        return ir.DataType(attrs["to"]) if "to" in attrs else None
    if op_type in _INT64_OUT:
        return ir.DataType.INT64
    if op_type in _BOOL_OUT:
        return ir.DataType.BOOL
    data = inputs[1] if op_type == "Where" and len(inputs) > 1 else inputs[0] if inputs else None
    return data.dtype if data is not None else None


def _ir_static(value: ir.Value | None) -> list[int | None] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


class RewriteBuilder:
    """The ``op`` object a rule's ``rewrite`` receives: ``op.Gemm(a, b, c, transB=1)``
    inserts a node before the match's root and returns its output value(s).

    Keyword arguments: attributes (None values are left out), ``_domain``,
    ``_outputs`` (a count, or a list of output names to keep empty ``""`` for
    absent optional outputs) and ``_name``. ``op.initializer(array, name)``
    adds an initializer.

    Attributes:
        match: the match being rewritten.
        env: the :class:`RuleEnv` (model, target, options, shapes).
        target / opset: the target and the model's default-domain opset.
        nodes: the nodes created so far.
    """

    def __init__(self, match: Match, rule_name: str, env: "RuleEnv") -> None:
        self.match = match
        self.env = env
        self.target = env.target
        self.opset = default_opset(env.model)
        self.graph = match.root.graph
        self.rule_name = rule_name
        self.nodes: list[ir.Node] = []

    def used_outside(self, index: int) -> bool:
        """Whether pattern output ``index`` is read outside the match (or is a
        graph output): a rewrite may then have to produce it."""
        return self.match.used_outside(index)

    def initializer(self, array: np.ndarray, name: str) -> ir.Value:
        """A new initializer in the match's graph (name made unique)."""
        return ir.add_initializer(self.graph, np.ascontiguousarray(array), name)

    def __getattr__(self, op_type: str) -> Any:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: ir.Value | None, _domain: str = "", _outputs: int = 1, _name: str | None = None,
                 **attrs: Any) -> Any:
            attributes = ir.convenience.convert_attributes({k: v for k, v in attrs.items() if v is not None})
            base = self.match.root.name or op_type
            node = ir.Node(_domain, op_type, list(inputs), attributes, num_outputs=_outputs,
                           name=_name or f"{base}/{self.rule_name}_{next(self.env.serial)}",
                           metadata_props={RULE_KEY: self.rule_name})
            dtype = _output_dtype(op_type, list(inputs), attrs)
            if dtype is not None:
                node.outputs[0].dtype = dtype
            self.graph.insert_before(self.match.root, node)
            self.nodes.append(node)
            return node.outputs[0] if _outputs == 1 else tuple(node.outputs)

        return make


class Rule:
    """Base class of rewrite rules (see the module docstring).

    Class attributes:
        name: the rule's kebab-case name (``graphopt explain NAME``).
        variants: names of the pattern methods, tried in order.
        opsets: ``(lowest, highest)`` default-domain opset (None = no bound).
        targets: the targets this rule may run for.
        labels: free-form tags (``fusion``, ``attention``, ...).
        benefit: rules with a larger benefit are tried first at a node.
    """

    name: ClassVar[str] = ""
    variants: ClassVar[tuple[str, ...]] = ("pattern",)
    opsets: ClassVar[tuple[int | None, int | None]] = (None, None)
    targets: ClassVar[frozenset[str]] = ALL_TARGETS
    labels: ClassVar[frozenset[str]] = frozenset()
    benefit: ClassVar[int] = 1

    _patterns: ClassVar[dict[type, list[Pattern]]] = {}

    def patterns(self) -> list[Pattern]:
        """The built patterns of every variant (built once per class)."""
        cls = type(self)
        if cls not in Rule._patterns:
            Rule._patterns[cls] = [build_pattern(getattr(self, v)) for v in self.variants]
        return Rule._patterns[cls]

    def applicable(self, target: str, opset: int) -> str | None:
        """None when the rule may run for ``target`` at ``opset``, else why not."""
        if target not in self.targets:
            return f"rule '{self.name}' does not apply to target {target} (targets: {', '.join(sorted(self.targets))})"
        lo, hi = self.opsets
        if (lo is not None and opset < lo) or (hi is not None and opset > hi):
            span = f"{lo if lo is not None else 1}..{hi if hi is not None else ''}"
            return f"rule '{self.name}' applies to opsets {span}; the model has opset {opset}"
        return None

    def check(self, ctx: CheckContext, **bindings: Any) -> CheckResult:
        """Constraints beyond the structure; default: none."""
        return ctx.ok()

    def rewrite(self, op: RewriteBuilder, **bindings: Any) -> Any:  # pragma: no cover - abstract
        """Build the replacement; return one value per pattern output (None
        for an output nothing outside the match reads)."""
        raise NotImplementedError

    def try_match(self, node: ir.Node, env: RuleEnv) -> tuple[Match | None, Failure | CheckResult]:
        """Match every variant at ``node`` and check it.

        Returns:
            ``(match, ok)`` for the first variant that matches and passes
            ``check``; else ``(None, why)`` with the failure that got furthest
            (a check failure counts as the furthest of all).
        """
        best: Failure | CheckResult = Failure(f"no pattern of '{self.name}' is rooted at {node.op_type}", node, -1)
        for pattern in self.patterns():
            if pattern.root.op_type != node.op_type:
                continue
            matcher = Matcher(pattern, dict(env.model.opset_imports))
            for found in matcher.matches(node):
                verdict = self.check(CheckContext(found, env), **found.bindings())
                if verdict:
                    return found, verdict
                if isinstance(best, Failure):  # a refused check outranks any structural failure
                    best = verdict
            failure = matcher.failure
            if isinstance(best, Failure) and failure.depth > best.depth:
                best = Failure(f"[{pattern.name}] {failure.reason}" if len(self.variants) > 1 else failure.reason,
                               failure.at, failure.depth)
        return None, best


def _replace(match: Match, rule: Rule, new: Any, env: RuleEnv, created: Sequence[ir.Node] = ()) -> bool:
    """Replace the match's outputs by ``new`` and remove the matched nodes
    nothing reads any more. Returns True when a secondary output was replaced
    (the graph then needs a topological sort)."""
    new_values = tuple(new) if isinstance(new, (tuple, list)) else (new,)
    if len(new_values) != len(match.outputs):
        raise ValueError(f"rule '{rule.name}' returned {len(new_values)} values for {len(match.outputs)} outputs")
    resort = False
    for i, (old, value) in enumerate(zip(match.outputs, new_values)):
        if value is None:
            if match.used_outside(i):
                raise ValueError(f"rule '{rule.name}' returned no value for output {i}, which is still read")
            continue
        if value.producer() in created:
            env.shapes.alias(value, old)
        if value.type is None and old.type is not None:
            value.type = old.type
        if value.shape is None and old.shape is not None:
            value.shape = old.shape
        if old.is_graph_output():
            name = old.name
            old.replace_all_uses_with(value, replace_graph_outputs=True)
            old.name = None
            value.name = name
            value.type, value.shape = old.type, old.shape
        else:
            old.replace_all_uses_with(value)
        resort = resort or (i > 0 and bool(value.uses()))
    graph = match.root.graph
    pending = list(match.nodes)
    while pending:  # remove nodes whose outputs nothing reads, consumers first
        left = [n for n in pending if any(o.uses() or o.is_graph_output() for o in n.outputs)]
        dead = [n for n in pending if n not in left]
        if not dead:
            break
        graph.remove(dead, safe=True)
        pending = left
    return resort


def apply_rules(env: RuleEnv, rules: Sequence[Rule], graphs: Iterable[ir.Graph] | None = None) -> Counter:
    """Apply ``rules`` over ``env.model`` (main graph and subgraphs unless
    ``graphs`` is given), each node once, from the last node to the first.

    Rules not applicable to the target or the model's opset are skipped. The
    domains of new nodes are added to the model's opset imports (version 1
    for ``com.microsoft``).

    Returns:
        Rule name -> number of rewrites.

    Raises:
        ValueError: a rule's rewrite returned the wrong number of values.
    """
    model = env.model
    opset = default_opset(model)
    active = [r for r in rules if r.applicable(env.target, opset) is None]
    by_op: dict[str, list[Rule]] = {}
    for rule in sorted(active, key=lambda r: -r.benefit):
        for op_type in {p.root.op_type for p in rule.patterns()}:
            by_op.setdefault(op_type, []).append(rule)
    fired: Counter = Counter()
    if not by_op:
        return fired
    new_domains: set[str] = set()
    for graph in list(graphs if graphs is not None else ir.all_graphs(model)):
        resort = False
        for node in reversed(list(graph)):  # consumers first: a larger match rooted later wins over its own tail
            candidates = by_op.get(node.op_type)
            if not candidates or node.graph is not graph:
                continue
            for rule in candidates:
                match, _ = rule.try_match(node, env)
                if match is None:
                    continue
                builder = RewriteBuilder(match, rule.name, env)
                new = rule.rewrite(builder, **match.bindings())
                resort = _replace(match, rule, new, env, builder.nodes) or resort
                new_domains.update(n.domain for n in builder.nodes)
                fired[rule.name] += 1
                _LOG.debug("%s fired at %s", rule.name, node.name)
                break
        if resort or fired:
            graph.sort()  # rewrites may read values produced after the match's root
    for domain in new_domains - {"", "ai.onnx"}:
        model.opset_imports.setdefault(domain, 1)
    return fired

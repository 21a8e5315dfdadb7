"""Pattern graphs: what a rule's ``pattern`` method builds with the pattern builder.

A pattern is a small DAG of :class:`PNode` (an operator with attribute
constraints) over :class:`Var` (any value, bound by name), :class:`Literal`
(a constant scalar of a given value) and the outputs of other pattern nodes.
It is written as the graph it matches::

    def pattern(self, op, x, scale, bias):
        mean = op.ReduceMean(x, axes=[-1])
        d = op.Sub(x, mean)
        ...
        return op.Add(op.Mul(normalized, scale), bias)

The parameters after ``op`` become variables of the same name. Python numbers
given as inputs match constants (``op.Div(x, 1.4142135)``); keyword arguments
are attribute constraints (``axis=-1``), ``op.capture("eps")`` binds an
attribute's value instead, ``_domain`` sets the operator domain, ``_outputs``
the number of outputs (a tuple is returned for more than one) and ``_label``
binds the matched graph node itself. Prior art: MLIR PDLL and onnxscript's
rewriter (patterns that read like the graph they match).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "Var", "Literal", "Out", "Capture", "PNode", "Pattern", "PatternBuilder", "COMMUTATIVE", "build_pattern",
]

COMMUTATIVE = frozenset({"Add", "Mul", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "Equal"})
"""Default-domain operators whose two inputs may be matched in either order."""

LITERAL_RTOL = 1e-4
"""Relative tolerance of a literal against the graph's constant: exporters
write ``sqrt(2)`` or ``sqrt(2/pi)`` rounded to float32 (~6e-8 relative)."""


@dataclass(frozen=True, eq=False)
class Var:
    """A pattern variable: matches any value and binds it to ``name``; the
    same name used twice must bind the same value. ``optional`` also matches
    an absent input (bound to None)."""

    name: str
    optional: bool = False

    def __repr__(self) -> str:
        return f"Var({self.name}{', optional' if self.optional else ''})"


@dataclass(frozen=True, eq=False)
class Literal:
    """Matches a constant with one element whose value is within ``rtol`` of
    ``value`` (scalar or shape ``[1]``: a larger rank could broadcast the
    other operand)."""

    value: float
    rtol: float = LITERAL_RTOL

    def __repr__(self) -> str:
        return f"Literal({self.value:g})"


@dataclass(frozen=True, eq=False)
class Capture:
    """An attribute constraint that accepts any value and binds it to ``name``
    (the schema default when the node does not set the attribute)."""

    name: str


@dataclass(eq=False)
class Out:
    """Output ``index`` of pattern node ``node``."""

    node: "PNode"
    index: int = 0

    def __repr__(self) -> str:
        return f"{self.node.op_type}#{self.index}"


PValue = Var | Literal | Out


@dataclass(eq=False)
class PNode:
    """A pattern operator: type, domain, inputs (pattern values; None for an
    absent optional input), attribute constraints, optional label, number of
    outputs."""

    op_type: str
    domain: str
    inputs: tuple[PValue | None, ...]
    attrs: dict[str, Any]
    label: str | None = None
    num_outputs: int = 1
    outputs: tuple[Out, ...] = field(default=())

    @property
    def commutative(self) -> bool:
        return self.domain == "" and self.op_type in COMMUTATIVE and len(self.inputs) == 2

    def __repr__(self) -> str:
        return f"PNode({self.op_type})"


@dataclass
class Pattern:
    """A built pattern.

    Attributes:
        name: the building method's name (the rule's variant).
        outputs: the pattern's outputs; ``outputs[0]``'s producer is the root,
            where matching starts.
        variables: the variable names, in the method's parameter order.
        nodes: every pattern node, the root first (producers after consumers).
    """

    name: str
    outputs: tuple[Out, ...]
    variables: tuple[str, ...]
    nodes: tuple[PNode, ...]

    @property
    def root(self) -> PNode:
        return self.outputs[0].node

    def describe(self) -> str:
        """One line naming the root and the node count."""
        return f"{self.name}: {len(self.nodes)} nodes rooted at {self.root.op_type}"


class PatternBuilder:
    """The ``op`` object a rule's ``pattern`` method receives: ``op.Mul(a, b)``
    makes a pattern node and returns its output (a tuple for ``_outputs=n > 1``)."""

    def __init__(self) -> None:
        self.nodes: list[PNode] = []

    def opt(self, name: str) -> Var:
        """An optional variable: matches an absent input too (bound to None)."""
        return Var(name, optional=True)

    def capture(self, name: str) -> Capture:
        """Bind an attribute's value to ``name`` (any value is accepted)."""
        return Capture(name)

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: Any, _domain: str = "", _outputs: int = 1, _label: str | None = None, **attrs: Any) -> Any:
            node = PNode(op_type, _domain, tuple(_as_pvalue(i) for i in inputs), dict(attrs), _label, _outputs)
            node.outputs = tuple(Out(node, i) for i in range(_outputs))
            self.nodes.append(node)
            return node.outputs[0] if _outputs == 1 else node.outputs

        return make


def _as_pvalue(value: Any) -> PValue | None:
    if value is None or isinstance(value, (Var, Literal, Out)):
        return value
    if isinstance(value, bool):
        raise TypeError("a bool is not a pattern input; match boolean constants in check()")
    if isinstance(value, (int, float)):
        return Literal(float(value))
    raise TypeError(f"pattern input must be a variable, a node output or a number, got {type(value).__name__}")


def build_pattern(method: Callable[..., Any]) -> Pattern:
    """Call a bound ``pattern``-style method with a fresh builder and one
    :class:`Var` per parameter after ``op``, and collect the pattern.

    Raises:
        TypeError: the method returns something other than pattern node
            outputs, or an output is a variable.
    """
    params = list(inspect.signature(method).parameters)[1:]
    builder = PatternBuilder()
    result = method(builder, *(Var(p) for p in params))
    outputs = result if isinstance(result, tuple) else (result,)
    if not outputs or not all(isinstance(o, Out) for o in outputs):
        raise TypeError(f"{method.__qualname__} must return pattern node outputs, got {result!r}")
    reached: list[PNode] = []
    seen: set[int] = set()
    stack = [outputs[0].node]
    while stack:  # breadth-first from the root: producers after consumers
        node = stack.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        reached.append(node)
        stack.extend(i.node for i in node.inputs if isinstance(i, Out))
    if any(id(o.node) not in seen for o in outputs[1:]):
        raise TypeError(f"{method.__qualname__}: every output must be produced below the first one's node "
                        "(matching starts there)")
    return Pattern(method.__name__, tuple(outputs), tuple(params), tuple(reached))

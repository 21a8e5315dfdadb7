"""Matching a :class:`~graphopt.pattern.pattern.Pattern` against the graph.

Matching starts at a candidate root node (the producer of the pattern's first
output) and walks producers backward, input by input. Commutative operators
(:data:`~graphopt.pattern.pattern.COMMUTATIVE`) try both input orders, with
backtracking. A graph node matches at most one pattern node and every matched
node lies in the root's graph. A structural match is then refused when a value
produced inside it, other than the pattern's outputs, is read outside it or is
a graph output (the matched nodes are about to be removed). Every refusal is
a :class:`Failure` with a reason; of several, the one that got furthest is
kept, so ``graphopt explain`` can say why a rule did not fire (MLIR's
``notifyMatchFailure``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import onnx

from graphopt import ir
from graphopt.pattern.pattern import Capture, Literal, Out, Pattern, PNode, Var

__all__ = ["Match", "Failure", "Matcher", "describe_node", "describe_value", "attribute_value"]


def describe_node(node: ir.Node) -> str:
    """``Mul 'name'`` (or ``Mul`` for an unnamed node): how reasons name a node."""
    op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    return f"{op} '{node.name}'" if node.name else op


def describe_value(value: ir.Value | None) -> str:
    """``%name`` of a value, with its producer when it has one."""
    if value is None:
        return "an absent input"
    producer = value.producer()
    where = f" (output of {describe_node(producer)})" if producer is not None else (
        " (initializer)" if value.is_initializer() else " (graph input)" if value.is_graph_input() else "")
    return f"%{value.name}{where}"


@functools.lru_cache(maxsize=4096)
def _schema_default(op_type: str, domain: str, version: int, name: str) -> Any:
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None
    attr = schema.attributes.get(name)
    if attr is None or not attr.default_value.name:
        return None
    return onnx.helper.get_attribute_value(attr.default_value)


def attribute_value(node: ir.Node, name: str, opset: int | None) -> Any:
    """The value of attribute ``name`` of ``node``: its own, else the ONNX
    schema's default at ``opset`` (None when there is neither). Strings come
    back as ``str``, lists as ``list``."""
    attr = node.attributes.get(name)
    if attr is not None:
        value = attr.value
    else:
        value = _schema_default(node.op_type, node.domain, opset, name) if opset is not None else None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, tuple):
        return list(value)
    return value


ATTRIBUTE_INPUTS: dict[tuple[str, str], int] = {
    ("ReduceMean", "axes"): 1, ("ReduceSum", "axes"): 1, ("ReduceMax", "axes"): 1, ("ReduceMin", "axes"): 1,
    ("ReduceProd", "axes"): 1, ("ReduceSumSquare", "axes"): 1, ("ReduceL1", "axes"): 1, ("ReduceL2", "axes"): 1,
    ("ReduceLogSum", "axes"): 1, ("ReduceLogSumExp", "axes"): 1,
    ("Squeeze", "axes"): 1, ("Unsqueeze", "axes"): 1, ("Split", "split"): 1,
}
"""Attributes that later opsets turned into inputs (ONNX: ReduceSum and
Squeeze/Unsqueeze/Split at opset 13, the other Reduce ops at 18), with the
input's index. A pattern constrains them as attributes (``axes=[-1]``); on a
node that has the input instead, its constant value is what is compared, so
one pattern matches every opset."""


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(expected) == len(got) and all(
            _same(e, g) for e, g in zip(expected, got))
    if isinstance(expected, float) or isinstance(got, float):
        return got is not None and not isinstance(got, (str, list)) and math.isclose(
            float(expected), float(got), rel_tol=1e-6, abs_tol=1e-12)
    return expected == got


@dataclass
class Failure:
    """Why a pattern did not match at a candidate root.

    Attributes:
        reason: what was expected and what was found.
        at: the graph node or value the reason is about.
        depth: pattern nodes matched before the failure (larger = closer).
    """

    reason: str
    at: Any = None
    depth: int = 0

    def __bool__(self) -> bool:
        return False


@dataclass
class Match:
    """A structural match.

    Attributes:
        pattern: the matched pattern.
        root: the graph node matched by the pattern's root.
        values: variable name -> graph value (None for an absent optional input).
        attrs: captured attribute name -> value.
        labels: node label -> graph node.
        nodes: the matched graph nodes, the root first.
        outputs: the graph values of the pattern's outputs, in order.
        notes: what a rule's ``check`` found and its ``rewrite`` reuses
            (e.g. the lowering plan of an attention block).
    """

    pattern: Pattern
    root: ir.Node
    values: dict[str, ir.Value | None] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, ir.Node] = field(default_factory=dict)
    nodes: list[ir.Node] = field(default_factory=list)
    outputs: list[ir.Value] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def bindings(self) -> dict[str, Any]:
        """Values, captured attributes and labelled nodes in one mapping: the
        keyword arguments of a rule's ``check`` and ``rewrite``."""
        return {**self.values, **self.attrs, **self.labels}

    def used_outside(self, index: int) -> bool:
        """Whether pattern output ``index`` is read outside the match (or is a
        graph output): a rewrite may then have to produce it."""
        value = self.outputs[index]
        inside = {id(n) for n in self.nodes}
        return value.is_graph_output() or any(id(u.node) not in inside for u in value.uses())


class _State:
    """One partial assignment (copied when it branches)."""

    __slots__ = ("values", "attrs", "nodes", "owners", "order")

    def __init__(self) -> None:
        self.values: dict[str, ir.Value | None] = {}
        self.attrs: dict[str, Any] = {}
        self.nodes: dict[int, ir.Node] = {}  # id(PNode) -> graph node
        self.owners: dict[int, PNode] = {}  # id(graph node) -> PNode
        self.order: list[tuple[PNode, ir.Node]] = []

    def copy(self) -> "_State":
        st = _State()
        st.values, st.attrs = dict(self.values), dict(self.attrs)
        st.nodes, st.owners, st.order = dict(self.nodes), dict(self.owners), list(self.order)
        return st


class Matcher:
    """Matches one pattern; ``opsets`` maps domain -> opset version (for
    attribute defaults).

    Args:
        pattern: the pattern to match.
        opsets: the model's opset imports (``""`` for the default domain).
    """

    def __init__(self, pattern: Pattern, opsets: dict[str, int]) -> None:
        self.pattern = pattern
        self.opsets = {("" if k == "ai.onnx" else k): v for k, v in opsets.items()}
        self._best = Failure("no candidate", depth=-1)
        self._graph: ir.Graph | None = None

    def _fail(self, reason: str, at: Any, st: _State) -> None:
        depth = len(st.order)
        if depth > self._best.depth:
            self._best = Failure(reason, at, depth)

    MAX_MATCHES = 64
    """Structural matches tried at one root (commutative operators multiply them)."""

    def matches(self, root: ir.Node) -> Iterator[Match]:
        """Every structural match with the pattern's root at ``root`` (at most
        :data:`MAX_MATCHES`), in backtracking order; :attr:`failure` then holds
        the refusal that got furthest."""
        self._best = Failure(f"{describe_node(root)} is not a {self.pattern.root.op_type}", root, -1)
        self._graph = root.graph
        tried = 0
        for st in self._node(self.pattern.root, root, _State()):
            found = self._finish(st, root)
            if found is not None:
                yield found
                tried += 1
                if tried >= self.MAX_MATCHES:
                    return

    def match(self, root: ir.Node) -> Match | Failure:
        """The first structural match at ``root``, or the :class:`Failure`
        that got furthest."""
        for found in self.matches(root):
            return found
        return self._best

    @property
    def failure(self) -> Failure:
        """The furthest refusal of the last :meth:`matches` / :meth:`match`."""
        return self._best

    # -- structural matching ------------------------------------------------------

    def _node(self, pn: PNode, node: ir.Node, st: _State, where: str = "") -> Iterator[_State]:
        known = st.nodes.get(id(pn))
        if known is not None:
            if known is node:
                yield st
            else:
                self._fail(f"{where}{pn.op_type} must be one node, found both {describe_node(known)} and "
                           f"{describe_node(node)}", node, st)
            return
        domain = "" if node.domain == "ai.onnx" else node.domain
        if node.op_type != pn.op_type or domain != pn.domain:
            want = f"{pn.domain}::{pn.op_type}" if pn.domain else pn.op_type
            self._fail(f"{where}expected {want}, found {describe_node(node)}", node, st)
            return
        if node.graph is not self._graph:
            self._fail(f"{describe_node(node)} is in another graph", node, st)
            return
        if id(node) in st.owners:
            self._fail(f"{describe_node(node)} would match two pattern nodes", node, st)
            return
        inputs = list(node.inputs)
        moved: dict[str, Any] = {}
        for name in pn.attrs:
            index = ATTRIBUTE_INPUTS.get((pn.op_type, name))
            if index is None or index < len(pn.inputs) or name in node.attributes or len(inputs) <= index:
                continue
            source = inputs[index]
            if source is not None:
                array = ir.const_array(source, max_elements=64)
                if array is None:
                    self._fail(f"{where}{describe_node(node)} has a non-constant {name} input", node, st)
                    return
                moved[name] = [int(a) for a in array.reshape(-1)]
            inputs = inputs[:index] + [None] * (len(inputs) - index - 1)
        while inputs and inputs[-1] is None and len(inputs) > len(pn.inputs):
            inputs.pop()
        if len(inputs) > len(pn.inputs) or any(
                p is not None and not (isinstance(p, Var) and p.optional) for p in pn.inputs[len(inputs):]):
            self._fail(f"{describe_node(node)} has {len(inputs)} inputs, the pattern {len(pn.inputs)}", node, st)
            return
        if len(node.outputs) < pn.num_outputs:
            self._fail(f"{describe_node(node)} has {len(node.outputs)} outputs, the pattern {pn.num_outputs}",
                       node, st)
            return
        st = st.copy()
        for name, expected in pn.attrs.items():
            got = moved[name] if name in moved else attribute_value(node, name, self.opsets.get(pn.domain))
            if isinstance(expected, Capture):
                st.attrs[expected.name] = got
            elif not _same(expected, got):
                self._fail(f"{describe_node(node)} has {name}={got!r}, the pattern needs {expected!r}", node, st)
                return
        st.nodes[id(pn)] = node
        st.owners[id(node)] = pn
        st.order.append((pn, node))
        padded = inputs + [None] * (len(pn.inputs) - len(inputs))
        orders = [list(range(len(pn.inputs)))]
        if pn.commutative:
            orders.append([1, 0])
        for order in orders:
            branch = st.copy() if len(orders) > 1 else st
            yield from self._inputs(pn, [pn.inputs[i] for i in order], padded, 0, node, branch)

    def _inputs(self, pn: PNode, pins: list, gins: list, i: int, node: ir.Node, st: _State) -> Iterator[_State]:
        if i == len(pins):
            yield st
            return
        for st2 in self._value(pins[i], gins[i], node, i, st):
            yield from self._inputs(pn, pins, gins, i + 1, node, st2)

    def _value(self, pv: Any, value: ir.Value | None, consumer: ir.Node, index: int, st: _State) -> Iterator[_State]:
        where = f"input {index} of {describe_node(consumer)}"
        if pv is None:
            if value is None:
                yield st
            else:
                self._fail(f"{where} must be absent, found {describe_value(value)}", value, st)
            return
        if isinstance(pv, Var):
            if value is None and not pv.optional:
                self._fail(f"{where} is absent", consumer, st)
                return
            if pv.name in st.values:
                if st.values[pv.name] is value:
                    yield st
                else:
                    self._fail(f"{where} must be {describe_value(st.values[pv.name])} (as '{pv.name}'), found "
                               f"{describe_value(value)}", value, st)
                return
            st = st.copy()
            st.values[pv.name] = value
            yield st
            return
        if value is None:
            self._fail(f"{where} is absent", consumer, st)
            return
        if isinstance(pv, Literal):
            reason = _literal_mismatch(pv, value)
            if reason is None:
                yield st
            else:
                self._fail(f"{where}: {reason}", value, st)
            return
        assert isinstance(pv, Out)
        producer = value.producer()
        if producer is None:
            self._fail(f"{where} must be the output of {pv.node.op_type}, found {describe_value(value)}", value, st)
            return
        if value.index() != pv.index:
            self._fail(f"{where} must be output {pv.index} of {pv.node.op_type}, found output {value.index()} of "
                       f"{describe_node(producer)}", value, st)
            return
        yield from self._node(pv.node, producer, st, f"{where}: ")

    # -- after the structure matched -------------------------------------------------

    def _finish(self, st: _State, root: ir.Node) -> Match | None:
        outputs = [st.nodes[id(o.node)].outputs[o.index] for o in self.pattern.outputs]
        exposed = {id(v) for v in outputs}
        matched = st.owners
        for _, node in st.order:
            for out in node.outputs:
                if id(out) in exposed:
                    continue
                if out.is_graph_output():
                    self._fail(f"{describe_value(out)} is a graph output inside the match", out, st)
                    return None
                for use in out.uses():
                    if id(use.node) not in matched:
                        self._fail(f"{describe_value(out)} is also read by {describe_node(use.node)} outside the "
                                   "match", out, st)
                        return None
        labels = {pn.label: node for pn, node in st.order if pn.label}
        return Match(self.pattern, root, st.values, st.attrs, labels, [n for _, n in st.order], outputs)


def _literal_mismatch(lit: Literal, value: ir.Value) -> str | None:
    """None when ``value`` is a one-element constant within ``lit.rtol`` of
    ``lit.value``, else the reason."""
    tensor = ir.const_tensor(value)
    if tensor is None:
        return f"expected the constant {lit.value:g}, found {describe_value(value)}"
    shape = tuple(tensor.shape.numpy()) if tensor.shape is not None else ()
    if math.prod(shape) != 1 or len(shape) > 1:
        return f"expected the constant {lit.value:g}, found a constant of shape {list(shape)}"
    try:
        got = float(np.asarray(tensor.numpy()).reshape(()))
    except (TypeError, ValueError):
        return f"expected the constant {lit.value:g}, found a non-numeric constant"
    if not math.isclose(got, lit.value, rel_tol=lit.rtol, abs_tol=1e-30 if lit.value else 1e-12):
        return f"expected the constant {lit.value:g}, found {got:g}"
    return None

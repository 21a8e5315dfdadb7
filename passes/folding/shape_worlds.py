"""The rank of an If's output when only one branch leads to a valid run.

A scripted exporter's guard ``If(Equal(Shape(x)[-1], 1))`` squeezes a time
axis in one branch and passes ``x`` on in the other: the If's output is
rank 2 or rank 3, decided at run time, and ONNX inference gives it no rank.
The guards below it (``If(Not(Equal(Size(Shape(y)), 2)))`` in front of an
LSTM) then stay. Often only one of the two ranks can run: with the other,
a later op of the same graph fails its ONNX spec (the LSTM's ``X`` is not
rank 3), so the original model raises on every input that takes that
branch. :func:`pin_if_outputs` tries each branch's dims for the If's outputs
("worlds"), carries them through the graph with the shape rules
(:class:`~.shape_dims.NativeDims`) and the shape values
(:class:`~.shape_values.Propagator`), and where exactly one world runs
without such a failure, pins the If's output dims to that world's; since
the other branch's output has another rank (by its producer's rule), no
run of the original takes it, and ``fold-shapes`` gives the If the taken
branch as a constant condition (``inline`` splices it). What is folded
from this holds on every input the original model runs (on the others the
original raises; the result may raise elsewhere or not). The exporter's
traced ``value_info`` says the same, but is not trusted here (see
``fold-shapes``' inference): the rank is proved from the op specs.

Failures checked (ONNX operator specs; only with ranks the rules know, and
only at nodes whose outputs reach the graph's outputs, a read inside an
If/Loop body counting as a read by the node holding it, so that a runtime
cannot skip them as dead code): LSTM/GRU/RNN ``X``, ``initial_h`` and
``initial_c`` of rank 3; Conv/ConvTranspose data of the weight's rank;
Concat inputs of one rank; MatMul inputs of rank >= 1; Squeeze axes within
the rank and on dims that are not a known int other than 1. The walk goes
into the taken branch of a live If whose condition it decides (in Silero
VAD the LSTM sits in such a branch, below the guard it decides). Each
branch's rank must come from its output's producer rule, not only from a
declared shape. Only Ifs whose condition is undecided and whose branches
differ in rank are tried, at most 16 per model; models without subgraphs
cost nothing.
"""

from __future__ import annotations

from graphopt import ir
from graphopt.passes.folding.shape_dims import model_dims
from graphopt.passes.folding.shape_values import Dim, Propagator, if_condition

__all__ = ["pin_if_outputs"]

_RECURRENT = {"LSTM": (0, 5, 6), "GRU": (0, 5), "RNN": (0, 5)}
"""Recurrent ops -> the inputs of rank 3 (X, initial_h, initial_c)."""

_MAX_CANDIDATES = 16
"""Ifs tried per model (each costs two walks of its graph below it)."""

_MAX_DEPTH = 4
"""Taken branches of decided Ifs walked into, nested."""


def _branches(node: ir.Node) -> tuple[ir.Graph, ir.Graph] | None:
    graphs = []
    for key in ("then_branch", "else_branch"):
        attr = node.attributes.get(key)
        if attr is None or attr.is_ref() or attr.type != ir.AttributeType.GRAPH:
            return None
        graphs.append(attr.value)
    return graphs[0], graphs[1]


def _owners(graph: ir.Graph) -> dict[int, ir.Node]:
    """id of every graph nested in ``graph``'s nodes -> the node of ``graph`` holding it."""
    owners: dict[int, ir.Node] = {}
    for node in graph:
        for attr in node.attributes.values():
            if attr.is_ref() or attr.type not in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                continue
            for sub in attr.value if attr.type == ir.AttributeType.GRAPHS else [attr.value]:
                for inner in (sub, *ir.subgraphs(sub)):
                    owners[id(inner)] = node
    return owners


def _live(node: ir.Node, graph: ir.Graph, owners: dict[int, ir.Node]) -> bool:
    """Whether an output of ``node`` reaches an output of ``graph`` through
    nodes of ``graph`` (a node whose result is unused may be skipped). A
    read inside an If/Loop body is a read by the node holding the body: a
    runtime computes the outer values a body reads before it runs the node
    (onnxruntime's implicit inputs)."""
    seen: set[ir.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for value in current.outputs:
            if value.is_graph_output() and value in graph.outputs:
                return True
            for user, _ in value.uses():
                user = user if user.graph is graph else owners.get(id(user.graph))
                if user is not None and user not in seen:
                    seen.add(user)
                    stack.append(user)
    return False


def _fails(node: ir.Node, dims) -> bool:  # noqa: ANN001 - dims: NativeDims
    """Whether ``node``'s inputs, as ``dims`` gives them, break its ONNX spec."""
    op, ins = node.op_type, node.inputs

    def rank(i: int) -> int | None:
        if i >= len(ins) or ins[i] is None:
            return None
        d = dims(ins[i])
        return None if d is None else len(d)

    if op in _RECURRENT:
        return any(rank(i) not in (None, 3) for i in _RECURRENT[op])
    if op in ("Conv", "ConvTranspose"):
        r, w = rank(0), rank(1)
        return r is not None and w is not None and r != w
    if op == "Concat":
        ranks = {rank(i) for i in range(len(ins))} - {None}
        return len(ranks) > 1
    if op == "MatMul":
        return rank(0) == 0 or rank(1) == 0
    if op == "Squeeze" and len(ins) > 1 and ins[1] is not None:
        data = dims(ins[0])
        axes = ir.const_array(ins[1])
        if data is None or axes is None:
            return False
        for a in axes.reshape(-1).tolist():
            if not -len(data) <= a < len(data):
                return True
            d = data[a]
            if isinstance(d, int) and d != 1:
                return True
    return False


def _world_fails(model: ir.Model, base: Propagator, node: ir.Node,
                 world: list[tuple[ir.Value, tuple[Dim, ...]]]) -> bool:
    """With the If's outputs pinned to ``world``, walk ``node``'s graph from
    ``node`` on (the values before it, and the outer graphs', are
    ``base``'s: they do not depend on the If); True when a live node below
    it fails its spec."""
    prop, native = model_dims(model)
    prop.set_refine(native)
    prop.take_values(base)
    native.pinned.update(world)
    return _fails_below(prop, native, node.graph, node, _MAX_DEPTH)


def _fails_below(prop: Propagator, native, graph: ir.Graph, start: ir.Node | None,  # noqa: ANN001
                 depth: int) -> bool:
    """Walk ``graph`` (from ``start`` on, or all of it): True when a live node
    fails its spec, here or in the taken branch of a live If whose
    condition the walk decides (that branch runs whenever the If does)."""
    owners = _owners(graph)
    below = start is None
    for other in graph:
        below = below or other is start
        if not below:
            continue
        sym = prop.visit(other)
        if sym is not None:
            prop.values[other.outputs[0]] = sym
        if other is start or other.domain not in ("", "ai.onnx"):
            continue
        if _fails(other, native) and _live(other, graph, owners):
            return True
        if other.op_type == "If" and depth > 0:
            cond, branches = if_condition(other, prop.get), _branches(other)
            if cond is not None and branches is not None and _live(other, graph, owners) \
                    and _fails_below(prop, native, branches[0] if cond else branches[1], None, depth - 1):
                return True
    return False


def pin_if_outputs(model: ir.Model, graphs: list[ir.Graph],
                   taken: dict[ir.Node, bool] | None = None) -> dict[ir.Value, tuple[Dim, ...]]:
    """Dims of If outputs that hold on every input the model runs.

    Args:
        model: the model (its default-domain opset selects the rules).
        graphs: the main graph and its subgraphs, outer graphs first
            (``ir.all_graphs``).
        taken: filled, when given, with each pinned If -> the branch every
            run of the original takes (True: then): the other branch's
            output has another rank (by its producer's rule) than the one
            every run sees, so no run takes it.

    Returns:
        If output -> dims, for each If (at most 16 tried) whose condition is
        not decided, whose branches give some output different ranks, and
        of whose two branches exactly one can run (see the module
        docstring). Empty for a model without subgraphs (nothing is walked).
    """
    if len(graphs) < 2:
        return {}
    # A cheap first look, without shape values (it may miss an If whose
    # branch ranks need them: fewer pins, never a wrong one).
    first, rough = model_dims(model)
    first.set_refine(rough)
    if not any(_worlds(n, rough, first) for g in graphs for n in g if n.op_type == "If"):
        return {}  # no If with branches of different ranks: nothing to walk
    base, walking = model_dims(model)
    base.set_refine(walking)
    for graph in graphs:  # one walk without assumptions: the values every world starts from
        for node in graph:
            sym = base.visit(node)
            if sym is not None:
                base.values[node.outputs[0]] = sym
    # Dims asked after the walk: asked during it, an outer If's output reads
    # its branches before their shape values are known (and the rules'
    # memo would keep that).
    _, native = model_dims(model, base)
    candidates = []
    for graph in graphs:
        for node in graph:
            if node.op_type == "If" and node.domain in ("", "ai.onnx") and len(candidates) < _MAX_CANDIDATES:
                worlds = _worlds(node, native, base)
                if worlds is not None:
                    candidates.append((node, worlds))
    pins: dict[ir.Value, tuple[Dim, ...]] = {}
    for node, worlds in candidates:
        ok = [w for w in worlds if not _world_fails(model, base, node, w)]
        if len(ok) == 1:
            pins.update(ok[0])
            if taken is not None:
                taken[node] = ok[0] is worlds[0]
    return pins


def _worlds(node: ir.Node, native, base: Propagator) -> list | None:  # noqa: ANN001 - native: NativeDims
    """The If's two worlds (its outputs with each branch's dims), when its
    condition is undecided and the branches differ in the rank of some
    output; else None."""
    branches = _branches(node)
    if branches is None or not node.outputs or if_condition(node, base.get) is not None:
        return None
    worlds = []
    for branch in branches:
        if len(branch.outputs) != len(node.outputs):
            return None
        world = []
        for out, src in zip(node.outputs, branch.outputs):
            dims, rule = native(src), native.by_rule(src)
            # the rank from the producer's rule, not only the branch output's
            # declared shape (an exporter's trace could have written it)
            if dims is None or rule is None or len(rule) != len(dims):
                return None
            world.append((out, dims))
        worlds.append(world)
    if all(len(a) == len(b) for (_, a), (_, b) in zip(*worlds)):
        return None  # same ranks: inference merges them already
    return worlds

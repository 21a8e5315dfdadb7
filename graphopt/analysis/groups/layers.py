"""Whole residual branches: ``Add(branch(x), x)`` sites that can become ``x``.

A Transformer block's attention and MLP branches and a CNN residual block's
branch (ShortGPT, Men et al. 2024, drops whole blocks; here each residual
branch is a unit). The branch is what dies when the Add reads only ``x``:
the nodes whose every output feeds, in the end, only the branch output.
Post-LN BERT keeps its LayerNorm after the Add.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from graphopt import ir
from graphopt.analysis.groups.dims import Dims
from graphopt.analysis.groups.model import CoupledGroup, Refusal
from graphopt.analysis.groups.naming import layer_index

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["find_layers", "dead_branch", "node_graph"]

_WEIGHTED = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "MultiHeadAttention"}
_ATTENTION = {"Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention"}


def node_graph(graph: ir.Graph) -> nx.DiGraph:
    """Nodes of ``graph`` as a networkx DiGraph (edges producer -> reader)."""
    import networkx as nx  # imported here: the CLI imports graphopt.analysis at start-up

    g = nx.DiGraph()
    for node in graph:
        g.add_node(node)
        for value in node.outputs:
            for use in value.uses():
                if use.node.graph is graph:
                    g.add_edge(node, use.node)
    return g


def dead_branch(add: ir.Node, y: ir.Value, order: dict[ir.Node, int]) -> list[ir.Node]:
    """The nodes that die when ``add`` stops reading ``y`` (in node order):
    walked from ``y``'s producer back in reverse node order, a node dies
    when every reader of its outputs died (``add`` reading ``y`` counts as
    dead) and none of its outputs is a graph output."""
    first = y.producer()
    if first is None or first.graph is not add.graph:
        return []
    dead: set[ir.Node] = set()
    pending = {first}
    nodes = sorted(order, key=order.get, reverse=True)
    limit = order[first]
    for node in nodes:
        if order[node] > limit or node not in pending:
            continue
        alive = False
        for out in node.outputs:
            if out.is_graph_output():
                alive = True
                break
            for use in out.uses():
                if use.node is add and out is y:
                    continue
                if use.node not in dead:
                    alive = True
                    break
            if alive:
                break
        if alive:
            continue
        dead.add(node)
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.graph is add.graph:
                pending.add(producer)
    return sorted(dead, key=order.get)


def find_layers(model: ir.Model, dims: Dims, order: dict[ir.Node, int]) -> tuple[list[CoupledGroup], list[Refusal]]:
    """Residual branches of the main graph that can be dropped.

    A site is an ``Add(a, b)`` of two activations where one (the branch
    output ``y``) depends on the other (``x``) through at least one
    weighted op (MatMul, Gemm, Conv, fused attention). It is a group when
    ``y`` is read only by the Add, ``x``, ``y`` and the Add's output have
    the same dims (no broadcast), and the Add's output is not a graph output
    that ``x`` cannot stand in for; otherwise a refusal.
    """
    import networkx as nx

    graph = model.graph
    g = node_graph(graph)
    groups: list[CoupledGroup] = []
    refused: list[Refusal] = []
    for add in graph:
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
            continue
        if any(v is None or ir.is_constant(v) for v in add.inputs):
            continue
        for y, x in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            py = y.producer()
            if py is None or py.graph is not graph or x is y:
                continue
            px = x.producer()
            if px is not None and px.graph is graph:
                if not nx.has_path(g, px, py):
                    continue
            elif not any(use.node in g and nx.has_path(g, use.node, py) for use in x.uses() if use.node is not add):
                continue
            entry = {u.node for u in x.uses() if u.node is not add}
            branch = dead_branch(add, y, order)
            if not any(n.op_type in _WEIGHTED for n in branch) or not any(n in entry for n in branch):
                continue
            label = "attn" if any(n.op_type in _ATTENTION for n in branch) else (
                "block" if any(n.op_type in ("Conv", "ConvTranspose") for n in branch) else "mlp")
            index = layer_index(branch)
            name = f"layer{index}.{label}" if index is not None and label != "block" else f"residual:{add.name}"
            reason = None
            if len(y.uses()) != 1 or y.is_graph_output():
                reason = f"the branch output {y.name} is read elsewhere"
            else:
                dx, dy, do = dims.of(x), dims.of(y), dims.of(add.outputs[0])
                if dx is None or None in dx or dx != dy or dx != do:
                    reason = "the branch output and the residual differ in dims (broadcast) or are unknown"
                elif add.outputs[0].is_graph_output() and (px is None or x.is_graph_output() or x.is_graph_input()):
                    reason = f"the Add's output is graph output {add.outputs[0].name} and {x.name} cannot stand in"
            if reason is not None:
                refused.append(Refusal(name, "layer", reason))
                break
            weights = 0
            dead = set(branch)
            seen: set[ir.Value] = set()
            for node in branch:
                for v in node.inputs:
                    t = ir.const_tensor(v) if v is not None and v not in seen else None
                    if t is not None and v.is_initializer() and all(u.node in dead for u in v.uses()):
                        seen.add(v)
                        weights += math.prod(int(d) for d in t.shape)
            producers = tuple(n.name or "" for n in branch if n in entry)
            groups.append(CoupledGroup(name, "layer", 1, (), (), producers, (add.name or "",), y.name or "",
                                       weights, add.name, tuple(n.name or "" for n in branch)))
            break
    return groups, refused

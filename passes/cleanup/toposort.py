"""topological-sort: order nodes so every producer precedes its consumers."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass

_GRAPH_KINDS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _already_sorted(container: ir.Graph | ir.Function) -> bool:
    """True when ``container`` has no subgraphs, every node and output value
    is named, and every node comes after the producers of its inputs.

    onnx-ir's stable sort then returns the same order (it pops the
    highest-indexed sink first, and in a topological order the last remaining
    node is always a sink) and names nothing, so it can be skipped: one
    linear scan instead of a heap-based sort that re-inserts every node.
    """
    seen: set[int] = set()
    for node in container:
        if node.name is None:
            return False
        attrs = node.attributes.data
        if attrs and any(a.type in _GRAPH_KINDS for a in attrs.values()):
            return False
        for value in node.inputs:
            if value is None:
                continue
            producer = value.producer()
            if producer is not None and id(producer) not in seen:
                return False
        for value in node.outputs:
            if value.name is None:
                return False
        seen.add(id(node))
    return True


@register_pass("topological-sort")
class TopologicalSort(Pass):
    """Sort the nodes of the main graph, every subgraph and every function topologically.

    The sort is stable (nodes already in order keep their order: onnx-ir's
    ``Graph.sort``, after MedallionTopologicalSort). The ONNX spec requires
    graph nodes in topological order; exporters and hand edits break it.
    Reports ``modified`` only when some node moved. A graph without subgraphs
    that is already in order is recognized by one linear scan and left as it
    is (what the stable sort would return).

    Raises:
        ValueError: the graph has a cycle (load-time validation rejects these).
    """

    establishes = frozenset({"topo-sorted"})
    preserves = frozenset({"no-dead-nodes", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        moved = 0
        containers = [model.graph, *model.functions.values()]
        for container in containers:
            if _already_sorted(container):
                continue
            before = [id(n) for n in ir.all_nodes(container)]
            container.sort()
            after = [id(n) for n in ir.all_nodes(container)]
            moved += sum(1 for a, b in zip(before, after) if a != b)
        return PassResult(modified=moved > 0, stats={"moved": moved})

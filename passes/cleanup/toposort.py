"""topological-sort: order nodes so every producer precedes its consumers."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass


@register_pass("topological-sort")
class TopologicalSort(Pass):
    """Sort the nodes of the main graph, every subgraph and every function topologically.

    The sort is stable (nodes already in order keep their order: onnx-ir's
    ``Graph.sort``, after MedallionTopologicalSort). The ONNX spec requires
    graph nodes in topological order; exporters and hand edits break it.
    Reports ``modified`` only when some node moved.

    Raises:
        ValueError: the graph has a cycle (load-time validation rejects these).
    """

    establishes = frozenset({"topo-sorted"})
    preserves = frozenset({"no-dead-nodes", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        moved = 0
        containers = [model.graph, *model.functions.values()]
        for container in containers:
            before = [id(n) for n in ir.all_nodes(container)]
            container.sort()
            after = [id(n) for n in ir.all_nodes(container)]
            moved += sum(1 for a, b in zip(before, after) if a != b)
        return PassResult(modified=moved > 0, stats={"moved": moved})

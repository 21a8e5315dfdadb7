"""dce: dead-code elimination of nodes, initializers, functions and opset imports."""

from __future__ import annotations

from dataclasses import dataclass, field

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT
from graphopt.passmanager import Pass, PassResult, register_pass


@dataclass(frozen=True)
class DceOptions:
    """Options of ``dce``."""

    functions: bool = field(default=True, metadata={"doc": "remove model-local functions no node calls"})
    opsets: bool = field(default=True, metadata={"doc": "remove opset imports of domains no node uses"})


def is_dead(node: ir.Node) -> bool:
    return all(not v.uses() and not v.is_graph_output() for v in node.outputs)


def _sweep(container: ir.Graph | ir.Function) -> int:
    """Remove dead nodes of one graph or function, sinks first; return the count.

    One walk from the last node to the first; a removed node's producers in
    this container are checked again at once (they may have lost their last
    reader), so dead chains go in one walk whatever the node order."""
    owner = container._graph if isinstance(container, ir.Function) else container  # noqa: SLF001
    removed = 0
    for node in reversed(list(container)):
        stack = [node]
        while stack:
            dead = stack.pop()
            if dead.graph is not owner or not is_dead(dead):
                continue  # alive, or removed already
            producers = [v.producer() for v in dead.inputs if v is not None]
            container.remove(dead, safe=True)
            removed += 1
            stack.extend(p for p in producers if p is not None and p.graph is owner)
    return removed


def used_functions(model: ir.Model) -> set[tuple[str, str, str]]:
    """Identifiers of functions reachable from the main graph (transitively)."""
    used: set[tuple[str, str, str]] = set()
    stack = [model.graph]
    while stack:
        container = stack.pop()
        for node in ir.all_nodes(container):
            key = (node.domain, node.op_type, node.overload)
            if key in model.functions and key not in used:
                used.add(key)
                stack.append(model.functions[key])
    return used


@register_pass("dce")
class DeadCodeElimination(Pass):
    """Remove nodes whose outputs reach no graph output, unused initializers, uncalled functions and unused opset imports.

    Works in the main graph, every If/Loop/Scan body and every function body
    (a value read inside a subgraph counts as used). Graph inputs are never
    removed (they are the model's signature); initializers that are also graph
    inputs stay. The default-domain opset import always stays. Standard
    technique (Muchnick, Advanced Compiler Design, 18.10), as in onnx-ir's
    ``RemoveUnusedNodesPass``.
    """

    Options = DceOptions
    establishes = frozenset({"no-dead-nodes"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"nodes": 0, "initializers": 0, "functions": 0, "opsets": 0}
        containers = [model.graph, *model.functions.values()]
        # Sweep inner graphs first so outer values they no longer read become
        # dead; a second round catches inner readers of outer values that the
        # first round's outer sweep removed (only where there are subgraphs).
        for _ in range(2):
            nested = False
            for container in containers:
                subs = list(ir.subgraphs(container))
                nested = nested or bool(subs)
                for sub in reversed(subs):
                    stats["nodes"] += _sweep(sub)
                stats["nodes"] += _sweep(container)
            if not nested:
                break
        for graph in ir.all_graphs(model):
            for name, value in list(graph.initializers.items()):
                if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
                    del graph.initializers[name]
                    stats["initializers"] += 1
        if self.options.functions and model.functions:
            used = used_functions(model)
            for key in list(model.functions):
                if key not in used:
                    del model.functions[key]
                    stats["functions"] += 1
        if self.options.opsets and any(d not in ("", "ai.onnx") for d in model.opset_imports):
            domains = {n.domain for n in ir.all_nodes(model.graph)}
            for func in model.functions.values():
                domains.add(func.domain)
                domains.update(n.domain for n in ir.all_nodes(func))
            for domain in list(model.opset_imports):
                if domain not in ("", "ai.onnx") and domain not in domains:
                    del model.opset_imports[domain]
                    stats["opsets"] += 1
        return PassResult(modified=any(stats.values()), stats=stats)

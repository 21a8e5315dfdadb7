"""eliminate-identity: remove Identity nodes."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass


@register_pass("eliminate-identity")
class EliminateIdentity(Pass):
    """Remove Identity nodes, rewiring their readers to the Identity's input.

    ONNX ``Identity`` (all opsets) copies its input. Exporters emit it to
    rename outputs and around initializers (torch's TorchScript exporter for
    tied weights). An Identity whose output is a graph output is removed only
    when its input can take over the output's name and type; it stays when the
    input is a graph input, an initializer, another graph output or an
    outer-scope value, since removing it would change the signature.
    """

    preserves = frozenset({"topo-sorted", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        removed = kept = 0
        for container in ir.graphs_and_functions(model):
            for node in list(container):
                if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
                    continue
                source, output = node.inputs[0], node.outputs[0]
                if source is None:
                    continue
                if ir.bypass(node, output, source):
                    container.remove(node, safe=True)
                    removed += 1
                else:
                    kept += 1
        return PassResult(modified=removed > 0, stats={"removed": removed, "kept": kept})

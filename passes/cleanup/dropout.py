"""eliminate-dropout: remove Dropout in inference graphs."""

from __future__ import annotations

import numpy as np

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass


def inference_mode(node: ir.Node, opset: int) -> bool:
    """True when the Dropout is certainly in inference mode (output == input).

    Opsets 1-6: attribute ``is_test`` (0 means training). Opsets 7-11: always
    inference. Opsets 12+: the optional third input ``training_mode`` must be
    absent or a constant False.
    """
    if opset < 7:
        attr = node.attributes.get("is_test")
        return attr is not None and attr.as_int() != 0
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return True
    flag = node.inputs[2]
    tensor = flag.const_value
    if tensor is None and flag.producer() is not None and flag.producer().op_type == "Constant":
        attr = flag.producer().attributes.get("value")
        tensor = attr.as_tensor() if attr is not None else None
    return tensor is not None and not bool(np.asarray(tensor.numpy()).any())


@register_pass("eliminate-dropout")
class EliminateDropout(Pass):
    """Remove inference-mode Dropout nodes, whose output equals their input.

    Per the ONNX ``Dropout`` spec, in inference mode (no ``training_mode``
    input or a constant False one, opset 12+; always in opsets 7-11;
    ``is_test=1`` before 7) the output is the input. A Dropout whose ``mask``
    output is read stays, as does one that must keep a graph output's name
    (see ``eliminate-identity``).
    """

    preserves = frozenset({"topo-sorted", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        removed = kept = 0
        for container in ir.graphs_and_functions(model):
            for node in list(container):
                if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
                    continue
                mask_used = len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output())
                if mask_used or not inference_mode(node, opset):
                    kept += 1
                    continue
                if ir.bypass(node, node.outputs[0], node.inputs[0]):
                    container.remove(node, safe=True)
                    removed += 1
                else:
                    kept += 1
        return PassResult(modified=removed > 0, stats={"removed": removed, "kept": kept})

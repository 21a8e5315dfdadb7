"""infer-shapes: ONNX shape inference merged into the IR."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass


@register_pass("infer-shapes")
class InferShapes(Pass):
    """Infer value types and shapes with ONNX shape inference (symbolic dims kept).

    Source: ``onnx.shape_inference.infer_shapes`` with data propagation, run by
    onnx-ir's ``ShapeInferencePass`` without serializing large weights. The
    graph's structure is not changed, so the pass never reports ``modified``.
    """

    establishes = frozenset({"shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        inferred = ir.infer_shapes(model)
        if inferred is not model:  # onnx-ir may return a new model object; copy types back
            by_name = {v.name: v for n in ir.all_nodes(inferred.graph) for v in n.outputs if v.name}
            for node in ir.all_nodes(model.graph):
                for value in node.outputs:
                    other = by_name.get(value.name)
                    if other is not None and other.type is not None:
                        value.type = value.type or other.type
                        if other.shape is not None and value.shape is None:
                            value.shape = other.shape
        return PassResult(modified=False)

"""infer-shapes: ONNX shape inference merged into the IR."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["InferShapes", "SHAPES_CURRENT", "ShapesCurrent", "shapes_current"]

SHAPES_CURRENT = "shapes-current"
"""Analysis (in ``ctx.analyses``): the values' shapes are what a new ONNX shape
inference would give. ``fold-shapes`` sets it after inferring and reads it
before inferring again. The pass manager drops it when a pass that does not
list it in ``preserves`` modifies the model; the passes that list it change
nothing a new inference could tell more from: ``dce`` (it removes dead nodes
only) and ``cse`` (it merges equal initializers; merged nodes clear it: two
equal nodes may carry two different unknown dims, ``unk__3`` and ``unk__4``,
that one node would make one)."""


class ShapesCurrent:
    """The :data:`SHAPES_CURRENT` analysis: ``ok`` is True while the shapes
    are those of the last inference, or of changes that cannot sharpen them."""

    __slots__ = ("ok",)

    def __init__(self) -> None:
        self.ok = False


def shapes_current(ctx: object, model: ir.Model) -> ShapesCurrent | None:
    """The model's :class:`ShapesCurrent` in ``ctx.analyses`` (created, not
    ok, when missing), or None when ``ctx`` keeps no analyses."""
    analyses = getattr(ctx, "analyses", None)
    if analyses is None:
        return None
    return analyses.get(SHAPES_CURRENT, model, lambda _model: ShapesCurrent())


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

"""infer-shapes: ONNX shape inference merged into the IR."""

from __future__ import annotations

from typing import Callable

from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["DATA_CARRIED", "InferShapes", "SHAPES_CURRENT", "ShapesCurrent", "mark_stale", "same_shape", "shapes_current"]

SHAPES_CURRENT = "shapes-current"
"""Analysis (in ``ctx.analyses``): the values' shapes are what a new ONNX shape
inference would give. ``fold-shapes`` sets it after inferring and reads it
before inferring again. The pass manager drops it when a pass that does not
list it in ``preserves`` modifies the model. The passes that list it clear it
(:func:`mark_stale`) when they make a change a new inference could tell more
from, and keep it otherwise: ``dce`` (it removes dead nodes only); ``cse``
(merged initializers keep it; merged nodes keep it when the two outputs
have the same dims up to their unknown ones, ``unk__3`` and ``unk__4``,
which it renames to one); ``eliminate-noops``, ``eliminate-reshape-pairs``,
``fold-bias``, ``fold-batchnorm`` and ``merge-sibling-matmuls`` keep it
when every reader they rewire reads a value of the same dtype and dims as
before (:func:`same_shape`, not a shape value whose contents inference
might carry further, unless it carried them already: a no-op in
:data:`DATA_CARRIED`) and they create no node whose shape inference has
not seen (an edit in place that inference would see the same, such as two
Unsqueezes made one, keeps it). ``eliminate-noops``, ``cse`` and
``eliminate-reshape-pairs`` compare the dims after writing the equalities
their rewrites prove into the shapes (a fresh ``unk__30`` on a no-op's
output renamed to its input's ``unk__26``, see
``unify_dims.DimEqualities``): the readers then see what a new inference
would give them, up to relations between unknown dims it would name anew."""


class ShapesCurrent:
    """The :data:`SHAPES_CURRENT` analysis: ``ok`` is True while the shapes
    are those of the last inference, or of changes that cannot sharpen them."""

    __slots__ = ("ok",)

    def __init__(self) -> None:
        self.ok = False


_SHAPE_VALUE_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32})


def _dims(value: ir.Value) -> tuple | None:
    shape = value.shape
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else getattr(d, "value", None) for d in shape)


DATA_CARRIED = frozenset({"Cast", "Concat", "Slice", "Squeeze", "Unsqueeze", "Add", "Sub", "Mul"})
"""Ops through which ONNX shape inference's data propagation carries a shape
value's contents to its output (checked on onnx 1.23: ``Shape(x) -> op ->
Reshape(x, .)`` infers the Reshape's output for these; not for Identity,
Reshape, Expand or Where). Bypassing such a no-op on a shape value shows its
readers contents inference gave them already."""


def same_shape(old: ir.Value, new: ir.Value, rename: Callable[[object], object] | None = None,
               carried: bool = False) -> bool:
    """Whether readers of ``old`` that now read ``new`` see to inference what
    they saw: both have shapes, the same dims (ints, and symbolic dims by
    name, each name mapped by ``rename`` first when given: the equalities a
    rewrite proved, see ``unify_dims.DimEqualities``) and dtype, and they are
    not shape values (int tensors of rank 0 or 1, whose contents inference
    may carry further) unless ``carried``: inference gave ``old`` the
    contents of ``new`` already (``old`` is the output of a no-op in
    :data:`DATA_CARRIED` reading ``new``, or of a node equal to ``new``'s)."""
    dims, other = _dims(old), _dims(new)
    if rename is not None and dims is not None and other is not None:
        dims, other = tuple(map(rename, dims)), tuple(map(rename, other))
    return (dims is not None and dims == other and old.dtype == new.dtype
            and (carried or not (old.dtype in _SHAPE_VALUE_TYPES and len(dims) <= 1)))


def mark_stale(ctx: object, model: ir.Model) -> None:
    """Clear the :data:`SHAPES_CURRENT` analysis (a change a new inference may tell more from)."""
    state = shapes_current(ctx, model)
    if state is not None:
        state.ok = False


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

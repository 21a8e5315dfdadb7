"""The shapes a fold-shapes walk made sharper, carried downstream by the
shape rules instead of a new ONNX shape inference.

A walk of ``fold-shapes`` that bypasses a Where guard or a flat Reshape, or
gives a Reshape a constant target that says more than its inferred output
shape, makes dims knowable that ONNX inference did not know: the Expand
behind the guard now reads ``[batch, 1, sequence, sequence]``, the Reshape's
output ``[batch, sequence, 4, 16]``. :func:`sharpen_downstream` recomputes
the dims of every value, in topological order, with
:class:`~graphopt.passes.folding.shape_dims.NativeDims` (the ONNX operator
specs' shape rules over ints and the graph inputs' dim names, strictly) and
writes each dim it knows where the IR's is unknown (None or ``unk__N``).
It refuses, changing nothing, when a node the walk touched, or one reading
a value it sharpened, has an op without a rule (inference could tell more
there), or when a rule contradicts an inferred dim. Otherwise the shapes
are what a new inference would give, up to the relations between unknown
dims that inference would name anew (``unk__N`` shared by two values),
which the rules do not track.
"""

from __future__ import annotations

from graphopt import ir
from graphopt.passes.folding.shape_dims import model_dims
from graphopt.passes.folding.shape_values import dims_of, known_dim

__all__ = ["sharpen_downstream"]


def sharpen_downstream(model: ir.Model, graphs: list[ir.Graph], touched: set[ir.Value]) -> set[ir.Value] | None:
    """Carry sharper dims downstream of ``touched`` by the shape rules.

    Args:
        model: the model (its default-domain opset selects the rules).
        graphs: the graphs to walk, each in topological order (the main
            graph first: subgraphs read outer values).
        touched: the values whose readers the walk changed: constants that
            replaced folded values, the values bypasses handed to the
            readers, new Reshape targets.

    Returns:
        The values given sharper dims, when every value downstream of
        ``touched`` whose dims are not all known got its dims from a rule;
        None when one did not, or a rule contradicts an inferred dim
        (nothing is written: the caller infers again).
    """
    prop, native = model_dims(model)
    prop.set_refine(native)
    cone = set(touched)
    saved: list[tuple[ir.Value, ir.Shape | None]] = []
    shapes: dict[tuple, ir.Shape] = {}
    for graph in graphs:
        for node in graph:
            sym = prop.visit(node)
            if sym is not None:
                prop.values[node.outputs[0]] = sym
            if not any(v is not None and v in cone for v in node.inputs):
                continue
            cone.update(node.outputs)
            for value in node.outputs:
                have = dims_of(value)
                if value.is_graph_output() or (have is not None and all(known_dim(d) is not None for d in have)):
                    continue  # a graph output keeps its declared shape
                if not native.covers(node):
                    return _undo(saved)  # no shape rule where dims may have changed: inference decides
                rule = native.by_rule(value)
                if rule is None:
                    continue  # the rule needs contents inference does not carry either
                merged = _merge(have, rule)
                if merged is None:
                    return _undo(saved)  # a rule contradicts inference: leave it to inference
                if merged != have:
                    saved.append((value, value.shape))
                    shape = shapes.get(merged)
                    if shape is None:  # frozen and shared, as inferred shapes are
                        shape = shapes[merged] = ir.Shape(list(merged), frozen=True)
                    value.shape = shape  # read by the rules of the nodes below
    return {value for value, _ in saved}


def _undo(saved: list[tuple[ir.Value, ir.Shape | None]]) -> None:
    """Give the values their shapes back; None (for the caller to return)."""
    for value, shape in reversed(saved):
        value.shape = shape


def _merge(have: tuple | None, rule: tuple) -> tuple | None:
    """The IR's dims with each unknown one (None, ``unk__N``) taken from the
    rule where it knows it; None when the ranks differ or they disagree on
    a known dim."""
    if have is None:
        return tuple(rule)
    if len(have) != len(rule):
        return None
    out = []
    for h, r in zip(have, rule):
        if known_dim(h) is None:
            out.append(r if r is not None else h)
        elif r is not None and r != h:
            return None
        else:
            out.append(h)
    return tuple(out)

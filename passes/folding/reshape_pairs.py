"""eliminate-reshape-pairs: remove a Reshape and the Reshape that undoes it
around a region of elementwise nodes."""

from __future__ import annotations

import logging

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, mark_stale, same_shape
from graphopt.passes.cleanup.unify_dims import DimEqualities
from graphopt.passes.folding.batchnorm import std_op
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["EliminateReshapePairs"]

log = logging.getLogger(__name__)

ELEMENTWISE = frozenset({
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sigmoid", "Relu", "Erf", "Sin", "Cos",
    "Floor", "Ceil", "Round", "Sign", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "LeakyRelu",
    "Elu", "Selu", "Celu", "Gelu", "Mish", "ThresholdedRelu", "Cast", "Identity", "Not",
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Clip",
})
"""Ops whose output element i depends only on input element i (constant
operands aside) and whose output shape is the input's: they commute with a
Reshape (ONNX operator specs)."""

_MAX_REGION = 64


def _target(reshape: ir.Node) -> list[int] | None:
    tensor = ir.const_tensor(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    if tensor is None or len(tensor.shape) != 1:
        return None
    return [int(v) for v in tensor.numpy().reshape(-1)]


def _restores(target: list[int] | None, shape: ir.Shape | None) -> bool:
    """True when reshaping any tensor with ``shape``'s element count to
    ``target`` gives ``shape``: ranks equal, one -1, no 0, every other entry
    the same static dim (the -1 then resolves to the remaining dim)."""
    if target is None or shape is None or len(target) != len(shape) or target.count(-1) != 1 or 0 in target:
        return False
    return all(t == -1 or (isinstance(d, int) and d == t) for t, d in zip(target, shape))


def _region(r2: ir.Node) -> tuple[ir.Node, list[ir.Node]] | None:
    """``(R1, nodes)``: the Reshape R1 whose output feeds, through only
    elementwise ``nodes`` (size-1 constants aside), the data input of ``r2``;
    None when there is none or a value inside is read outside it."""
    graph, start = r2.graph, r2.inputs[0]
    nodes: list[ir.Node] = []
    seen: set[ir.Value] = set()
    stack = [start]
    r1 = None
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        producer = value.producer()
        if producer is None or producer.graph is not graph:
            return None
        if std_op(producer, "Reshape"):
            if r1 not in (None, producer):
                return None
            r1 = producer
            continue
        if not std_op(producer, *ELEMENTWISE) or len(producer.outputs) != 1 or len(nodes) >= _MAX_REGION:
            return None
        nodes.append(producer)
        for operand in producer.inputs:
            if operand is None:
                continue
            tensor = ir.const_tensor(operand)
            if tensor is not None:
                if tensor.size != 1 or len(tensor.shape) > 1:
                    return None
                continue
            stack.append(operand)
    if r1 is None or not nodes:
        return None
    inside = set(nodes) | {r2}
    for node in nodes:
        out = node.outputs[0]
        if out.is_graph_output() or any(u.node not in inside for u in out.uses()):
            return None
    return r1, nodes


def _rewrite(r2: ir.Node, equal: DimEqualities) -> bool | None:
    """Remove the pair around ``r2``'s region: None when it stays, else
    whether the rewrite is neutral to shape inference (``r2``'s readers see
    the dims they saw, up to the equalities recorded in ``equal``)."""
    if len(r2.inputs) < 2 or r2.graph is None:
        return None
    found = _region(r2)
    if found is None:
        return None
    r1, nodes = found
    x = r1.inputs[0]
    if x is None or x.shape is None or len(x.shape) < 1 or not _restores(_target(r2), x.shape):
        return None
    old, source = r2.outputs[0], r2.inputs[0]
    if not ir.bypass(r2, old, source):
        return None
    graph = r2.graph
    graph.remove(r2, safe=True)
    region = set(nodes)
    for use in list(r1.outputs[0].uses()):
        if use.node in region:
            use.node.replace_input_with(use.idx, x)
    for node in nodes:
        node.outputs[0].shape = x.shape if x.shape.frozen else ir.Shape(list(x.shape))
    if not r1.outputs[0].uses() and not r1.outputs[0].is_graph_output():
        graph.remove(r1, safe=True)
    # r2's readers read the region's output, now of x's shape: what r2's output was, up to its unknown dims
    return equal.equate(old, source) and same_shape(old, source, equal.find)


@register_pass("eliminate-reshape-pairs")
class EliminateReshapePairs(Pass):
    """Remove ``Reshape(f(Reshape(x, s1)), s2)`` when s2 restores x's shape and f is elementwise.

    ``f`` is a region of elementwise nodes (``ELEMENTWISE``: unary
    activations, Cast, and Add/Sub/Mul/Div/Pow/Max/Min/Clip whose other
    operands are constants of one element and rank at most 1, so nothing
    broadcasts) fed only by the first Reshape's output. An elementwise op
    computes element i from element i, so it commutes with a Reshape, which
    keeps the row-major order of the elements (ONNX spec of Reshape); the
    pair then cancels when ``s2`` gives back ``x``'s shape. That is proved
    from ``s2`` alone, as the element count is unchanged: ``s2`` is a
    constant of ``x``'s rank holding one -1, no 0, and ``x``'s static dim at
    every other position (``[-1, 256]`` after ``[batch, seq, 256]`` of a
    ``[batch*seq, 256]`` Gemm output, as dynamo exports write a GPT-2 MLP).
    The region then reads ``x`` and takes its shape; the second Reshape is
    removed, the first too when nothing else reads it. The second
    Reshape's readers then see x's dims where they saw its output's: the
    unknown dims of that output are renamed to x's (``DimEqualities``),
    and the ``shapes-current`` analysis survives when nothing else differs.
    Exact: no value
    changes. A value of the region read outside it, or a region output that
    is a graph output which cannot take the name, keeps everything.
    Prior art: onnxsim's output on dynamo GPT-2 exports (the same pair
    removed around the tanh-GELU), onnxscript's rewriter (reshape
    elimination rules).
    """

    requires = frozenset({"topo-sorted", "shapes-inferred"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})  # cleared by the pass when due

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        removed = 0
        stale = False
        equal = DimEqualities()
        graphs = ir.all_graphs(model)
        for graph in graphs:
            for node in list(graph):
                if std_op(node, "Reshape") and node.graph is graph:
                    neutral = _rewrite(node, equal)
                    if neutral is not None:
                        removed += 1
                        stale = stale or not neutral
        equal.apply(graphs)
        if stale:
            mark_stale(ctx, model)
        return PassResult(modified=removed > 0, stats={"pairs": removed})

"""The layers ``factorize`` can rewrite, and the rewrite itself.

A layer is a node with a constant 2-D float weight, seen as ``W [K, N]``
(input channels x output channels):

- ``MatMul(x [..., K], W [K, N])`` (any rank of x) becomes
  ``MatMul(MatMul(x, A [K, r]), B [r, N])``.
- ``Gemm(x, W, C)`` (``transA``/``transB``, ``alpha``/``beta``) becomes
  ``Gemm(Gemm(x, A; transA, transB), B, C; alpha, beta, transB)``: the bias
  and the scales stay on the second; under ``transB=1`` both factors are
  stored transposed (``[r, K]``, ``[N, r]``) as the original was.
- a 1x1 ``Conv(x [N, K, H, W], W [N_out, K, 1, 1], b)`` with ``group=1``
  becomes ``Conv(Conv(x, A [r, K, 1, 1]; strides, pads), B [N_out, r, 1, 1], b)``
  (padding zeros through the first stay zeros, so the bias lands as before).

Both new nodes are of the original's kind, so ``O2`` (bias fusion, Gemm) and
``graphopt quantize`` (per-channel INT8 on each factor) treat them as any
other MatMul / Gemm / Conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt import ir

__all__ = ["Layer", "find_layers", "rewrite"]

_FLOATS = (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _std(node: ir.Node, *ops: str) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in ops


def _int_attr(node: ir.Node, name: str, default: int = 0) -> int:
    return node.attributes[name].as_int() if name in node.attributes else default


@dataclass
class Layer:
    """One factorizable node.

    Attributes:
        node: the MatMul, Gemm or Conv.
        name: a stable label for reports (the node's name, else its output's).
        kind: ``"MatMul"``, ``"Gemm"`` or ``"Conv"``.
        k, n: input and output channels of ``W [K, N]``.
        axis: the channel axis of the input ``x`` (-1 for MatMul, 1 for Conv;
            Gemm: 1, or 0 under ``transA``).
        dtype: the weight's ONNX dtype.
    """

    node: ir.Node
    name: str
    kind: str
    k: int
    n: int
    axis: int
    dtype: ir.DataType

    @property
    def input(self) -> ir.Value:
        """The activation ``x`` the layer multiplies."""
        return self.node.inputs[0]

    def weight(self) -> np.ndarray:
        """``W`` as ``[K, N]`` float64 (a Gemm's ``transB`` and a Conv's ``[N, K, 1, 1]`` undone)."""
        w = np.asarray(ir.const_tensor(self.node.inputs[1]).numpy(), dtype=np.float64)
        if self.kind == "Conv":
            return w[:, :, 0, 0].T
        if self.kind == "Gemm" and _int_attr(self.node, "transB"):
            return w.T
        return w

    @property
    def params(self) -> int:
        """``K * N``, the weight's elements."""
        return self.k * self.n


def _layer(node: ir.Node) -> Layer | str:
    """The :class:`Layer` of ``node``, or why it is not one."""
    if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
        return "missing inputs"
    if ir.is_constant(node.inputs[0]):
        return "both inputs are constant"
    tensor = ir.const_tensor(node.inputs[1])
    if tensor is None:
        return "the weight is not a constant"
    if tensor.dtype not in _FLOATS:
        return f"the weight is {tensor.dtype.name}, not float"
    shape = tuple(int(d) for d in tensor.shape)
    label = node.name or (node.outputs[0].name or node.op_type)
    if node.op_type == "MatMul":
        if len(shape) != 2:
            return f"the weight has rank {len(shape)}, not 2"
        return Layer(node, label, "MatMul", shape[0], shape[1], -1, tensor.dtype)
    if node.op_type == "Gemm":
        k, n = (shape[1], shape[0]) if _int_attr(node, "transB") else shape
        return Layer(node, label, "Gemm", k, n, 0 if _int_attr(node, "transA") else 1, tensor.dtype)
    if len(shape) != 4 or shape[2:] != (1, 1):
        return f"the Conv kernel is {shape[2:]}, not 1x1"
    if _int_attr(node, "group", 1) != 1:
        return "a grouped Conv"
    if "dilations" in node.attributes and any(d != 1 for d in node.attributes["dilations"].as_ints()):
        return "a dilated Conv"
    return Layer(node, label, "Conv", shape[1], shape[0], 1, tensor.dtype)


def find_layers(graph: ir.Graph, skipped: dict[str, str] | None = None) -> list[Layer]:
    """The factorizable MatMul / Gemm / 1x1 Conv nodes of ``graph`` (main graph only), in node order.

    Args:
        graph: the graph.
        skipped: filled with ``{node label: reason}`` for candidates that are not factorizable.
    """
    found = []
    for node in graph:
        if not _std(node, "MatMul", "Gemm", "Conv"):
            continue
        layer = _layer(node)
        if isinstance(layer, str):
            if skipped is not None:
                skipped[node.name or node.op_type] = layer
            continue
        found.append(layer)
    return found


def rewrite(graph: ir.Graph, layer: Layer, a: np.ndarray, b: np.ndarray, names: set[str]) -> None:
    """Replace ``layer.node`` by the two products ``x A`` then ``(x A) B`` in place.

    Args:
        graph: the layer's graph.
        layer: the layer.
        a: ``[K, r]``; b: ``[r, N]`` (float64; stored in the weight's dtype).
        names: the graph's taken names (:func:`graphopt.ir.value_names`), updated.
    """
    node = layer.node
    dtype = layer.dtype.numpy()
    base = node.inputs[1].name or "w"
    attrs = {k: v for k, v in node.attributes.items()}
    if layer.kind == "MatMul":
        av, bv = a, b
        first_attrs: list[ir.Attr] = []
        second_attrs: list[ir.Attr] = []
    elif layer.kind == "Gemm":
        trans_b = _int_attr(node, "transB")
        av, bv = (a.T, b.T) if trans_b else (a, b)
        first_attrs = [ir.Attr(k, attrs[k].type, attrs[k].value) for k in ("transA", "transB") if k in attrs]
        second_attrs = [ir.Attr(k, attrs[k].type, attrs[k].value) for k in ("alpha", "beta", "transB") if k in attrs]
    else:
        av, bv = a.T[:, :, None, None], b.T[:, :, None, None]
        first_attrs = [ir.Attr(k, v.type, v.value) for k, v in attrs.items() if k != "group"]
        second_attrs = [ir.Attr(k, v.type, v.value) for k, v in attrs.items() if k in ("dilations", "group")]
    wa = ir.add_initializer(graph, np.ascontiguousarray(av.astype(dtype)), f"{base}_lowrank_a", names)
    wb = ir.add_initializer(graph, np.ascontiguousarray(bv.astype(dtype)), f"{base}_lowrank_b", names)
    first = ir.Node("", layer.kind, [node.inputs[0], wa], first_attrs, num_outputs=1,
                    name=f"{node.name}_lowrank_a" if node.name else None)
    rest = [v for v in node.inputs[2:]]
    second = ir.Node("", layer.kind, [first.outputs[0], wb, *rest], second_attrs, num_outputs=1,
                     name=f"{node.name}_lowrank_b" if node.name else None)
    hidden = first.outputs[0]
    hidden.name = ir.unique_name(f"{base}_lowrank_h", names)
    hidden.type = node.outputs[0].type
    out = node.outputs[0]
    if out.shape is not None:
        dims = list(out.shape)
        dims[-1 if layer.kind == "MatMul" else 1] = a.shape[1]
        hidden.shape = ir.Shape(dims)
    graph.insert_before(node, [first, second])
    second.outputs[0].type, second.outputs[0].shape = out.type, out.shape
    ir.bypass(node, out, second.outputs[0])
    weight = node.inputs[1]
    graph.remove(node, safe=True)
    if weight.uses() or weight.is_graph_output():
        return
    if weight.is_initializer() and weight.name in graph.initializers and not weight.is_graph_input():
        del graph.initializers[weight.name]
    producer = weight.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx") \
            and producer.graph is graph:
        # A weight held by a Constant node (PaddleOCR's exports keep every weight so): the node is dead now; left
        # in place it would keep the unfactored weight in the saved model.
        graph.remove(producer, safe=True)

"""Gemm with a constant weight as MatMul (+ Add) before QDQ for onnxruntime.

onnxruntime 1.32's CPU QDQ transformer turns ``DQ(x), DQ(W) -> MatMul`` into ``MatMulIntegerToFloat`` (its bias
Add folded in), but leaves ``DQ(x), DQ(W) -> Gemm(bias)`` with a float output as it is: the Gemm runs in float
behind weight DequantizeLinear nodes executed on every run. On torch.export's GPT-2 (``addmm``: 48 Gemm with
bias) the INT8 model ran 1.59x slower than fp32 (DequantizeLinear 119 ms of 269 ms), per-channel or per-tensor.
So for target ort, :func:`unfuse_gemms` rewrites each such Gemm as ``MatMul(A, B)`` (``B`` transposed into a new
initializer when ``transB``) followed by ``Add(C)``, the form the TorchScript export already has, before the
sites are placed. (O1's ``fold-bias`` makes the opposite rewrite, for fp32 onnxruntime's Gemm kernel.)
"""

from __future__ import annotations

import numpy as np

from graphopt import ir

__all__ = ["unfuse_gemms"]


def _attr(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return default if a is None else (a.as_float() if name in ("alpha", "beta") else a.as_int())


def unfuse_gemms(graph: ir.Graph, min_elements: int = 0) -> int:
    """Rewrite every ``Gemm(A, B, [C])`` of ``graph`` (not its subgraphs) with ``transA`` 0, ``alpha`` and
    ``beta`` 1, a constant 2-D float ``B`` and a constant ``C`` (or none) as ``MatMul(A, B')`` (``B'``: ``B`` or
    its transpose, ``[K, N]``) and ``Add(., C)``; the Add's output takes the Gemm's output (name, shape, dtype,
    its place among the graph outputs); the MatMul keeps the Gemm's name (``--exclude-nodes`` globs still match).
    Gemms whose ``B`` has fewer than ``min_elements`` elements (left float by the placement) and the others
    stay.

    Returns:
        The number of Gemms rewritten.
    """
    count = 0
    for node in list(graph):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            continue
        b = ir.const_array(node.inputs[1])
        c_value = node.inputs[2] if len(node.inputs) > 2 else None
        if b is None or b.ndim != 2 or b.dtype.kind != "f" or b.size < min_elements:
            continue
        if c_value is not None and ir.const_array(c_value) is None:
            continue
        weight = np.ascontiguousarray(b.T if _attr(node, "transB", 0) else b)
        new_b = ir.add_initializer(graph, weight, f"{node.inputs[1].name}_kn")
        matmul = ir.Node("", "MatMul", [node.inputs[0], new_b], num_outputs=1, name=node.name)
        graph.insert_before(node, matmul)
        last = matmul
        if c_value is not None:
            last = ir.Node("", "Add", [matmul.outputs[0], c_value], num_outputs=1,
                           name=f"{node.name}_bias" if node.name else None)
            graph.insert_before(node, last)
        out, old = last.outputs[0], node.outputs[0]
        out.shape, out.type = old.shape, old.type
        if c_value is not None:
            matmul.outputs[0].type = old.type
        if not ir.bypass(node, old, out):  # cannot stand in for the output: undo
            for extra in ([last] if last is not matmul else []) + [matmul]:
                graph.remove(extra, safe=True)
            continue
        graph.remove(node, safe=True)
        count += 1
    return count

"""Model statistics for ``graphopt inspect`` and the optimize report: op
histogram, parameter count and bytes, signature, and a FLOPs estimate."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphopt import ir

__all__ = ["ModelStats", "model_stats", "op_histogram", "flops", "signature"]


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Node count per operator (``domain::Op`` outside the default domain),
    main graph and subgraphs, sorted by count then name."""
    counts = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in ir.all_nodes(model.graph)
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _dims(value: ir.Value) -> list[str | int]:
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else (d.value if d.value is not None else "?") for d in value.shape]


def signature(model: ir.Model) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs: name, dtype (ONNX name) and dims (int or symbolic name,
    ``?`` when unnamed). Initializers listed as inputs are left out."""

    def describe(v: ir.Value) -> dict[str, Any]:
        return {"name": v.name, "dtype": v.dtype.name.lower() if v.dtype is not None else "?",
                "dims": _dims(v) if v.shape is not None else None}

    return {
        "inputs": [describe(v) for v in model.graph.inputs if not v.is_initializer()],
        "outputs": [describe(v) for v in model.graph.outputs],
    }


@dataclass
class ModelStats:
    """Counts describing a model.

    Attributes:
        nodes: nodes, subgraphs included.
        initializers: initializer tensors (all graphs).
        parameters: elements in initializers.
        bytes: bytes of initializers.
        ops: op histogram.
        opsets: domain -> version.
        flops: estimated floating-point operations of MatMul/Gemm/Conv for one
            inference at the bound dims (multiply-add = 2), or None.
        flops_unknown: MatMul/Gemm/Conv nodes whose shapes stayed unknown.
        flops_approximate: such nodes with a data-dependent dim taken as 1.
    """

    nodes: int
    initializers: int
    parameters: int
    bytes: int
    ops: dict[str, int]
    opsets: dict[str, int]
    flops: int | None = None
    flops_unknown: int = 0
    flops_approximate: int = 0
    signature: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_stats(model: ir.Model, *, with_flops: bool = False, dims: dict[str, int] | None = None) -> ModelStats:
    """Statistics of ``model`` (weights are not read: sizes come from shapes).

    Args:
        model: the IR model.
        with_flops: also estimate FLOPs (runs ONNX shape inference on a copy).
        dims: symbolic dim bindings for the FLOPs estimate (defaults as in
            ``graphopt verify``: batch 1, sequence 16, ...).
    """
    inits = [v for g in ir.all_graphs(model) for v in g.initializers.values()]
    params = sum(int(np.prod(v.const_value.shape.numpy())) for v in inits if v.const_value is not None)
    nbytes = sum(v.const_value.nbytes for v in inits if v.const_value is not None)
    stats = ModelStats(
        nodes=sum(1 for _ in ir.all_nodes(model.graph)), initializers=len(inits), parameters=params,
        bytes=nbytes, ops=op_histogram(model),
        opsets={(k or "ai.onnx"): v for k, v in sorted(model.opset_imports.items())},
        signature=signature(model),
    )
    if with_flops:
        stats.flops, stats.flops_unknown, stats.flops_approximate = flops(model, dims)
    return stats


def _static_graph(model: ir.Model, dims: dict[str, int] | None) -> onnx.ModelProto:
    """The model's proto without weight data, graph input dims bound to ints,
    after ONNX shape inference with data propagation."""
    from graphopt.verify.inputs import default_dim

    proto = ir.to_proto(model, inline_external=False)
    del proto.graph.value_info[:]  # stale symbolic dims would block the bound ones
    for value in proto.graph.input:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param") or not d.HasField("dim_value"):
                name = d.dim_param
                size = (dims or {}).get(name, default_dim(name) if name else 1)
                d.Clear()
                d.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - an estimate must not fail the command
        return proto


def flops(model: ir.Model, dims: dict[str, int] | None = None) -> tuple[int, int, int]:
    """Estimate FLOPs of MatMul, Gemm and Conv (main graph), counting a
    multiply-add as 2 FLOPs.

    MatMul ``[..., M, K] x [..., K, N]``: ``2*prod(out)*K``; Gemm: ``2*M*N*K``;
    Conv: ``2*prod(out)*(C_in/group)*prod(kernel)``.

    Dims that shape inference cannot resolve after binding the inputs (data
    dependent, ``unk__N``) are taken as 1 and the node counted as approximate.

    Returns:
        (flops, nodes whose shapes could not be inferred, nodes with a dim taken as 1).
    """
    proto = _static_graph(model, dims)
    shapes: dict[str, list[int]] = {}
    unresolved: set[str] = set()
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            if not all(d.HasField("dim_value") for d in t.shape.dim):
                unresolved.add(vi.name)
    for init in proto.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = unknown = approximate = 0
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a = shapes.get(node.input[0])
        w = shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if a is None or w is None or out is None:
            unknown += 1
            continue
        if unresolved & {node.input[0], node.input[1], node.output[0]}:
            approximate += 1
        if node.op_type == "MatMul":
            k = a[-1] if len(a) > 0 else 1
            total += 2 * int(np.prod(out)) * k
        elif node.op_type == "Gemm":
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            total += 2 * int(np.prod(out)) * k
        else:
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    return total, unknown, approximate

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
        parameters: elements in initializers, and in the floating-point tensors of ``Constant`` nodes (exporters
            such as Paddle2ONNX keep every weight in one: PaddleOCR's models have no initializer).
        bytes: bytes of those tensors.
        ops: op histogram.
        opsets: domain -> version.
        constant_weights: ``Constant`` nodes whose floating-point tensor ``parameters`` counts.
        flops: estimated floating-point operations of MatMul/Gemm/Conv/ConvTranspose for one
            inference at the bound dims (multiply-add = 2), or None.
        flops_unknown: MatMul/Gemm/Conv/ConvTranspose nodes whose shapes stayed unknown.
        flops_approximate: such nodes with a data-dependent dim taken as 1.
    """

    nodes: int
    initializers: int
    parameters: int
    bytes: int
    ops: dict[str, int]
    opsets: dict[str, int]
    constant_weights: int = 0
    flops: int | None = None
    flops_unknown: int = 0
    flops_approximate: int = 0
    signature: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def model_stats(model: ir.Model, *, with_flops: bool = False, dims: dict[str, int] | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None, measure: bool = False) -> ModelStats:
    """Statistics of ``model`` (weights are not read: sizes come from shapes).

    Args:
        model: the IR model.
        with_flops: also estimate FLOPs (runs ONNX shape inference on a copy).
        dims: symbolic dim bindings for the FLOPs estimate (defaults as in
            ``graphopt verify``: batch 1, sequence 16, ...).
        shapes: whole input shapes for the FLOPs estimate (input name -> dims).
        measure: measure in onnxruntime the MatMul/Gemm/Conv/ConvTranspose shapes inference
            leaves unknown (see :func:`flops`).
    """
    inits = [v for g in ir.all_graphs(model) for v in g.initializers.values()]
    params = sum(int(np.prod(v.const_value.shape.numpy())) for v in inits if v.const_value is not None)
    nbytes = sum(v.const_value.nbytes for v in inits if v.const_value is not None)
    constants = _constant_weights(model)
    stats = ModelStats(
        nodes=sum(1 for _ in ir.all_nodes(model.graph)), initializers=len(inits),
        parameters=params + sum(int(np.prod(t.shape.numpy())) for t in constants),
        bytes=nbytes + sum(t.nbytes for t in constants), ops=op_histogram(model),
        opsets={(k or "ai.onnx"): v for k, v in sorted(model.opset_imports.items())},
        constant_weights=len(constants), signature=signature(model),
    )
    if with_flops:
        stats.flops, stats.flops_unknown, stats.flops_approximate = flops(model, dims, shapes=shapes,
                                                                          measure=measure)
    return stats


def _constant_weights(model: ir.Model) -> list:
    """The floating-point tensors of the ``Constant`` nodes (``value`` attribute) of every graph."""
    out = []
    for node in ir.all_nodes(model.graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        attr = node.attributes.get("value")
        tensor = attr.value if attr is not None else None
        if tensor is not None and tensor.dtype.is_floating_point():
            out.append(tensor)
    return out


def _static_graph(model: ir.Model, dims: dict[str, int] | None,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> onnx.ModelProto:
    """The model's proto without weight data, graph input dims bound to ints
    (``shapes``: an input's whole shape; else ``dims`` by name, else the
    defaults of ``graphopt verify``), after ONNX shape inference with data
    propagation."""
    from graphopt.verify.inputs import default_dim

    proto = ir.to_proto(model, inline_external=False)
    del proto.graph.value_info[:]  # stale symbolic dims would block the bound ones
    for value in proto.graph.input:
        whole = (shapes or {}).get(value.name)
        for axis, d in enumerate(value.type.tensor_type.shape.dim):
            if whole is not None and axis < len(whole):
                d.Clear()
                d.dim_value = int(whole[axis])
            elif d.HasField("dim_param") or not d.HasField("dim_value"):
                name = d.dim_param
                size = (dims or {}).get(name, default_dim(name) if name else 1)
                d.Clear()
                d.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - an estimate must not fail the command
        return proto


_COUNTED = ("MatMul", "Gemm", "Conv", "ConvTranspose")
"""The ops whose FLOPs :func:`flops` counts."""


def flops(model: ir.Model, dims: dict[str, int] | None = None, *, shapes: dict[str, tuple[int, ...]] | None = None,
          measure: bool = False) -> tuple[int, int, int]:
    """Estimate FLOPs of MatMul, Gemm, Conv and ConvTranspose (main graph),
    counting a multiply-add as 2 FLOPs.

    MatMul ``[..., M, K] x [..., K, N]``: ``2*prod(out)*K``; Gemm: ``2*M*N*K``;
    Conv: ``2*prod(out)*(C_in/group)*prod(kernel)``; ConvTranspose (weight
    ``[C_in, C_out/group, k...]``, every input position scattered through the
    kernel, ONNX ConvTranspose spec): ``2*prod(in)*(C_out/group)*prod(kernel)``.

    Graph input dims: ``shapes`` (input name -> whole shape, for dims the
    model leaves unnamed), else ``dims`` by name, else ``graphopt verify``'s
    defaults (batch 1, sequence 16, ...). Dims that shape inference cannot
    resolve after binding the inputs (data dependent, ``unk__N``) are taken
    as 1 and the node counted as approximate; with ``measure`` those nodes'
    shapes are measured instead in one onnxruntime run on generated inputs
    of the bound shapes (:func:`graphopt.analysis.measured.measure_shapes`;
    when the run fails, a warning and the estimate as without).

    Returns:
        (flops, nodes whose shapes could not be inferred, nodes with a dim taken as 1).
    """
    proto = _static_graph(model, dims, shapes)
    shapes_of: dict[str, list[int]] = {}
    unresolved: set[str] = set()
    for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes_of[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
            if not all(d.HasField("dim_value") for d in t.shape.dim):
                unresolved.add(vi.name)
    for init in proto.graph.initializer:
        shapes_of[init.name] = list(init.dims)
    if measure:
        _measure_unknown(model, proto, shapes_of, unresolved)
    total = unknown = approximate = 0
    for node in proto.graph.node:
        if node.op_type not in _COUNTED:
            continue
        a = shapes_of.get(node.input[0])
        w = shapes_of.get(node.input[1])
        out = shapes_of.get(node.output[0])
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
        elif node.op_type == "ConvTranspose":
            total += 2 * int(np.prod(a)) * int(np.prod(w[1:]))
        else:
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    return total, unknown, approximate


def _measure_unknown(model: ir.Model, proto: onnx.ModelProto, shapes: dict[str, list[int]],
                     unresolved: set[str]) -> None:
    """Fill ``shapes`` (and clear ``unresolved``) for the counted ops' operands inference left unknown, from
    one onnxruntime run at ``proto``'s bound input shapes."""
    import logging

    from graphopt.analysis.measured import measure_shapes
    from graphopt.verify.inputs import generate_inputs

    wanted = {name for node in proto.graph.node if node.op_type in _COUNTED
              for name in (node.input[0], node.input[1], node.output[0])
              if name not in shapes or name in unresolved}
    produced = {o for node in proto.graph.node for o in node.output}
    wanted &= produced
    if not wanted:
        return
    try:
        feed = generate_inputs(proto)
        measured = measure_shapes(model, feed, names=wanted)
    except Exception as e:  # noqa: BLE001 - an estimate must not fail the command
        logging.getLogger(__name__).warning("measuring MatMul/Gemm/Conv shapes in onnxruntime failed (%s); the "
                                            "FLOPs count the nodes shape inference resolved", str(e)[:200])
        return
    for name in wanted & set(measured):
        shapes[name] = list(measured[name])
        unresolved.discard(name)

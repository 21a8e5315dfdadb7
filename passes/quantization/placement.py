"""Where QuantizeLinear/DequantizeLinear pairs go, by target.

A :class:`Site` is one node whose inputs (and for some, its output) are
quantized. The placement follows what each runtime fuses:

* ``ort`` (onnxruntime's QDQ transformers, ``qdq_selectors.cc`` /
  ``qdq_actions.cc``): ``DQ(x), DQ(W) -> MatMul`` with a float output becomes
  ``MatMulIntegerToFloat``; ``DQ(x), DQ(W), DQ(bias int32) -> Conv -> Q``
  becomes ``QLinearConv``, so a Conv's output is quantized too (after a
  following Relu/Clip, which onnxruntime drops before a Q whose range starts
  at 0); a Gemm with a constant B and a float output is NOT fused by
  onnxruntime 1.32's CPU transformer (it runs float behind DequantizeLinear),
  so the ``qdq`` pass first rewrites it as MatMul + Add
  (:mod:`graphopt.passes.quantization.gemm`); com.microsoft ``Attention``
  becomes ``QAttention`` (the quantized attention kernel onnxruntime's own
  dynamic quantizer emits), see :mod:`graphopt.passes.quantization.insert`.
* ``tensorrt`` (NVIDIA, "Explicit Quantization" in the TensorRT developer
  guide, and its Q/DQ placement recommendations): symmetric int8 Q/DQ on the
  inputs of Conv/MatMul/Gemm only, plus the residual input of an Add that
  follows a quantized Conv (so TensorRT fuses the Add into the Conv); small
  GEMMs and GEMVs stay float (int8 does not pay for them).
* ``onnx``: the standard QDQ form of the ONNX spec: the ort placement without
  contrib operators.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

from graphopt import ir

__all__ = ["Site", "Plan", "plan_sites", "QUANTIZABLE_OPS"]

QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm", "Attention")
"""Op types a site can be (``Attention`` is com.microsoft's, target ort only)."""

_ACTIVATIONS_AFTER_CONV = ("Relu", "Clip")


@dataclass
class Site:
    """One quantized node.

    Attributes:
        node: the node (Conv, MatMul, Gemm, or com.microsoft Attention).
        activations: input indices quantized as activations (calibrated ranges).
        weight: ``(input index, channel axis)`` of the constant weight, or None.
        bias: input index of a bias quantized to int32 (Conv), or None.
        output: the value quantized after the node (a Conv's output, or its
            Relu/Clip's), or None.
    """

    node: ir.Node
    activations: tuple[int, ...]
    weight: tuple[int, int | None] | None = None
    bias: int | None = None
    output: ir.Value | None = None

    @property
    def name(self) -> str:
        """The node's name, or its op type and first output's name when unnamed."""
        return self.node.name or f"{self.node.op_type}:{self.node.outputs[0].name}"


@dataclass
class Plan:
    """The sites of a model and why other candidates were skipped.

    Attributes:
        sites: in graph order.
        residuals: Add inputs quantized for TensorRT's Conv+Add fusion, as
            ``(Add node, input index)``.
        skipped: reason -> count, e.g. ``{"activation weight": 12}``.
    """

    sites: list[Site] = field(default_factory=list)
    residuals: list[tuple[ir.Node, int]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and ir.const_tensor(value) is not None


def _float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _static_dims(value: ir.Value) -> tuple[int, ...] | None:
    shape = value.shape
    if shape is None:
        return None
    dims = tuple(d if isinstance(d, int) else -1 for d in shape)
    return dims


def _excluded(node: ir.Node, exclude_ops: tuple[str, ...], exclude_nodes: tuple[str, ...]) -> bool:
    if node.op_type in exclude_ops:
        return True
    return any(fnmatch.fnmatchcase(node.name or "", pattern) for pattern in exclude_nodes)


def _conv_output(node: ir.Node) -> ir.Value:
    """The Conv's output, or the output of a Relu/Clip that is its only reader."""
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) == 1 and not out.is_graph_output():
        reader = uses[0].node
        if reader.domain in ("", "ai.onnx") and reader.op_type in _ACTIVATIONS_AFTER_CONV and uses[0].idx == 0:
            if reader.op_type == "Relu" or _clip_from_zero(reader):
                return reader.outputs[0]
    return out


def _clip_from_zero(node: ir.Node) -> bool:
    lo = ir.const_tensor(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return lo is not None and float(lo.numpy().reshape(-1)[0]) == 0.0


def _matmul_site(node: ir.Node, target: str, min_gemm: int, skipped: Counter) -> Site | None:
    a, b = node.inputs[0], node.inputs[1]
    if not _is_const(b):
        skipped["activation weight"] += 1
        return None
    if not (_float(a) and _float(b)) or b.shape is None or len(b.shape) != 2:
        skipped["not float32 or weight not 2-D"] += 1
        return None
    k, n = (int(d) for d in b.shape)
    if target == "tensorrt":
        dims = _static_dims(a)
        rows = 1
        for d in (dims or ())[:-1]:
            rows = rows * d if d > 0 else -1
        if n == 1 or rows == 1 or k * n < min_gemm:
            skipped["small GEMM or GEMV"] += 1
            return None
    elif k * n < min_gemm:
        skipped["small GEMM or GEMV"] += 1
        return None
    return Site(node, (0,), (1, 1))


def _gemm_site(node: ir.Node, target: str, min_gemm: int, skipped: Counter) -> Site | None:
    attrs = node.attributes
    trans_a = attrs["transA"].as_int() if "transA" in attrs else 0
    trans_b = attrs["transB"].as_int() if "transB" in attrs else 0
    b = node.inputs[1]
    if trans_a or not _is_const(b) or not _float(node.inputs[0]):
        skipped["Gemm with transA or activation B"] += 1
        return None
    dims = [int(d) for d in b.shape]
    k, n = dims[::-1] if trans_b else dims
    if k * n < min_gemm or (target == "tensorrt" and n == 1):
        skipped["small GEMM or GEMV"] += 1
        return None
    return Site(node, (0,), (1, 0 if trans_b else 1))


def _conv_site(node: ir.Node, target: str, skipped: Counter) -> Site | None:
    w = node.inputs[1]
    if not _is_const(w) or not _float(node.inputs[0]):
        skipped["Conv with activation weight"] += 1
        return None
    bias = 2 if len(node.inputs) > 2 and _is_const(node.inputs[2]) and target != "tensorrt" else None
    output = None if target == "tensorrt" else _conv_output(node)
    if output is not None and not output.uses():
        output = None  # only a graph output: a Q/DQ pair there would be dead (and stop no fusion)
    return Site(node, (0,), (1, 0), bias, output)


def _attention_site(node: ir.Node, skipped: Counter) -> Site | None:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    extra = [v for v in node.inputs[4:] if v is not None]
    attrs = node.attributes
    more = any(out.uses() or out.is_graph_output() for out in node.outputs[1:])
    if not _is_const(weight) or extra or more or "qkv_hidden_sizes" in attrs or "do_rotary" in attrs:
        skipped["Attention with past, attention bias, packed sizes or rotary"] += 1
        return None
    return Site(node, (0,), (1, 1))


def plan_sites(model: ir.Model, target: str, exclude_ops: tuple[str, ...] = (), exclude_nodes: tuple[str, ...] = (),
               min_gemm: int = 0) -> Plan:
    """Choose the quantized nodes of ``model``'s main graph for ``target``.

    Args:
        model: the model (not modified).
        target: ``onnx``, ``ort`` or ``tensorrt``.
        exclude_ops: op types kept float.
        exclude_nodes: node-name glob patterns (``fnmatch``) kept float.
        min_gemm: MatMul/Gemm weights with fewer elements (``K * N``) stay float.

    Returns:
        A :class:`Plan`.
    """
    plan = Plan()
    for node in model.graph:
        std = node.domain in ("", "ai.onnx")
        op = node.op_type
        if not ((std and op in ("Conv", "MatMul", "Gemm")) or (node.domain == "com.microsoft" and op == "Attention")):
            continue
        if _excluded(node, exclude_ops, exclude_nodes):
            plan.skipped["excluded"] += 1
            continue
        if op == "MatMul":
            site = _matmul_site(node, target, min_gemm, plan.skipped)
        elif op == "Gemm":
            site = _gemm_site(node, target, min_gemm, plan.skipped)
        elif op == "Conv":
            site = _conv_site(node, target, plan.skipped)
        elif target == "ort":
            site = _attention_site(node, plan.skipped)
        else:
            plan.skipped["contrib Attention outside target ort"] += 1
            site = None
        if site is not None:
            plan.sites.append(site)
    if target == "tensorrt":
        plan.residuals = _residual_adds(plan.sites)
    return plan


def _residual_adds(sites: list[Site]) -> list[tuple[ir.Node, int]]:
    """Add nodes with one input from a quantized Conv: the other input is quantized
    so that TensorRT fuses the Add into the Conv as a residual."""
    convs = {id(s.node) for s in sites if s.node.op_type == "Conv"}
    found = []
    for site in sites:
        if site.node.op_type != "Conv":
            continue
        for use in site.node.outputs[0].uses():
            add = use.node
            if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
                continue
            other = 1 - use.idx
            producer = add.inputs[other].producer() if add.inputs[other] is not None else None
            if producer is not None and id(producer) in convs and other < use.idx:
                continue  # both from Convs: quantize once, the second input
            if _float(add.inputs[other]) and not _is_const(add.inputs[other]):
                found.append((add, other))
    return found

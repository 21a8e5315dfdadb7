"""Scaled dot-product attention fusion, lowered per target.

The core every exporter emits (after ``canonicalize-fusion``), in the
``[batch, heads, sequence, head_size]`` layout::

    s = MatMul(q, k^T) [* scale | / scale] [+ mask]
    o = MatMul(Softmax(s, axis=-1), v)
    out = Transpose(o, [0, 2, 1, 3]) [-> Reshape to [B, S, N*H]]

Around it, :mod:`~graphopt.passes.fusion.attention_parts` recognizes how q, k
and v were made: per-tensor heads (``Reshape`` + ``Transpose`` of a
projection: BERT, GPT-2, ViT, LLaMA in both torch exporters), a packed
``[B, S, 3, N, H]`` projection (PaddleOCR SVTR), rotary embeddings on q and k
(LLaMA) and ``repeat_kv`` for grouped-query attention.

Lowering (Vaswani et al., "Attention Is All You Need", 2017; Ainslie et
al., "GQA", 2023):

- ``--target ort``: ``com.microsoft.GroupQueryAttention`` when K/V have fewer
  heads or rotary embeddings are applied (``do_rotary``, caches sliced from
  the model's own cos/sin tables, ``causal=0`` with the model's mask as
  ``attention_bias``, so padding is exact); ``com.microsoft.Attention`` with
  the packed Q/K/V weight when q, k and v are the three parts of one
  projection; ``com.microsoft.MultiHeadAttention`` otherwise. The additive
  mask goes in ``attention_bias`` (``[B|1, N|1, S, L]``).
- ``--target onnx`` / ``tensorrt``: ONNX ``Attention`` (opset 23) on the 4-D
  heads, K/V un-repeated (``kv_num_heads`` from their shape), the mask as
  ``attn_mask``. onnxruntime's implementation returns zeros for a query row
  whose keys are all masked (left padding), where the decomposed graph
  averages them; rows with at least one visible key match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.pattern import CheckContext, CheckResult, Rule
from graphopt.passes.fusion.attention_parts import (
    Heads, Packed, Rotary, heads_of, linear_of, packed_of, perm_of, repeat_of, rotary_of, split_source,
)
from graphopt.passes.fusion.common import FLOAT_TYPES, ORT_DOMAIN, FusionPass, needs_opset
from graphopt.passmanager import register_pass

__all__ = ["AttentionRule", "FuseAttention", "Plan"]


@dataclass
class Side:
    """One of q / k / v: its heads view, rotary and repeat factor."""

    heads: Heads | Packed
    rotary: Rotary | None = None
    repeat: int = 1
    four_d: ir.Value | None = None  # the [B, N, S, H] value before repeat (onnx lowering)


@dataclass
class Plan:
    """What the check found and the rewrite builds.

    Attributes:
        op: ``GroupQueryAttention``, ``Attention``, ``MultiHeadAttention`` or
            ``onnx-Attention``.
        q, k, v: the three sides.
        scale: the softmax scale.
        mask: the additive mask, or None.
        heads, kv_heads, head_size: N, N_kv, H.
        packed: for ``Attention``: (x, weight, bias, q/k/v hidden sizes).
    """

    op: str
    q: Side
    k: Side
    v: Side
    scale: float
    mask: ir.Value | None
    heads: int
    kv_heads: int
    head_size: int
    packed: tuple | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _core_variant(scale: str, masked: bool, merge: bool):  # noqa: ANN202 - a pattern method
    def pattern(self, op, q4, kt4, v4, scale_value, mask, target):  # noqa: ANN001, ANN202
        s = op.MatMul(q4, kt4)
        if scale == "mul":
            s = op.Mul(s, scale_value)
        elif scale == "div":
            s = op.Div(s, scale_value)
        if masked:
            s = op.Add(s, mask)
        p = op.Softmax(s, axis=op.capture("axis"), _label="softmax")
        t = op.Transpose(op.MatMul(p, v4), perm=[0, 2, 1, 3], _label="transpose")
        return op.Reshape(t, target, _label="merge") if merge else t

    pattern.__name__ = f"{'merged' if merge else 'heads'}_{scale}_{'masked' if masked else 'unmasked'}"
    return pattern


def _side(ctx: CheckContext, v4: ir.Value, what: str, allow_rotary: bool) -> Side | str:
    """Follow ``v4`` back through repeat_kv, rotary and the heads split."""
    repeat = 1
    rep = repeat_of(ctx, v4)
    before_repeat = v4
    if rep is not None:
        before_repeat, repeat = rep
    rotary = None
    source = before_repeat
    if allow_rotary:
        found = rotary_of(ctx, before_repeat)
        if isinstance(found, str):
            return f"{what}: {found}"
        if found is not None:
            rotary, source = found, found.inner
    view: Heads | Packed | str | None = heads_of(ctx, source)
    if isinstance(view, str):
        view = packed_of(ctx, source) or f"{what}: {view}"
    if isinstance(view, str):
        return view
    return Side(view, rotary, repeat, before_repeat)


def _key_side(ctx: CheckContext, kt4: ir.Value) -> Side | str:
    node = kt4.producer()
    perm = perm_of(node)
    if perm == [0, 1, 3, 2]:
        return _side(ctx, node.inputs[0], "key", allow_rotary=True)
    if perm == [0, 2, 3, 1]:
        view = heads_of(ctx, kt4, transposed=True)
        return f"key: {view}" if isinstance(view, str) else Side(view)
    return f"the key is not transposed to [B, N, H, S] by a Transpose (found {node.op_type if node else 'none'})"


def _dims(side: Side) -> tuple[int, int]:
    return side.heads.heads, side.heads.head_size


class AttentionRule(Rule):
    """Scaled dot-product attention -> GroupQueryAttention / Attention /
    MultiHeadAttention (ort) or ONNX Attention (opset 23). See the module
    docstring for the matched forms and the lowering."""

    name = "attention"
    opsets = (5, None)  # Reshape with a shape input
    labels = frozenset({"fusion", "attention"})
    benefit = 10
    variants = tuple(f"{m}_{s}_{k}" for m in ("merged", "heads") for s in ("mul", "div", "none")
                     for k in ("masked", "unmasked"))

    def patterns(self):  # noqa: ANN201 - list[Pattern]
        for name in self.variants:
            if not hasattr(type(self), name):
                merge, scale, masked = name.split("_")
                setattr(type(self), name, _core_variant(scale, masked == "masked", merge == "merged"))
        return super().patterns()

    def check(self, ctx: CheckContext, q4: ir.Value, kt4: ir.Value, v4: ir.Value, softmax: ir.Node,
              axis: Any = None, scale_value: Any = None, mask: Any = None, merge: Any = None, **_: Any) -> CheckResult:
        if q4.dtype not in FLOAT_TYPES:
            return ctx.fail(f"the query is {q4.dtype}, not a float type", at=q4)
        rank = ctx.rank(softmax.outputs[0])
        if axis not in (-1, 3) or (axis == 3 and rank != 4):
            return ctx.fail(f"Softmax is over axis {axis}, not the last axis of the 4-D scores", at=softmax)
        variant = ctx.match.pattern.name.split("_")[1]
        scale = 1.0
        if scale_value is not None:
            s = ctx.scalar(scale_value)
            if s is None or s == 0 or not np.isfinite(s):
                return ctx.fail("the scale is not a finite non-zero constant scalar", at=scale_value)
            scale = s if variant == "mul" else 1.0 / s
        q = _side(ctx, q4, "query", allow_rotary=True)
        if isinstance(q, str):
            return ctx.fail(q, at=q4)
        k = _key_side(ctx, kt4)
        if isinstance(k, str):
            return ctx.fail(k, at=kt4)
        v = _side(ctx, v4, "value", allow_rotary=False)
        if isinstance(v, str):
            return ctx.fail(v, at=v4)
        (n, h), (nk, hk), (nv, hv) = _dims(q), _dims(k), _dims(v)
        if not (h == hk == hv):
            return ctx.fail(f"head sizes differ: q {h}, k {hk}, v {hv}", at=q4)
        if nk != nv or k.repeat != v.repeat or n != nk * k.repeat:
            return ctx.fail(f"heads do not line up: q {n}, k {nk} x{k.repeat}, v {nv} x{v.repeat}", at=kt4)
        if (q.rotary is None) != (k.rotary is None):
            return ctx.fail("only one of query and key has a rotary embedding", at=q4)
        if q.rotary is not None and (q.rotary.cos is not k.rotary.cos or q.rotary.sin is not k.rotary.sin):
            return ctx.fail("query and key are rotated with different tables", at=q4)
        qs, ks = ctx.shape(_bsd(q)), ctx.shape(_bsd(k))
        if qs is None or ks is None or len(qs) != 3 or len(ks) != 3:
            return ctx.fail("the query/key projections are not known to be 3-D", at=q4)
        batch, seq, kv_seq = qs[0], qs[1], ks[1]
        if mask is not None:
            ms = ctx.shape(mask)
            if mask.dtype != q4.dtype:
                return ctx.fail(f"the mask is {mask.dtype}, not the scores' type", at=mask)
            if ms is None or len(ms) != 4 or ms[0] not in (batch, 1) or ms[1] not in (n, 1) or ms[2] != seq \
                    or ms[3] != kv_seq:
                return ctx.fail(f"the mask has shape {ms}, not [B|1, N|1, S, L] = [{batch}|1, {n}|1, {seq}, "
                                f"{kv_seq}]", at=mask)
        if merge is not None and ctx.shape(merge.outputs[0]) != [batch, seq, n * h]:
            return ctx.fail(f"the final Reshape does not merge the heads into [{batch}, {seq}, {n * h}]", at=merge)
        if ctx.target == "ort":
            if q.rotary is not None or nk != n:
                op = "GroupQueryAttention"
            else:
                packed = getattr(ctx.options, "packed", True) and _packed_projection(ctx, q, k, v) is not None
                op = "Attention" if packed else "MultiHeadAttention"
                if op == "MultiHeadAttention" and mask is not None and not getattr(ctx.options, "masked_multi_head", True):
                    return ctx.fail("MultiHeadAttention with a mask is off (masked-multi-head=false): the attention "
                                    "stays unfused", at=q4)
        else:
            ok = needs_opset(ctx, "Attention", 23)
            if not ok:
                return ok
            op = "onnx-Attention"
        ctx.match.notes["plan"] = Plan(op, q, k, v, scale, mask, n, nk, h,
                                       _packed_projection(ctx, q, k, v) if op == "Attention" else None)
        return ctx.ok()

    def rewrite(self, op: Any, merge: Any = None, **_: Any) -> Any:
        plan: Plan = op.match.notes["plan"]
        n, h = plan.heads, plan.head_size
        if plan.op == "onnx-Attention":
            out4 = op.Attention(_four(op, plan.q), _four(op, plan.k), _four(op, plan.v), plan.mask, scale=plan.scale)
            t = op.Transpose(out4, perm=[0, 2, 1, 3])
            return op.Reshape(t, merge.inputs[1]) if merge is not None else t
        if plan.op == "GroupQueryAttention":
            out3 = _gqa(op, plan)
        elif plan.op == "Attention":
            x, weight, bias, sizes = plan.packed
            attrs = {"qkv_hidden_sizes": sizes} if len(set(sizes)) > 1 else {}
            out3 = op.Attention(x, weight, bias, None, None, plan.mask, num_heads=n, scale=plan.scale,
                                _domain=ORT_DOMAIN, **attrs)
        else:
            out3 = op.MultiHeadAttention(_bsd_value(op, plan.q), _bsd_value(op, plan.k), _bsd_value(op, plan.v),
                                         None, None, plan.mask, num_heads=n, scale=plan.scale, _domain=ORT_DOMAIN)
        shape = op.env.shapes.shape(_bsd(plan.q))
        if shape is not None:
            op.env.shapes.record(out3, (shape[0], shape[1], n * h))
        if merge is not None:
            return out3
        return op.Reshape(out3, op.initializer(np.array([0, 0, n, h], np.int64), "heads_shape"))


def _four(op: Any, side: Side) -> ir.Value:
    """The ``[B, N, S, H]`` value a side enters ONNX Attention with: rotated,
    not repeated (made from the projection when the graph only had the key
    as ``[B, N, H, S]``)."""
    if side.four_d is not None:
        return side.four_d
    heads = side.heads
    shape = op.initializer(np.array([0, 0, heads.heads, heads.head_size], np.int64), "heads_shape")
    return op.Transpose(op.Reshape(_bsd_value(op, side), shape), perm=[0, 2, 1, 3])


def _bsd(side: Side) -> ir.Value:
    return side.heads.bsd if isinstance(side.heads, Heads) else side.heads.qkv


def _bsd_value(op: Any, side: Side) -> ir.Value:
    """The ``[B, S, N*H]`` input of a side (a column slice of a packed qkv)."""
    if isinstance(side.heads, Heads):
        return side.heads.bsd
    width = side.heads.heads * side.heads.head_size
    i = side.heads.index
    ints = lambda v, name: op.initializer(np.array(v, np.int64), name)  # noqa: E731
    return op.Slice(side.heads.qkv, ints([i * width], "qkv_start"), ints([(i + 1) * width], "qkv_end"),
                    ints([-1], "qkv_axis"))


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _packed_projection(ctx: CheckContext, q: Side, k: Side, v: Side) -> tuple | None:
    """(x, weight, bias, hidden sizes) when q, k, v are the three parts of
    one projection ``x @ W + b`` read by nothing else."""
    if isinstance(q.heads, Packed):
        if not (isinstance(k.heads, Packed) and isinstance(v.heads, Packed)):
            return None
        if not (q.heads.qkv is k.heads.qkv is v.heads.qkv) or [q.heads.index, k.heads.index, v.heads.index] != [0, 1, 2]:
            return None
        qkv = q.heads.qkv
        width = q.heads.heads * q.heads.head_size
        sizes = [width] * 3
    elif isinstance(k.heads, Heads) and isinstance(v.heads, Heads):
        found = split_source([q.heads.bsd, k.heads.bsd, v.heads.bsd], ctx)
        if found is None:
            return None
        split, sizes = found
        axis = split.attributes["axis"].as_int() if "axis" in split.attributes else 0
        if axis not in (-1, 2) or not all(_single_use(o) for o in split.outputs):
            return None
        qkv = split.inputs[0]
    else:
        return None
    linear = linear_of(ctx, qkv)
    if linear is None or not _single_use(qkv) or ctx.rank(linear.x) != 3:
        return None
    if any(not _single_use(n.outputs[0]) for n in linear.nodes[:-1]):
        return None
    return linear.x, linear.weight, linear.bias, sizes


def _gqa(op: Any, plan: Plan) -> ir.Value:
    """``com.microsoft.GroupQueryAttention`` for a prompt without past KV:
    ``seqlens_k = L - 1`` for every batch entry and ``total_sequence_length = L``
    (int32, from the key's shape), ``causal=0`` with the model's own mask."""
    ints = lambda v, name, dt=np.int64: op.initializer(np.array(v, dt), name)  # noqa: E731
    q3, k3, v3 = (_bsd_value(op, s) for s in (plan.q, plan.k, plan.v))
    source, b_axis, l_axis = _shape_source(op, k3)
    shape = op.Shape(source)
    total = op.Cast(op.Gather(shape, ints(l_axis, "seq_axis"), axis=0), to=ir.DataType.INT32)
    batch = op.Gather(shape, ints([b_axis], "batch_axis"), axis=0)
    seqlens = op.Expand(op.Sub(total, ints(1, "one_i32", np.int32)), batch)
    cos = sin = None
    if plan.q.rotary is not None:
        half = plan.head_size // 2
        starts, ends, axes = ints([0], "rope_start"), ints([half], "rope_half"), ints([-1], "rope_axis")
        cache_shape = ints([-1, half], "rope_cache_shape")
        cos = op.Reshape(op.Slice(plan.q.rotary.cos, starts, ends, axes), cache_shape)
        sin = op.Reshape(op.Slice(plan.q.rotary.sin, starts, ends, axes), cache_shape)
    return op.GroupQueryAttention(
        q3, k3, v3, None, None, seqlens, total, cos, sin, None, plan.mask,
        num_heads=plan.heads, kv_num_heads=plan.kv_heads, scale=plan.scale, causal=0,
        do_rotary=1 if cos is not None else 0, rotary_interleaved=0, _domain=ORT_DOMAIN)


def _shape_source(op: Any, k3: ir.Value) -> tuple[ir.Value, int, int]:
    """A value whose shape holds the batch and key-sequence dims of ``k3``:
    a graph input with those symbolic dims when there is one (shared by every
    layer, so CSE merges the shape nodes), else ``k3`` itself."""
    shapes = op.env.shapes
    ks = shapes.shape(k3)
    if ks is not None and isinstance(ks[0], str) and isinstance(ks[1], str):
        for value in op.env.model.graph.inputs:
            dims = shapes.shape(value)
            if dims and ks[0] in dims and ks[1] in dims and dims.index(ks[0]) != dims.index(ks[1]):
                return value, dims.index(ks[0]), dims.index(ks[1])
    return k3, 0, 1


@dataclass(frozen=True)
class FuseAttentionOptions:
    """Options of ``fuse-attention``."""

    packed: bool = field(default=True, metadata={"doc": (
        "target ort: com.microsoft Attention with the packed Q/K/V weight where the projections are one MatMul; "
        "false keeps the projection a MatMul and emits MultiHeadAttention (the int8 pipeline: onnxruntime "
        "quantizes a MatMul, not Attention's packed weight with an attention bias)")})
    masked_multi_head: bool = field(default=True, metadata={"doc": (
        "target ort: emit MultiHeadAttention with an attention bias (mask) where neither Attention nor "
        "GroupQueryAttention applies; false leaves those sites unfused (the int8 pipeline: on BERT-base INT8, "
        "onnxruntime 1.32's CPU MultiHeadAttention with a mask took 58.3 ms per run where the unfused attention took "
        "52.8 ms; on ViT-base, without a mask, MultiHeadAttention was faster: 86.1 vs 93.5 ms)")})


@register_pass("fuse-attention")
class FuseAttention(FusionPass):
    """Fuse scaled dot-product attention into GroupQueryAttention / Attention / MultiHeadAttention (ort) or ONNX Attention (23).

    Rule ``attention`` (see :mod:`graphopt.passes.fusion.attention`); run
    after ``canonicalize-fusion``.
    """

    Options = FuseAttentionOptions
    rules = (AttentionRule(),)

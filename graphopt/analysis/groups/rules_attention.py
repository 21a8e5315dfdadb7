"""Channel rules for onnxruntime's fused attention ops (``com.microsoft``).

``Attention`` (packed QKV weight ``[hidden, 3*hidden]``, bias ``[3*hidden]``,
``num_heads``): a producer of heads; its weight columns and bias come in
three sections (Q, K, V at 0, hidden, 2*hidden), ``num_heads`` and
``qkv_hidden_sizes`` decrease. ``MultiHeadAttention`` (separate 3-D query,
key, value): query, key, value and output share the site, the optional
packed bias is sliced in three sections, ``num_heads`` decreases.
``GroupQueryAttention`` lives in :mod:`.rules_gqa`; the packed/past forms
are refused with a reason.
"""

from __future__ import annotations

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse, Regranulate, Site
from graphopt.analysis.groups.rules import RULES, attr_int, attr_ints

__all__ = ["attention", "multi_head_attention"]


def _present(node: ir.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None


def _bias_broadcasts(b: Builder, node: ir.Node, index: int) -> None:
    """An attention bias / additive mask input must broadcast over heads (dim 1 of 1)."""
    if not _present(node, index):
        return
    dims = b.dims.of(node.inputs[index])
    if dims is None or len(dims) != 4 or dims[1] != 1:
        raise Refuse(f"{node.op_type} {node.name}: its attention bias {node.inputs[index].name} is per head "
                     "(or of unknown dims)")


def _head_site(node: ir.Node, s: Site, rank: int, hd: int) -> None:
    if s.axis != rank - 1:
        raise Refuse(f"{node.op_type} {node.name}: the units are not on the hidden axis")
    if s.unit % hd:
        raise Regranulate(s.unit, hd)
    if s.starts != (0,):
        raise Refuse(f"{node.op_type} {node.name}: the units come in several sections")


def attention(b: Builder, node: ir.Node) -> None:
    """com.microsoft.Attention: see the module doc."""
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2] if _present(node, 2) else None
    for i in (4, 6, 7):
        if _present(node, i):
            raise Refuse(f"Attention {node.name}: past state inputs are not supported")
    _bias_broadcasts(b, node, 5)
    for out in node.outputs[1:]:
        if out is not None and out.uses():
            raise Refuse(f"Attention {node.name}: its present output is used")
    if not ir.is_constant(w) or (bias is not None and not ir.is_constant(bias)):
        raise Refuse(f"Attention {node.name}: the QKV weight is not constant")
    b.tags.add("heads")
    heads = attr_int(node, "num_heads")
    sizes = attr_ints(node, "qkv_hidden_sizes")
    wd = b.dims.of(w)
    if sizes is not None and len(set(sizes)) != 1:
        raise Refuse(f"Attention {node.name}: Q, K and V hidden sizes differ")
    hidden = wd[1] // 3
    hd = hidden // heads
    sx = b.site(x)
    if sx is not None:
        if sx.axis != b.dims.rank(x) - 1:
            raise Refuse(f"Attention {node.name}: the units are not on the hidden axis")
        b.slice_const(node, w, 0, sx, "in")
        b.consumer(node, x)
    sy = b.site(y)
    if sy is None:
        return
    _head_site(node, sy, b.dims.rank(y), hd)
    starts = (0, hidden, 2 * hidden)
    b.slice_const(node, w, 1, sy, "out", starts)
    if bias is not None:
        b.slice_const(node, bias, 0, sy, "param", starts)
    b.edit(node, ShapeEdit(node.name or "", "num_heads", 0, sy.unit // hd))
    if sizes is not None:
        for i in range(3):
            b.edit(node, ShapeEdit(node.name or "", "qkv_hidden_sizes", i, sy.unit))
    b.producer(node)


def multi_head_attention(b: Builder, node: ir.Node) -> None:
    """com.microsoft.MultiHeadAttention: see the module doc."""
    q = node.inputs[0]
    k = node.inputs[1] if _present(node, 1) else None
    v = node.inputs[2] if _present(node, 2) else None
    y = node.outputs[0]
    bias = node.inputs[3] if _present(node, 3) else None
    if k is None or v is None:
        raise Refuse(f"MultiHeadAttention {node.name}: packed QKV/KV inputs are not supported")
    for i in range(6, len(node.inputs)):
        if _present(node, i):
            raise Refuse(f"MultiHeadAttention {node.name}: past state inputs are not supported")
    _bias_broadcasts(b, node, 5)
    for out in node.outputs[1:]:
        if out is not None and out.uses():
            raise Refuse(f"MultiHeadAttention {node.name}: its present outputs are used")
    ranks = {b.dims.rank(t) for t in (q, k, v)}
    if ranks != {3}:
        raise Refuse(f"MultiHeadAttention {node.name}: query, key and value are not all 3-D")
    b.tags.add("heads")
    heads = attr_int(node, "num_heads")
    hidden = b.dims.of(q)[2]
    if b.dims.of(k)[2] != hidden or b.dims.of(v)[2] != hidden:
        raise Refuse(f"MultiHeadAttention {node.name}: query, key and value widths differ")
    hd = hidden // heads
    s = next((b.site(t) for t in (q, k, v, y) if b.site(t) is not None), None)
    if s is None:
        return
    _head_site(node, s, 3, hd)
    for t in (q, k, v, y):
        b.put(t, s)
    if bias is not None:
        if not ir.is_constant(bias):
            raise Refuse(f"MultiHeadAttention {node.name}: the bias is not constant")
        b.slice_const(node, bias, 0, s, "param", (0, hidden, 2 * hidden))
    b.edit(node, ShapeEdit(node.name or "", "num_heads", 0, s.unit // hd))


RULES["com.microsoft", "Attention"] = attention
RULES["com.microsoft", "MultiHeadAttention"] = multi_head_attention

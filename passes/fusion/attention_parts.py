"""Recognizers for the pieces around scaled dot-product attention: how the
exporters turn a ``[B, S, N*H]`` projection into ``[B, N, S, H]`` heads, rotary
embeddings, the ``repeat_kv`` of grouped-query attention, the packed QKV of
PaddleOCR's SVTR, and the projection (MatMul + bias) behind a value.

Each recognizer returns what it found, or a string saying why not (the
attention rule reports it, so ``graphopt explain attention`` shows it).
Sources: Hugging Face ``BertSelfAttention`` / ``GPT2Attention`` /
``LlamaAttention`` (``apply_rotary_pos_emb``, ``rotate_half``, ``repeat_kv``)
/ ``ViTSelfAttention`` as exported by both torch exporters; PaddleOCR's
``Attention`` (``qkv`` reshaped to ``[B, S, 3, N, H]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.pattern import CheckContext, Failure, Matcher, build_pattern

__all__ = ["Heads", "Rotary", "Packed", "Linear", "heads_of", "rotary_of", "repeat_of", "packed_of",
           "linear_of", "split_source", "perm_of"]

def perm_of(node: ir.Node | None) -> list[int] | None:
    """A Transpose node's perm (None for other nodes or the default reversal)."""
    if node is None or node.op_type != "Transpose" or "perm" not in node.attributes:
        return None
    return list(node.attributes["perm"].as_ints())


@dataclass
class Heads:
    """A ``[B, N, S, H]`` value as heads of the ``[B, S, N*H]`` value ``bsd``.

    Attributes:
        bsd: the 3-D source (a projection output).
        heads: N.
        head_size: H.
    """

    bsd: ir.Value
    heads: int
    head_size: int


def heads_of(ctx: CheckContext, v4: ir.Value, transposed: bool = False) -> Heads | str:
    """``v4 = Transpose(Reshape(x, [B, S, N, H]), [0, 2, 1, 3])`` (``[0, 2, 3, 1]``
    when ``transposed``: the key already as ``[B, N, H, S]``) with ``x: [B, S, N*H]``."""
    node = v4.producer()
    want = [0, 2, 3, 1] if transposed else [0, 2, 1, 3]
    if perm_of(node) != want:
        return f"{_name(v4)} is not Transpose(perm={want}) of the split heads"
    reshape = node.inputs[0].producer()
    if reshape is None or reshape.op_type != "Reshape":
        return f"the Transpose of {_name(v4)} does not read a Reshape"
    x = reshape.inputs[0]
    xs, rs = ctx.shape(x), ctx.shape(reshape.outputs[0])
    if xs is None or rs is None or len(xs) != 3 or len(rs) != 4:
        return f"the heads Reshape is not 3-D -> 4-D ({xs} -> {rs})"
    n, h = rs[2], rs[3]
    if not isinstance(n, int) or not isinstance(h, int) or xs[2] != n * h or rs[:2] != xs[:2]:
        return f"the heads Reshape {xs} -> {rs} does not split the last axis into [N, H]"
    return Heads(x, n, h)


@dataclass
class Rotary:
    """Rotary embedding ``x * cos + rotate_half(x) * sin`` on ``[B, N, S, H]``.

    Attributes:
        cos, sin: the ``[1, 1, S, H]`` tables the graph multiplies with; their
            two halves along the last axis are equal (``cat(freqs, freqs)``).
        inner: the value before rotation.
    """

    inner: ir.Value
    cos: ir.Value
    sin: ir.Value


def _rope(op, x, cos, sin, s1, e1, a1, s2, e2, a2):  # noqa: ANN001, ANN202 - a pattern function
    upper = op.Slice(x, s1, e1, a1, op.opt("p1"), _label="upper")
    lower = op.Slice(x, s2, e2, a2, op.opt("p2"), _label="lower")
    rotated = op.Concat(op.Neg(upper), lower, axis=op.capture("axis"))
    return op.Add(op.Mul(x, cos), op.Mul(rotated, sin))


_ROPE = build_pattern(_rope)


def _ints(ctx: CheckContext, value: ir.Value | None) -> list[int] | None:
    array = ctx.const(value, max_elements=8)
    return None if array is None else [int(a) for a in array.reshape(-1)]


def rotary_of(ctx: CheckContext, v4: ir.Value, head_size: int | None = None) -> Rotary | str | None:
    """The rotary embedding producing ``v4`` (Hugging Face ``apply_rotary_pos_emb``
    with ``rotate_half``, non-interleaved), None when ``v4`` is not an Add,
    or the reason a rotary-looking Add does not qualify."""
    node = v4.producer()
    if node is None or node.op_type != "Add":
        return None
    found = Matcher(_ROPE, dict(ctx.model.opset_imports)).match(node)
    if isinstance(found, Failure):
        return f"not a rotary embedding ({found.reason})"
    b = found.bindings()
    x = b["x"]
    h = ctx.dim(x, -1)
    if h is None or h % 2 or (head_size is not None and h != head_size):
        return "the rotated axis has no even static size"
    rank = ctx.rank(x)
    half = h // 2
    axes_ok = all(_ints(ctx, b[a]) in ([-1], [rank - 1] if rank else [-1]) for a in ("a1", "a2"))
    axis = b["axis"]
    steps_ok = all(b.get(p) is None or _ints(ctx, b[p]) == [1] for p in ("p1", "p2"))
    s1, e1, s2, e2 = (_ints(ctx, b[k]) for k in ("s1", "e1", "s2", "e2"))
    upper_ok = s1 in ([half], [half - h]) and e1 is not None and len(e1) == 1 and e1[0] >= h
    lower_ok = s2 == [0] and e2 in ([half], [half - h])
    if not (upper_ok and lower_ok):
        return f"the rotate_half slices are not [{half}:] (negated) and [:{half}]"
    for table in (b["cos"], b["sin"]):
        shape = ctx.shape(table)
        if shape is None or len(shape) != 4 or shape[0] != 1 or shape[1] != 1 or shape[3] != h:
            return f"the rotary table {_name(table)} is not [1, 1, S, {h}] ({shape})"
        if not duplicated_halves(table):
            return f"the two halves of the rotary table {_name(table)} are not known to be equal"
    return Rotary(x, b["cos"], b["sin"])


def duplicated_halves(table: ir.Value) -> bool:
    """Whether the two halves of ``table``'s last axis are equal: a constant
    checked numerically, or ``Cos``/``Sin`` of ``Concat(f, f)`` (behind
    Unsqueeze), as ``LlamaRotaryEmbedding`` computes ``cat(freqs, freqs)``."""
    array = ir.const_array(table, max_elements=1 << 22)
    if array is not None:
        half = array.shape[-1] // 2
        return bool(np.array_equal(array[..., :half], array[..., half:]))
    node = table.producer()
    while node is not None and node.op_type in ("Unsqueeze", "Cast"):
        node = node.inputs[0].producer()
    if node is None or node.op_type not in ("Cos", "Sin"):
        return False
    concat = node.inputs[0].producer()
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2:
        return False
    return concat.inputs[0] is concat.inputs[1] and concat.attributes["axis"].as_int() in (-1, len(
        concat.inputs[0].shape or ()) - 1)


def repeat_of(ctx: CheckContext, v4: ir.Value) -> tuple[ir.Value, int] | None:
    """``repeat_kv``: ``Reshape(Expand(Unsqueeze(x, 2), [B, Nkv, r, S, H]), [B, Nkv*r, S, H])``
    -> ``(x, r)``; None when ``v4`` is not produced that way."""
    reshape = v4.producer()
    if reshape is None or reshape.op_type != "Reshape":
        return None
    expand = reshape.inputs[0].producer()
    if expand is None or expand.op_type != "Expand":
        return None
    unsq = expand.inputs[0].producer()
    if unsq is None or unsq.op_type != "Unsqueeze":
        return None
    axes = unsq.attributes["axes"].as_ints() if "axes" in unsq.attributes else _ints(ctx, unsq.inputs[1]) \
        if len(unsq.inputs) > 1 else None
    if list(axes or []) != [2]:
        return None
    x = unsq.inputs[0]
    xs, es, rs = ctx.shape(x), ctx.shape(expand.outputs[0]), ctx.shape(v4)
    if xs is None or es is None or rs is None or len(xs) != 4 or len(es) != 5 or len(rs) != 4:
        return None
    rep = es[2]
    if not isinstance(rep, int) or not isinstance(xs[1], int) or es[:2] != xs[:2] or es[3:] != xs[2:]:
        return None
    if rs != [xs[0], xs[1] * rep, xs[2], xs[3]]:
        return None
    return x, rep


@dataclass
class Packed:
    """One of q/k/v sliced out of a packed ``[B, S, 3, N, H]`` projection.

    Attributes:
        qkv: the 3-D ``[B, S, 3*N*H]`` value.
        index: 0 for q, 1 for k, 2 for v.
        heads, head_size: N and H.
    """

    qkv: ir.Value
    index: int
    heads: int
    head_size: int


def packed_of(ctx: CheckContext, v4: ir.Value) -> Packed | None:
    """``Squeeze(Slice(t, [i], [i+1], [0]), [0])`` or ``Gather(t, i, axis=0)`` of
    ``t = Transpose(Reshape(qkv, [B, S, 3, N, H]), [2, 0, 3, 1, 4])``."""
    node = v4.producer()
    index = None
    if node is not None and node.op_type == "Squeeze":
        axes = node.attributes["axes"].as_ints() if "axes" in node.attributes else _ints(ctx, node.inputs[1]) \
            if len(node.inputs) > 1 else None
        sl = node.inputs[0].producer()
        if list(axes or []) != [0] or sl is None or sl.op_type != "Slice" or len(sl.inputs) < 4:
            return None
        starts, ends, axes = (_ints(ctx, v) for v in sl.inputs[1:4])
        steps = _ints(ctx, sl.inputs[4]) if len(sl.inputs) > 4 and sl.inputs[4] is not None else [1]
        if axes != [0] or steps != [1] or starts is None or ends != [starts[0] + 1]:
            return None
        index, t = starts[0], sl.inputs[0]
    elif node is not None and node.op_type == "Gather":
        idx = _ints(ctx, node.inputs[1])
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
        if idx is None or len(idx) != 1 or axis != 0 or ctx.rank(node.inputs[1]) != 0:
            return None
        index, t = idx[0], node.inputs[0]
    else:
        return None
    transpose = t.producer()
    if perm_of(transpose) != [2, 0, 3, 1, 4]:
        return None
    reshape = transpose.inputs[0].producer()
    if reshape is None or reshape.op_type != "Reshape":
        return None
    qkv = reshape.inputs[0]
    qs, rs = ctx.shape(qkv), ctx.shape(reshape.outputs[0])
    if qs is None or rs is None or len(qs) != 3 or len(rs) != 5 or rs[2] != 3 or rs[:2] != qs[:2]:
        return None
    n, h = rs[3], rs[4]
    if not isinstance(n, int) or not isinstance(h, int) or qs[2] != 3 * n * h or index not in (0, 1, 2):
        return None
    return Packed(qkv, index, n, h)


@dataclass
class Linear:
    """``y = x @ W (+ b)``: a projection with a constant ``[K, N]`` weight.

    Attributes:
        x: the activation.
        weight: W (2-D constant).
        bias: b (a length-N constant), or None.
        nodes: the MatMul and the Add, if any.
    """

    x: ir.Value
    weight: ir.Value
    bias: ir.Value | None
    nodes: list[ir.Node]


def linear_of(ctx: CheckContext, y: ir.Value) -> Linear | None:
    """``Add(MatMul(x, W), b)`` (either Add order) or ``MatMul(x, W)`` with W
    a constant 2-D weight and b a constant vector of W's column count."""
    node = y.producer()
    bias = None
    nodes: list[ir.Node] = []
    if node is not None and node.op_type == "Add":
        for a, c in ((0, 1), (1, 0)):
            mm = node.inputs[a].producer()
            if mm is not None and mm.op_type == "MatMul" and ir.const_tensor(node.inputs[c]) is not None:
                bias, nodes, node = node.inputs[c], [node], mm
                break
        else:
            return None
    if node is None or node.op_type != "MatMul":
        return None
    weight = ir.const_tensor(node.inputs[1])
    if weight is None or len(weight.shape) != 2:
        return None
    if bias is not None:
        b = ir.const_array(bias)
        if b.size != weight.shape[1] or any(d != 1 for d in b.shape[:-1]):
            return None
    return Linear(node.inputs[0], node.inputs[1], bias, [node, *nodes])


def split_source(values: list[ir.Value], ctx: CheckContext | None = None) -> tuple[ir.Node, list[int]] | None:
    """When ``values`` are outputs of one Split node (in that order), the
    Split and its split sizes (from the ``split`` attribute or input, or
    equal parts of the input's static axis under opset 18's ``num_outputs``);
    else None."""
    node = values[0].producer()
    if node is None or node.op_type != "Split" or any(v.producer() is not node for v in values):
        return None
    if [v.index() for v in values] != list(range(len(node.outputs))) or len(node.outputs) != len(values):
        return None
    sizes = None
    if "split" in node.attributes:
        sizes = list(node.attributes["split"].as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        array = ir.const_array(node.inputs[1], max_elements=16)
        sizes = None if array is None else [int(a) for a in array]
    elif ctx is not None and "num_outputs" in node.attributes:
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
        total = ctx.dim(node.inputs[0], axis)
        count = node.attributes["num_outputs"].as_int()
        if total is not None and count and total % count == 0:
            sizes = [total // count] * count
    if sizes is None:
        return None
    return node, sizes


def _name(value: Any) -> str:
    return f"%{value.name}" if getattr(value, "name", None) else "the value"

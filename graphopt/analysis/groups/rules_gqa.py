"""Channel rules for grouped-query attention (GQA, Ainslie et al., EMNLP 2023).

In GQA, ``num_kv_heads`` key/value heads are each shared by ``n_rep =
num_heads / num_kv_heads`` consecutive query heads. The torch exporters write
HF LLaMA's ``repeat_kv`` as

    k [B, kv, S, D] -> Unsqueeze(2) -> [B, kv, 1, S, D]
      -> Expand([B, kv, n_rep, S, D]) -> Reshape([B, kv*n_rep, S, D])

so a unit that is one KV head maps, through the Reshape's merge of
``(kv, n_rep)`` (:func:`.rules_shape.map_site`), to ``n_rep`` consecutive
query heads: the group's unit is a KV head with its whole query group. Its
slices are the KV head's ``head_dim`` columns of ``k_proj`` and ``v_proj``,
the ``n_rep * head_dim`` columns of ``q_proj`` and rows of ``o_proj``; its
edits are the Reshape targets that state ``num_heads`` / ``num_kv_heads``
and the Expand shape's ``kv`` entry.

:func:`expand` lets the units through an Expand on an axis it does not
broadcast (the ``kv`` axis of ``repeat_kv``), editing the shape entry that
states that axis; :func:`group_query_attention` does the same for
onnxruntime's fused ``com.microsoft.GroupQueryAttention`` (graphopt's O2).

The other form, query heads within their KV groups (kind ``query-heads``,
``n_rep -> n_rep'`` in every group, every KV head kept), is a builder in
``within`` mode seeded at the output projection's input (unit ``j``: query
head ``j`` of every group, sections ``g * n_rep * D``): the repeat Reshape
maps those sections onto ``repeat_kv``'s repeat axis
(:func:`.rules_shape.within_site`), where the Expand is a sink whose repeat
entry decreases (the copies are identical); the fused op's ``num_heads``
decreases by ``kv_num_heads`` per unit. Both forms share every tensor, so a
plan removes units of one of them only (:attr:`CoupledGroup.exclusive`).
``Tile`` is refused.
"""

from __future__ import annotations

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse, Regranulate, Site
from graphopt.analysis.groups.rules import RULES, attr_int, dim_of, rank_of
from graphopt.analysis.groups.rules_shape import entry_edit

__all__ = ["expand", "tile", "repeat_factor", "group_query_attention"]


def repeat_factor(b: Builder, node: ir.Node, axis_y: int) -> int:
    """How many times an Expand repeats each unit on output axis ``axis_y``:
    the size of the axis right after it when the input has 1 there (``n_rep``
    of ``repeat_kv``), else 1."""
    x, y = node.inputs[0], node.outputs[0]
    off = rank_of(b, y) - rank_of(b, x)
    nxt = axis_y + 1
    if nxt >= rank_of(b, y) or nxt - off < 0:
        return 1
    return dim_of(b, y, nxt) if dim_of(b, x, nxt - off) == 1 else 1


def expand(b: Builder, node: ir.Node) -> None:
    """Expand ``y = x`` broadcast to ``shape``: the units pass through on an
    axis that is not broadcast (input and output dims equal, output axis
    ``a + rank(y) - rank(x)`` for input axis ``a``), and the shape entry
    that states that axis is edited per removed unit (a ``1`` entry or one
    read from ``x``'s own dims at run time needs nothing).

    Source: HF LLaMA's ``repeat_kv`` (see the module doc), where the axis is
    ``num_kv_heads`` and the repeat ``n_rep`` is on the next axis. For query
    heads within their groups (``b.within``) an Expand that broadcasts the
    units' axis from 1 is a sink: its copies are identical, and only the
    repeat entry of its shape decreases.

    Raises:
        Refuse: the units reach the shape input; the axis is broadcast from
            1 outside ``within`` mode (the Expand would tile the units); ``x`` is a constant (ViT's
            class token, broadcast over the batch: slicing it is not
            implemented); the shape entry is computed at run time.
    """
    x, shape, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if b.site(shape) is not None:
        raise Refuse(f"Expand {node.name}: the units reach its shape input")
    sx, sy = b.site(x), b.site(y)
    if sx is None and sy is None:
        return
    off = rank_of(b, y) - rank_of(b, x)
    axis_y = sy.axis if sy is not None else sx.axis + off
    axis_x = axis_y - off
    if b.within and sy is not None and sx is None and (axis_x < 0 or dim_of(b, x, axis_x) == 1):
        _repeats_sink(b, node, sy)
        return
    if axis_x < 0 or dim_of(b, x, axis_x) != dim_of(b, y, axis_y):
        raise Refuse(f"Expand {node.name} tiles the units: it broadcasts their axis {axis_y} from 1")
    if ir.is_constant(x):
        raise Refuse(f"Expand {node.name} broadcasts constant {x.name} (ViT's class token) and the units reach it: "
                     "slicing it is not implemented")
    s = sx or Site(axis_x, sy.unit, sy.starts, sy.units)
    b.put(x, Site(axis_x, s.unit, s.starts, s.units))
    b.put(y, Site(axis_y, s.unit, s.starts, s.units))
    s = b.site(y)
    lengths = b.dims.of(shape)
    if lengths is None or len(lengths) != 1 or lengths[0] is None:
        raise Refuse(f"Expand {node.name}: the length of its shape input is unknown")
    index = axis_y - (rank_of(b, y) - lengths[0])
    if index >= 0:
        entry_edit(b, node, shape, index, s.unit * len(s.starts), copies=False, keep=(1,))
    repeats = repeat_factor(b, node, axis_y)
    if repeats > 1:
        b.tags.add("gqa")
        b.repeats[node] = repeats


def _repeats_sink(b: Builder, node: ir.Node, sy: Site) -> None:
    """Query heads within their KV groups reach ``repeat_kv``'s repeat axis:
    its copies are identical, so removing units only lowers the repeat count
    (the shape entry), and nothing reaches the input."""
    shape, y = node.inputs[1], node.outputs[0]
    lengths = b.dims.of(shape)
    if lengths is None or len(lengths) != 1 or lengths[0] is None:
        raise Refuse(f"Expand {node.name}: the length of its shape input is unknown")
    index = sy.axis - (rank_of(b, y) - lengths[0])
    if index < 0:
        raise Refuse(f"Expand {node.name}: its shape does not state the repeat axis")
    entry_edit(b, node, shape, index, sy.unit * len(sy.starts), copies=False, keep=())
    b.tags.add("gqa")
    b.repeats[node] = dim_of(b, y, sy.axis)


def _within(b: Builder, node: ir.Node, q: ir.Value, k: ir.Value, v: ir.Value, heads: int, kv: int, hd: int) -> None:
    """GroupQueryAttention with query heads removed within their KV groups:
    the query/output sections start at ``g * n_rep * D`` for every KV head
    ``g``; ``num_heads`` decreases by ``kv_num_heads`` per removed unit."""
    y, n_rep = node.outputs[0], heads // kv
    where = f"GroupQueryAttention {node.name}"
    if b.site(k) is not None or b.site(v) is not None:
        raise Refuse(f"{where}: query heads within their groups reach the key/value inputs")
    s = b.site(q) or b.site(y)
    if s is None:
        return
    off = s.starts[0]
    if (s.axis != 2 or s.units or s.unit % hd or s.starts != tuple(g * n_rep * hd + off for g in range(kv))
            or off % hd or off + b.size * s.unit > n_rep * hd):
        raise Refuse(f"{where}: the units are not the same query heads of every KV group")
    b.put(q, s)
    b.put(y, s)
    b.edit(node, ShapeEdit(node.name or "", "num_heads", 0, kv * s.unit // hd))
    b.tags.add("gqa")
    b.repeats[node] = n_rep


def group_query_attention(b: Builder, node: ir.Node) -> None:
    """com.microsoft.GroupQueryAttention (attributes ``num_heads``,
    ``kv_num_heads``; query ``[B, S, H*D]``, key and value ``[B, S, kv*D]``,
    output ``[B, S, H*D]``): a KV head with its group. A unit is ``n_rep*D``
    elements of query and output for ``D`` of key and value (n_rep = H / kv,
    Ainslie et al. 2023; onnxruntime's kernel maps query head ``h`` to KV
    head ``h // n_rep``, as HF's ``repeat_kv``); ``num_heads`` decreases by
    ``n_rep`` and ``kv_num_heads`` by 1 per removed unit. Rotary caches
    ``[S, D/2]`` are per position, not per head.

    Raises:
        Regranulate: a unit is smaller than a KV head's group.
        Refuse: packed QKV (no key/value inputs), past key/value inputs or
            used present outputs, a per-head attention bias, inputs beyond
            the bias (head sinks), units on another axis or in several sections.
    """
    q = node.inputs[0]
    k = node.inputs[1] if len(node.inputs) > 1 else None
    v = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    where = f"GroupQueryAttention {node.name}"
    b.tags.add("heads")
    if k is None or v is None:
        raise Refuse(f"{where}: packed QKV input is not supported")
    for i in (3, 4):
        if len(node.inputs) > i and node.inputs[i] is not None:
            raise Refuse(f"{where}: past key/value inputs are not supported")
    if any(node.inputs[i] is not None for i in range(11, len(node.inputs))):
        raise Refuse(f"{where}: inputs after the attention bias (head sinks) are not supported")
    for out in node.outputs[1:]:
        if out is not None and (out.uses() or out.is_graph_output()):
            raise Refuse(f"{where}: its present key/value outputs are used")
    if len(node.inputs) > 10 and node.inputs[10] is not None:
        dims = b.dims.of(node.inputs[10])
        if dims is None or len(dims) != 4 or dims[1] != 1:
            raise Refuse(f"{where}: its attention bias {node.inputs[10].name} is per head (or of unknown dims)")
    heads, kv = attr_int(node, "num_heads"), attr_int(node, "kv_num_heads")
    if not heads or not kv or heads % kv or any(rank_of(b, t) != 3 for t in (q, k, v)):
        raise Refuse(f"{where}: num_heads / kv_num_heads or the 3-D inputs are not as expected")
    hd = dim_of(b, q, 2) // heads
    n_rep = heads // kv
    if dim_of(b, k, 2) != kv * hd or dim_of(b, v, 2) != kv * hd:
        raise Refuse(f"{where}: key/value widths are not kv_num_heads x head_size")
    if b.within:
        _within(b, node, q, k, v, heads, kv, hd)
        return
    big = next((b.site(t) for t in (q, y) if b.site(t) is not None), None)
    small = next((b.site(t) for t in (k, v) if b.site(t) is not None), None)
    s = big or small
    if s is None:
        return
    if s.axis != 2 or s.starts != (0,) or s.units:
        raise Refuse(f"{where}: the units are not on the hidden axis in one section")
    if big is None:
        big = Site(2, small.unit * n_rep, (0,))
    if big.unit % (n_rep * hd):
        raise Regranulate(big.unit, n_rep * hd)
    small = Site(2, big.unit // n_rep, (0,))
    for t, site in ((q, big), (y, big), (k, small), (v, small)):
        b.put(t, site)
    b.edit(node, ShapeEdit(node.name or "", "num_heads", 0, big.unit // hd))
    b.edit(node, ShapeEdit(node.name or "", "kv_num_heads", 0, small.unit // hd))
    b.tags.add("gqa")
    b.repeats[node] = n_rep


def tile(b: Builder, node: ir.Node) -> None:
    """Tile of a value with units: refused (it would repeat the units)."""
    raise Refuse(f"Tile {node.name} tiles the units: not supported")


RULES["", "Expand"] = expand
RULES["", "Tile"] = tile
RULES["com.microsoft", "GroupQueryAttention"] = group_query_attention

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
states that axis. Pruning query heads within their KV group (``n_rep ->
n_rep'`` in every group), ``Tile``, and the fused
``com.microsoft.GroupQueryAttention`` are refused with their reason.
"""

from __future__ import annotations

from graphopt import ir
from graphopt.analysis.groups.propagate import Builder, Refuse, Site
from graphopt.analysis.groups.rules import RULES, dim_of, rank_of
from graphopt.analysis.groups.rules_shape import entry_edit

__all__ = ["expand", "tile", "repeat_factor"]


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
    ``num_kv_heads`` and the repeat ``n_rep`` is on the next axis.

    Raises:
        Refuse: the units reach the shape input; the axis is broadcast from
            1 (the Expand would tile the units); ``x`` is a constant (ViT's
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


def tile(b: Builder, node: ir.Node) -> None:
    """Tile of a value with units: refused (it would repeat the units)."""
    raise Refuse(f"Tile {node.name} tiles the units: not supported")


RULES["", "Expand"] = expand
RULES["", "Tile"] = tile

"""Channel rules for ops that reinterpret shapes: Reshape and Shape (Expand: :mod:`.rules_gqa`).

Reshape maps the channel axis by the concrete dims of its input and output
(:mod:`.dims`): the same axis, a split of the axis into (units, rest) — the
heads split ``[B, S, H*hd] -> [B, S, H, hd]`` of every Transformer export —
or a merge of (units, rest) into one axis, ``[B, S, H, hd] -> [B, S, H*hd]``.
The target entry that states the channel axis's size is edited per removed
unit (``-1`` needs nothing), found in a constant target, or in the constant
piece of a ``Concat``-built target (dynamo's ``Concat(batch, seq, -1, hd)``,
TorchScript's ``Concat(Slice(Shape(x)), [H, hd])``).
"""

from __future__ import annotations

import math

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse, Regranulate, Site
from graphopt.analysis.groups.rules import RULES, attr_int, attr_ints, const_ints, const_target, norm
from graphopt.analysis.groups.shape_entries import check_entries, entries, shape_terminals, source_edit

__all__ = ["map_site", "within_site", "reshape", "shape", "own_dim", "entry_edit"]


def _trailing(dims: tuple[int, ...], first: int, product: int) -> bool:
    """Whether some run ``dims[first:first+k]`` (k >= 1) multiplies to ``product``."""
    p = 1
    for d in dims[first:]:
        p *= d
        if p == product:
            return True
        if p > product:
            return False
    return False


def map_site(din: tuple[int, ...], dout: tuple[int, ...], site: Site, where: str) -> Site:
    """The site on a reshape's other side (``din`` -> ``dout``, row-major).

    Raises:
        Regranulate: the axis splits into (units, P) and the unit is no multiple of P.
        Refuse: the channel axis is mixed with others.
    """
    a = site.axis
    pre = math.prod(din[:a])
    b = None
    p = 1
    for i, d in enumerate(dout):
        if p == pre and d != 1:
            b = i
            break
        p *= d
        if p > pre:
            break
    if b is None:
        raise Refuse(f"{where}: the axes before the channel axis are regrouped")
    if dout[b] == din[a]:
        return Site(b, site.unit, site.starts)
    if din[a] % dout[b] == 0 and _trailing(dout, b + 1, din[a] // dout[b]):
        inner = din[a] // dout[b]
        if site.unit % inner:
            raise Regranulate(site.unit, inner)
        if any(s % inner for s in site.starts):
            raise Refuse(f"{where}: a section starts inside a unit of {inner}")
        return Site(b, site.unit // inner, tuple(s // inner for s in site.starts))
    if dout[b] % din[a] == 0 and _trailing(din, a + 1, dout[b] // din[a]):
        inner = dout[b] // din[a]
        return Site(b, site.unit * inner, tuple(s * inner for s in site.starts))
    raise Refuse(f"{where}: the channel axis is mixed with others")


def within_site(src: tuple[int, ...], dst: tuple[int, ...], site: Site, size: int) -> Site | None:
    """A reshape's other side for units that sit at the same offset in every
    block of an axis (GQA query heads within their KV groups,
    :mod:`.rules_gqa`): a merged axis of ``outer * inner`` whose sections
    start at ``g * inner + off`` for every ``g`` maps to the ``inner`` axis
    of the split side (one section at ``off``), and back. None when
    ``src -> dst`` is not such a split or merge of the site's axis."""
    a = site.axis
    if site.units:
        return None
    for b in range(len(dst) - 1):  # src axis a splits into dst axes (b, b+1) = (outer, inner)
        outer, inner = dst[b], dst[b + 1]
        if math.prod(dst[:b]) != math.prod(src[:a]) or outer * inner != src[a] or outer < 2 or inner < 2:
            continue
        off = site.starts[0]
        if site.starts == tuple(g * inner + off for g in range(outer)) and off + size * site.unit <= inner:
            return Site(b + 1, site.unit, (off,))
    if a >= 1 and len(site.starts) == 1:  # src axes (a-1, a) = (outer, inner) merge into one dst axis
        outer, inner = src[a - 1], src[a]
        for b in range(len(dst)):
            if math.prod(dst[:b]) == math.prod(src[:a - 1]) and dst[b] == outer * inner and outer >= 2:
                return Site(b, site.unit, tuple(g * inner + site.starts[0] for g in range(outer)))
    return None


_DIM_PATH = ("Slice", "Squeeze", "Unsqueeze", "Cast", "Gather")


def own_dim(piece: ir.Value, x: ir.Value, rank: int | None, index: int = 0) -> int | None:
    """The axis of ``x`` whose size entry ``index`` of the shape piece
    ``piece`` reads, when it is ``Shape(x)`` taken through
    Slice/Gather/Squeeze/Unsqueeze/Cast (TorchScript's
    ``x.view(-1, x.size(-1))``, dynamo's ``x.shape[:-2]``); else None."""
    value, chain = piece, []
    while True:
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "Shape":
            break
        if producer.op_type not in _DIM_PATH:
            return None
        chain.append(producer)
        value = producer.inputs[0]
    if producer.inputs[0] is not x or rank is None:
        return None
    positions = list(range(rank))[norm(attr_int(producer, "start", 0), rank):]
    for node in reversed(chain):
        if node.op_type == "Slice":
            starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
            if starts is None or ends is None or len(starts) != 1:
                return None
            n = len(positions)
            lo = max(0, min(norm(starts[0], n), n))
            hi = max(0, min(norm(ends[0], n) if ends[0] < 2**62 else n, n))
            positions = positions[lo:hi]
        elif node.op_type == "Gather":
            idx = const_ints(node.inputs[1])
            if idx is None or len(idx) != 1:
                return None
            positions = [positions[norm(idx[0], len(positions))]]
    return positions[index] if index < len(positions) else None


def round_trip(node: ir.Node) -> tuple[ir.Node, ir.Node] | None:
    """``(A, B)`` when ``node`` is one end of ``Reshape A -> Transpose -> Reshape B``
    where A folds leading axes into axis 0, the Transpose keeps axis 0, and
    B unfolds them again (dynamo's SDPA export transposes K this way:
    ``[B, H, S, hd] -> [B*H, S, hd] -> [B*H, hd, S] -> [B, H, hd, S]``)."""
    if node.op_type != "Reshape":
        return None
    for a in (node, _upstream(node)):
        if a is None or a.op_type != "Reshape" or len(a.outputs[0].uses()) != 1:
            continue
        t = a.outputs[0].uses()[0].node
        perm = attr_ints(t, "perm") if t.op_type == "Transpose" else None
        if not perm or perm[0] != 0 or len(t.outputs[0].uses()) != 1 or t.outputs[0].is_graph_output():
            continue
        b_node = t.outputs[0].uses()[0].node
        if b_node.op_type == "Reshape" and b_node.inputs[0] is t.outputs[0] and node in (a, b_node):
            return a, b_node
    return None


def _upstream(node: ir.Node) -> ir.Node | None:
    t = node.inputs[0].producer()
    if t is None or t.op_type != "Transpose":
        return None
    return t.inputs[0].producer()


def _fold_axes(b: Builder, a_node: ir.Node, b_node: ir.Node, axis: int) -> bool:
    """Whether the round trip keeps ``axis`` of A's input at the same place of
    B's output (it lies among the folded leading axes, which B restores)."""
    din, dmid, dout = b.dims.of(a_node.inputs[0]), b.dims.of(a_node.outputs[0]), b.dims.of(b_node.outputs[0])
    if din is None or dmid is None or dout is None or None in din or None in dmid or None in dout:
        return False
    k = next((k for k in range(1, len(din) + 1) if math.prod(din[:k]) == dmid[0]), None)
    return k is not None and axis < k and tuple(dout[:k]) == tuple(din[:k])


def entry_edit(b: Builder, node: ir.Node, target: ir.Value, index: int, per_unit: int, copies: bool,
                keep: tuple[int, ...] = (-1,)) -> None:
    """Edit the entry ``index`` of a Reshape target or an Expand shape
    (constant or Concat-built); an entry in ``keep`` (Reshape's ``-1``,
    Expand's ``1``) needs no edit.

    A piece of a Concat-built target is named by ``"concat|reader#k"`` (input
    ``k`` of the Concat as read through ``reader``): the same constant may
    sit at several inputs of one Concat (``[B, 2, 2, S, D]`` of a GQA
    ``repeat_kv`` whose KV heads and repeats are both 2), and only this one
    changes."""
    if check_entries(b, node, target, index, per_unit):
        return  # the entry reads the units' own count at run time (TorchScript's shape arithmetic)
    try:
        _constant_entry_edit(b, node, target, index, per_unit, copies, keep)
    except Refuse:
        es = entries(b, target)
        if es is not None and index < len(es) and es[index].value is None and es[index].const in keep:
            return
        edit = source_edit(b, node, target, index, per_unit)
        if edit is None:
            raise
        b.edit(node, edit)  # a constant deep in shape arithmetic that only this node's shape reads


def _constant_entry_edit(b: Builder, node: ir.Node, target: ir.Value, index: int, per_unit: int, copies: bool,
                         keep: tuple[int, ...]) -> None:
    """:func:`entry_edit` for a constant or Concat-built target."""
    op = f"{node.op_type} {node.name}"
    noun = "target" if node.op_type == "Reshape" else "shape"
    reader = node
    value = target
    path: tuple[str, ...] | None = None
    if not ir.is_constant(value):
        producer = value.producer()
        if producer is None or producer.op_type != "Concat":
            raise Refuse(f"{op}: its {noun} is computed at run time")
        offset = 0
        for k, piece in enumerate(producer.inputs):
            dims = b.dims.of(piece)
            n = dims[0] if dims and len(dims) == 1 and dims[0] is not None else None
            if n is None:
                raise Refuse(f"{op}: a piece of its {noun} has unknown length")
            if offset <= index < offset + n:
                break
            offset += n
        else:
            raise Refuse(f"{op}: its {noun} is shorter than its output's rank")
        reader, value, index = producer, piece, index - offset
        path = (producer.name or "", f"{node.name or ''}#{k}")
        if not ir.is_constant(value):
            inner = value.producer()
            sx = b.site(node.inputs[0])
            if sx is not None and own_dim(value, node.inputs[0], b.dims.rank(node.inputs[0])) \
                    == sx.axis and per_unit == sx.unit * len(sx.starts):
                return  # the entry reads the input's own channel count at run time: it follows the pruning
            if inner is not None and inner.op_type == "Unsqueeze" and ir.is_constant(inner.inputs[0]):
                reader, value, index = inner, inner.inputs[0], 0
                path = None
            else:
                raise Refuse(f"{op}: the {noun} entry of the channel axis is computed at run time")
    entries = const_ints(value)
    if entries is None or index >= len(entries):
        raise Refuse(f"{op}: its {noun} is not readable")
    entry = entries[index]
    if entry in keep:
        return
    if entry == 0 and not attr_int(node, "allowzero", 0):
        if copies:
            return
        raise Refuse(f"{op}: a 0 entry copies another axis into the channel axis")
    name, attribute = const_target(value)
    # a Concat-built target shared by several Reshapes (after CSE) is copied per Reshape when applied
    b.edit(node, ShapeEdit(name, attribute, index, per_unit, ("|".join(path),) if path else (reader.name or "",)))


def reshape(b: Builder, node: ir.Node) -> None:
    """Reshape: see the module doc. Refused when dims are unknown or the
    channel axis mixes with another."""
    x, target, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if b.site(target) is not None:
        raise Refuse(f"Reshape {node.name}: the units reach its shape input")
    trip = round_trip(node)
    if trip is not None:
        a_node, b_node = trip
        start, end = a_node.inputs[0], b_node.outputs[0]
        s = b.site(start) or b.site(end)
        if s is not None and _fold_axes(b, a_node, b_node, s.axis):
            b.put(start, s)
            b.put(end, s)
            _trip_entries(b, a_node, b_node, b.site(start))
            return
    din, dout = b.dims.of(x), b.dims.of(y)
    if din is None or dout is None or None in din or None in dout:
        raise Refuse(f"Reshape {node.name}: its input or output dims are unknown")
    where = f"Reshape {node.name}"

    def across(src: tuple[int, ...], dst: tuple[int, ...], s: Site) -> Site:
        return (b.within and within_site(src, dst, s, b.size)) or map_site(src, dst, s, where)

    sx = b.site(x)
    if sx is not None:
        b.put(y, across(din, dout, sx))
    sy = b.site(y)
    if sy is not None:
        b.put_or_slice(node, x, across(dout, din, sy))
    sx, sy = b.site(x) or across(dout, din, sy), b.site(y)
    if dout[sy.axis] != din[sx.axis]:
        b.tags.add("heads")
    entry_edit(b, node, target, sy.axis, sy.unit * len(sy.starts), copies=sx.axis == sy.axis and sx.unit == sy.unit)


def _trip_entries(b: Builder, a_node: ir.Node, b_node: ir.Node, site: Site) -> None:
    """A round trip is safe when A's first entry is ``-1`` (or read at run
    time) and B's entry for the channel axis reads A's input's own dim."""
    first = _entry_source(b, a_node.inputs[1], 0)
    if first is None or (first[0] is not None and first[1] != -1):
        raise Refuse(f"Reshape {a_node.name} states the folded size")
    piece = _entry_source(b, b_node.inputs[1], site.axis)
    x = a_node.inputs[0]
    if piece is None or piece[0] is not None or own_dim(piece[2], x, b.dims.rank(x), piece[3]) != site.axis:
        raise Refuse(f"Reshape {b_node.name}: the entry of the channel axis is not the input's own size")


def _entry_source(b: Builder, target: ir.Value, index: int) -> tuple | None:
    """``(constant entries or None, entry value, piece value, index in piece)`` for entry ``index`` of a target."""
    if ir.is_constant(target):
        entries = const_ints(target)
        return (entries, entries[index], target, index) if entries and index < len(entries) else None
    producer = target.producer()
    if producer is None or producer.op_type != "Concat":
        return None
    offset = 0
    for piece in producer.inputs:
        dims = b.dims.of(piece)
        n = dims[0] if dims and len(dims) == 1 and dims[0] is not None else None
        if n is None:
            return None
        if offset <= index < offset + n:
            entries = const_ints(piece)
            return (entries, entries[index - offset] if entries else None, piece, index - offset)
        offset += n
    return None


def shape(b: Builder, node: ir.Node) -> None:
    """Shape of a value with units: allowed when every reader takes only other
    dims (``Gather`` of a constant index, ``Slice`` of a constant range)."""
    x = node.inputs[0]
    s = b.site(x)
    if s is None:
        return
    rank = b.dims.rank(x)
    if rank is None:
        raise Refuse(f"Shape {node.name}: unknown rank")
    first = norm(attr_int(node, "start", 0), rank)
    last = min(norm(attr_int(node, "end", rank), rank), rank)
    if not first <= s.axis < last:
        return
    position = s.axis - first
    for use in node.outputs[0].uses():
        reader = use.node
        if reader.op_type == "Gather" and use.idx == 0:
            idx = const_ints(reader.inputs[1])
            if idx is not None and all(norm(i, last - first) != position for i in idx):
                continue
        if reader.op_type == "Slice" and use.idx == 0:
            starts, ends = const_ints(reader.inputs[1]), const_ints(reader.inputs[2])
            if starts is not None and ends is not None and len(starts) == 1:
                n = last - first
                lo, hi = max(0, min(norm(starts[0], n), n)), max(0, min(norm(ends[0], n), n))
                if not lo <= position < hi:
                    continue
        if _feeds_own_reshape(node.outputs[0], x):
            continue
        terminals = [reader] if reader.op_type in ("Reshape", "Expand") and use.idx == 1 else (
            shape_terminals(reader.outputs[0]) if reader.op_type in _ARITHMETIC else None)
        if terminals is None:
            raise Refuse(f"the channel count is read at run time by Shape {node.name} ({reader.op_type} "
                         f"{reader.name})")
        for t in terminals:  # their rules check the entries (shape_entries.check_entries)
            if b.site(t.inputs[0]) is not None:
                b.enqueue(t)
            else:
                b.pending[t] = (f"the channel count read by Shape {node.name} reaches the shape of {t.op_type} "
                                f"{t.name}, whose data does not carry the units")
    if node.outputs[0].is_graph_output():
        raise Refuse(f"Shape {node.name} is a graph output")


_ARITHMETIC = ("Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Identity", "Concat", "Mul")


def _round_trip_of(node: ir.Node, x: ir.Value) -> bool:
    """Whether ``node`` is one end of a :func:`round_trip` whose first Reshape reads ``x``."""
    pair = round_trip(node)
    return pair is not None and pair[0].inputs[0] is x


def _feeds_own_reshape(value: ir.Value, x: ir.Value, depth: int = 0) -> bool:
    """Whether every path from the Shape output ``value`` ends, through
    Slice/Gather/Squeeze/Unsqueeze/Cast and one Concat, in the target of a
    Reshape of ``x`` itself (whose rule then checks the entry)."""
    if depth > 8 or value.is_graph_output() or not value.uses():
        return False
    for use in value.uses():
        reader = use.node
        if reader.op_type in _DIM_PATH and use.idx == 0:
            if not _feeds_own_reshape(reader.outputs[0], x, depth + 1):
                return False
        elif reader.op_type == "Concat":
            out = reader.outputs[0]
            if out.is_graph_output() or not all(u.node.op_type == "Reshape" and u.idx == 1 and (
                    u.node.inputs[0] is x or _round_trip_of(u.node, x)) for u in out.uses()):
                return False
        else:
            return False
    return True


RULES["", "Reshape"] = reshape
RULES["", "Shape"] = shape

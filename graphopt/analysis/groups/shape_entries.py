"""Shape arithmetic read at run time: what each entry of a shape vector is.

TorchScript exports state Reshape targets and Expand shapes as arithmetic on
``Shape`` outputs (HF LLaMA's ``repeat_kv``:
``Concat(Shape(k)[0], Shape(k)[1] * n_rep, Shape(k)[2], Shape(k)[3])``, and
for ``expand`` a ``Where(Equal(s, -1), 1, s)`` guard). :func:`entries`
evaluates such a vector symbolically: each entry is a constant or ``m``
times one dim of one value. A coupled group then accepts a ``Shape`` of a
value with units when every path from it ends in the shape input of a
Reshape or Expand (:func:`shape_terminals`), and that node's rule checks,
with :func:`check_entries`, that the one entry reading the units' dim is
the entry of its own channel axis, with the right multiple: the entry then
follows the pruning at run time and needs no edit. An entry stated by a
constant deep in the arithmetic (``n_rep`` of ``Shape(k)[1] * n_rep``
for query heads within their groups, the Where-guarded Expand shape,
paddle2onnx's ``Cast(200)``) is edited where the constant is read
(:func:`source_edit`) when everything computed from it ends in this one
shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse
from graphopt.analysis.groups.rules import attr_int, const_ints, const_target, norm

__all__ = ["Entry", "entries", "shape_terminals", "check_entries", "source_edit"]

_MAX_DEPTH = 24


@dataclass(frozen=True)
class Entry:
    """One entry of a shape vector: ``const`` when ``value`` is None, else
    ``mult`` times dim ``axis`` of ``value``.

    ``source``: where a constant entry (or a dim entry's ``mult``) is
    stated: ``(constant value, element, reader node, reader input)``, the
    constant as one node reads it; None when it is computed."""

    const: int = 0
    value: ir.Value | None = None
    axis: int = 0
    mult: int = 1
    source: tuple | None = None


def _scaled(e: Entry, c: Entry) -> Entry:
    if e.value is None:
        return Entry(e.const * c.const)
    return Entry(0, e.value, e.axis, e.mult * c.const, c.source if e.mult == 1 and e.source is None else None)


def entries(b: Builder, value: ir.Value | None, depth: int = 0, reader: ir.Node | None = None,
            position: int = 0) -> list[Entry] | None:
    """The entries of the int vector (or scalar, as one entry) ``value``;
    None when some entry is not a constant or a multiple of one dim.

    Understood: constants, ``Shape`` (start/end), ``Gather`` / ``Slice`` by
    constants, ``Unsqueeze``, ``Squeeze``, ``Cast``, ``Identity``,
    ``Reshape``, ``Concat``, ``Mul`` by a constant scalar, and
    ``Where(Equal(s, c), t, s)`` where no entry of ``s`` can equal ``c``
    (a dim is never negative)."""
    if value is None or depth > _MAX_DEPTH:
        return None
    if ir.is_constant(value):
        ints = const_ints(value)
        if ints is None:
            return None
        return [Entry(v, source=None if reader is None else (value, i, reader, position)) for i, v in enumerate(ints)]
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    first = node.inputs[0] if node.inputs else None
    if op == "Shape":
        r = b.dims.rank(first)
        if r is None:
            return None
        lo = norm(attr_int(node, "start", 0), r)
        hi = norm(attr_int(node, "end", r), r) if attr_int(node, "end") is not None else r
        return [Entry(0, first, a) for a in range(max(0, lo), min(hi, r))]
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape"):
        return entries(b, first, depth + 1, node, 0)
    if op == "Concat":
        out: list[Entry] = []
        for k, v in enumerate(node.inputs):
            part = entries(b, v, depth + 1, node, k)
            if part is None:
                return None
            out += part
        return out
    if op == "Gather":
        data, idx = entries(b, first, depth + 1, node, 0), const_ints(node.inputs[1])
        if data is None or idx is None or attr_int(node, "axis", 0) != 0 or not data:
            return None
        return [data[norm(i, len(data))] for i in idx]
    if op == "Slice":
        data = entries(b, first, depth + 1, node, 0)
        starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
        steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
        if data is None or starts is None or ends is None or len(starts) != 1 or steps != [1]:
            return None
        return data[slice(starts[0], ends[0])]
    if op == "Mul":
        a, c = entries(b, first, depth + 1, node, 0), entries(b, node.inputs[1], depth + 1, node, 1)
        if a is None or c is None:
            return None
        if len(c) == 1 and c[0].value is None:
            return [_scaled(e, c[0]) for e in a]
        if len(a) == 1 and a[0].value is None:
            return [_scaled(e, a[0]) for e in c]
        return None
    if op == "Where":
        return _where(b, node, depth)
    if op == "ConstantOfShape":
        attr = node.attributes.get("value")
        fill = 0 if attr is None else int(attr.value.numpy().reshape(-1)[0])
        length = _length(b, first, depth)
        return None if length is None else [Entry(fill)] * length
    return None


def _length(b: Builder, shape: ir.Value | None, depth: int) -> int | None:
    """The one entry of the 1-element shape vector ``shape`` when it is a
    constant, or the length of ``v`` when it is ``Shape(v)`` of a vector."""
    producer = shape.producer() if shape is not None else None
    if producer is not None and producer.op_type == "Shape" and b.dims.rank(producer.inputs[0]) == 1:
        inner = entries(b, producer.inputs[0], depth + 1)
        return None if inner is None else len(inner)
    one = entries(b, shape, depth + 1)
    return one[0].const if one is not None and len(one) == 1 and one[0].value is None else None


def _where(b: Builder, node: ir.Node, depth: int) -> list[Entry] | None:
    """``Where(Equal(s, c), t, s)`` is ``s`` when no entry of ``s`` can equal ``c``."""
    cond, other, s = node.inputs
    eq = cond.producer() if cond is not None else None
    if eq is None or eq.op_type != "Equal" or s not in eq.inputs:
        return None
    against = eq.inputs[1] if eq.inputs[0] is s else eq.inputs[0]
    se, ce = entries(b, s, depth + 1, node, 2), entries(b, against, depth + 1)
    if se is None or ce is None or (len(ce) != len(se) and len(ce) != 1):
        return None
    ce = ce * len(se) if len(ce) == 1 else ce
    for e, c in zip(se, ce):
        if c.value is not None:
            return None
        if (e.value is None and e.const == c.const) or (e.value is not None and c.const >= 0):
            return None
    return se


_PATH = ("Gather", "Slice", "Squeeze", "Unsqueeze", "Cast", "Identity", "Concat", "Mul", "Equal", "Where",
         "ConstantOfShape")


def shape_terminals(value: ir.Value, depth: int = 0) -> list[ir.Node] | None:
    """The Reshape and Expand nodes whose shape input every path of shape
    arithmetic from ``value`` ends in; None when a path ends elsewhere (a
    graph output, another op). A ``Shape`` of such a value reads only its
    length and ends its path."""
    if depth > _MAX_DEPTH or value.is_graph_output():
        return None
    found: list[ir.Node] = []
    for use in value.uses():
        node = use.node
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in ("Reshape", "Expand") and use.idx == 1:
            found.append(node)
            continue
        if node.op_type == "Shape":
            continue
        if node.op_type in _PATH or (node.op_type == "Reshape" and use.idx == 0):
            more = shape_terminals(node.outputs[0], depth + 1)
            if more is None:
                return None
            found += [n for n in more if n not in found]
            continue
        return None
    return found


def check_entries(b: Builder, node: ir.Node, target: ir.Value, index: int, per_unit: int) -> bool | None:
    """Check a Reshape target / Expand shape whose entries :func:`entries` can
    read: the entries that read a dim carrying this group's units (with the
    same axis) must be entry ``index`` alone, ``per_unit`` per removed unit.

    Returns:
        True: entry ``index`` reads the units' own count (nothing to edit);
        False: it is a constant (the caller edits it); None: the entries
        are not readable (the caller's constant/Concat logic decides).

    Raises:
        Refuse: another entry reads the units' count, or the multiple is wrong.
    """
    es = entries(b, target)
    if es is None or index >= len(es):
        return None
    for j, e in enumerate(es):
        s = b.site(e.value) if e.value is not None else None
        if s is None or s.axis != e.axis:
            continue
        if j != index:
            raise Refuse(f"{node.op_type} {node.name}: entry {j} of its shape reads the channel count of "
                         f"{e.value.name} at run time")
        if e.mult * s.unit * len(s.starts) != per_unit:
            raise Refuse(f"{node.op_type} {node.name}: the entry of the channel axis reads {e.mult} x the channel "
                         f"count of {e.value.name}, not the units it needs")
    e = es[index]
    if e.value is None:
        return False
    s = b.site(e.value)
    if s is None or s.axis != e.axis:
        dim = (b.dims.of(e.value) or ())[e.axis:e.axis + 1]
        edit = _source_edit(node, es, index, per_unit // dim[0]) if dim and dim[0] and per_unit % dim[0] == 0 \
            else None
        if edit is not None:  # dim x n_rep of a tensor the units do not reach: n_rep is edited
            b.edit(node, edit)
        else:
            b.pending[node] = (f"{node.op_type} {node.name}: the entry of the channel axis reads dim {e.axis} of "
                               f"{e.value.name}, which does not carry the units")
    return True


def source_edit(b: Builder, node: ir.Node, target: ir.Value, index: int, per_unit: int) -> ShapeEdit | None:
    """An edit of the constant that states entry ``index`` of ``target`` deep
    in shape arithmetic (:attr:`Entry.source`): allowed when that constant
    element feeds no other entry and everything computed from it ends in
    this node's shape (:func:`shape_terminals`). None when not."""
    es = entries(b, target)
    if es is None or index >= len(es) or es[index].value is not None or es[index].const <= 0:
        return None  # (a 0 entry copies an input dim)
    return _source_edit(node, es, index, per_unit)


def _source_edit(node: ir.Node, es: list[Entry], index: int, per_unit: int) -> ShapeEdit | None:
    src = es[index].source
    if src is None or sum(1 for e in es if e.source == src) != 1:
        return None
    value, element, reader, position = src
    if shape_terminals(reader.outputs[0]) != [node]:
        return None
    name, attribute = const_target(value)
    return ShapeEdit(name, attribute, element, per_unit, (f"{reader.name}#{position}",))

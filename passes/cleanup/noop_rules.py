"""The rules of ``eliminate-noops``: one function per no-op, grouped by family.

A rule looks at one node (and, for pairs, the node producing its first input)
and returns a :class:`Match` or None. A match either names the value the
node's first output equals (``source``: the pass bypasses the node), or holds
an in-place ``edit`` that rewires the node past its producer (pairs that
compose into one node). Rules never change a value's dtype or shape, so the
shapes inferred before the pass stay valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.passes.cleanup.dropout import inference_mode

__all__ = ["Match", "RULES", "Site", "lossless_cast", "match"]

DT = ir.DataType
_INTS: dict[DT, tuple[int, bool]] = {
    DT.INT8: (8, True), DT.INT16: (16, True), DT.INT32: (32, True), DT.INT64: (64, True),
    DT.UINT8: (8, False), DT.UINT16: (16, False), DT.UINT32: (32, False), DT.UINT64: (64, False),
}
_FLOAT_DIGITS = {DT.FLOAT16: 11, DT.BFLOAT16: 8, DT.FLOAT: 24, DT.DOUBLE: 53}
_FLOAT_WIDENS = {(DT.FLOAT16, DT.FLOAT), (DT.FLOAT16, DT.DOUBLE), (DT.BFLOAT16, DT.FLOAT),
                 (DT.BFLOAT16, DT.DOUBLE), (DT.FLOAT, DT.DOUBLE)}
_WHOLE = 2**31 - 1  # Slice ends at or past this mean "to the end" (exporters use INT32/INT64 max)
_SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
_MAX_CONST = 1 << 16  # identity-element constants are read only up to this many elements


@dataclass
class Match:
    """A no-op found by a rule.

    Attributes:
        family: the stats key (``cast``, ``transpose``, ...).
        source: the value the node's first output equals; the pass bypasses the node.
        edit: an in-place rewrite of the node (used when ``source`` is None).
        neutral: the edit's new form gives the node's output the dims (and,
            for a shape value, the contents) ONNX shape inference gave it
            before: Cast(Cast(x)) -> Cast(x), two Unsqueezes -> one, two
            Transposes -> one (inference carries dims and data through
            them); Reshape(Reshape(x)) -> Reshape(x) only when x has a
            symbolic dim or the output is static (else its -1 may be solved
            from x where it was not from the middle tensor).
    """

    family: str
    source: ir.Value | None = None
    edit: Callable[[], None] | None = None
    neutral: bool = False


@dataclass(frozen=True)
class Site:
    """Where the rules run: the default-domain opset, and whether the graph
    can hold new initializers (not a function body)."""

    opset: int
    initializers: bool = True
    names: dict = field(default_factory=dict, compare=False)  # id(graph) -> (graph, ir.value_names(graph))

    def initializer(self, graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
        """``ir.add_initializer`` with the graph's names collected once per run."""
        entry = self.names.get(id(graph))
        if entry is None or entry[0] is not graph:
            entry = self.names[id(graph)] = (graph, ir.value_names(graph))
        return ir.add_initializer(graph, array, name, entry[1])


# ---------------------------------------------------------------- helpers

def _std(node: ir.Node | None, *op_types: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _ints(value: ir.Value | None) -> list[int] | None:
    """A small constant integer tensor as a list (rank 0 or 1), or None."""
    array = ir.const_array(value, max_elements=_MAX_CONST)
    if array is None or array.ndim > 1 or array.dtype.kind not in "iu":
        return None
    return [int(v) for v in array.reshape(-1)]


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else [int(v) for v in attr.as_ints()]


def _operand(node: ir.Node, attr: str, index: int) -> list[int] | None:
    """Integer operand given as an attribute (older opsets) or a constant input."""
    from_attr = _attr_ints(node, attr)
    return from_attr if from_attr is not None else _ints(_input(node, index))


def _has_operand(node: ir.Node, attr: str, index: int) -> bool:
    return attr in node.attributes or _input(node, index) is not None


def _dims(value: ir.Value | None) -> list[int | ir.SymbolicDim] | None:
    if value is None or value.shape is None:
        return None
    return list(value.shape)


def _same_dim(a: object, b: object) -> bool:
    """Dims known to be equal: equal ints, or symbolic dims with the same name
    (shape inference gives one name to one run-time size)."""
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int) and a == b
    name_a, name_b = getattr(a, "value", None), getattr(b, "value", None)
    return bool(name_a) and name_a == name_b


def _same_shape(a: ir.Value | None, b: ir.Value | None) -> bool:
    da, db = _dims(a), _dims(b)
    return da is not None and db is not None and len(da) == len(db) and all(map(_same_dim, da, db))


def _rank(value: ir.Value | None) -> int | None:
    dims = _dims(value)
    return None if dims is None else len(dims)


def _norm_axes(axes: list[int], rank: int | None) -> set[int] | None:
    if rank is None:
        return set(axes) if all(a >= 0 for a in axes) or all(a < 0 for a in axes) else None
    return {a + rank if a < 0 else a for a in axes}


def _broadcast_safe(small: list | None, dims: list | None) -> bool:
    """True when broadcasting a tensor of shape ``small`` against ``dims``
    leaves ``dims`` unchanged (rank not larger; each dim 1 or the same)."""
    if small is None:
        return False
    if dims is None and all(isinstance(d, int) and d == 1 for d in small):
        return len(small) == 0
    if dims is None or len(small) > len(dims):
        return False
    return all((isinstance(s, int) and s == 1) or _same_dim(s, d) for s, d in zip(reversed(small), reversed(dims)))


def lossless_cast(src: DT, dst: DT) -> bool:
    """True when ``dst`` represents every value of ``src`` exactly, so
    casting ``src -> dst -> src`` returns the input (NaN stays NaN)."""
    if src == dst:
        return True
    if src == DT.BOOL:
        return dst in _INTS or dst in _FLOAT_DIGITS
    if src in _INTS:
        bits, signed = _INTS[src]
        if dst in _INTS:
            dbits, dsigned = _INTS[dst]
            return dbits >= bits if signed == dsigned else (dsigned and dbits > bits)
        return dst in _FLOAT_DIGITS and _FLOAT_DIGITS[dst] >= bits - signed
    return (src, dst) in _FLOAT_WIDENS


def _integral(dtype: DT) -> bool:
    return dtype == DT.BOOL or dtype in _INTS


# ---------------------------------------------------------------- rules

def identity(node: ir.Node, site: Site) -> Match | None:
    """ONNX Identity: the output is the input."""
    return Match("identity", node.inputs[0]) if node.inputs and node.inputs[0] is not None else None


def dropout(node: ir.Node, site: Site) -> Match | None:
    """ONNX Dropout in inference mode with its mask unread (see eliminate-dropout)."""
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    if mask is not None and (mask.uses() or mask.is_graph_output()):
        return None
    return Match("dropout", node.inputs[0]) if inference_mode(node, site.opset) else None


def cast(node: ir.Node, site: Site) -> Match | None:
    """Cast to the input's dtype; Cast(Cast(x: A, to=B), to=C) when A -> B is
    lossless: x itself when C == A, else Cast(x, to=C) when that gives the same
    values (A -> C lossless too, C integral (truncation/non-zero test of the
    same value), or A and B both integral)."""
    attr = node.attributes.get("to")
    x = node.inputs[0]
    if attr is None or x is None:
        return None
    c = DT(attr.as_int())
    if x.dtype == c:
        return Match("cast", x)
    first = x.producer()
    if not _std(first, "Cast") or first.inputs[0] is None or first.inputs[0].dtype is None:
        return None
    src = first.inputs[0]
    a, b = src.dtype, DT(first.attributes["to"].as_int())
    if not lossless_cast(a, b):
        return None
    if c == a:
        return Match("cast", src)
    if lossless_cast(a, c) or _integral(c) or (_integral(a) and _integral(b)):
        return Match("cast", edit=lambda: node.replace_input_with(0, src), neutral=True)
    return None


def _reshape_target_is_input(dims: list | None, target: list, allowzero: bool) -> bool:
    """Reshape's ``target`` (0 copies the input dim unless allowzero, one -1
    takes the rest; a symbolic entry is a run-time dim) gives back ``dims``.
    A symbolic entry equal to the input's dim is right even when it is 0 at
    run time: copying that dim gives 0 too."""
    if dims is None or len(target) != len(dims) or target.count(-1) > 1:
        return False
    return all(_same_dim(t, d) if not isinstance(t, int) else
               (t == -1 or (t == 0 and not allowzero) or (isinstance(d, int) and d == t))
               for t, d in zip(target, dims))


def _shape_entries(value: ir.Value | None, depth: int = 0) -> list | None:
    """A 1-D int64 shape tensor as a list of dims (ints, or symbolic dims of
    some tensor), when built from constants, ``Shape`` (with start/end),
    ``Gather`` of a Shape by constant indices, ``Unsqueeze``/``Squeeze`` of a
    single entry, and ``Concat``; None otherwise. Shape-computing subgraphs
    of exporters (``Concat(Shape(a)[0:1], [-1])``) are written this way."""
    ints = _ints(value)
    if ints is not None:
        return ints
    producer = value.producer() if value is not None else None
    if depth > 8 or producer is None or producer.domain not in ("", "ai.onnx"):
        return None
    op = producer.op_type
    if op == "Shape":
        dims = _dims(producer.inputs[0])
        if dims is None:
            return None
        start, end = producer.attributes.get("start"), producer.attributes.get("end")
        lo = start.as_int() if start is not None else 0
        hi = end.as_int() if end is not None else len(dims)
        return dims[slice(lo, hi)]
    if op == "Concat":
        parts = [_shape_entries(v, depth + 1) for v in producer.inputs]
        return None if any(p is None for p in parts) else [d for p in parts for d in p]
    if op in ("Unsqueeze", "Squeeze"):
        inner = _shape_entries(producer.inputs[0], depth + 1)
        return inner if inner is not None and len(inner) == 1 else None
    if op == "Gather":
        source, index = _shape_entries(producer.inputs[0], depth + 1), _ints(producer.inputs[1])
        if source is None or index is None or not all(-len(source) <= i < len(source) for i in index):
            return None
        return [source[i] for i in index]
    return None


def _allowzero(node: ir.Node) -> bool:
    attr = node.attributes.get("allowzero")
    return attr is not None and attr.as_int() != 0


def _reshape_target(node: ir.Node) -> list[int] | None:
    return _operand(node, "shape", 1)


def reshape_same(node: ir.Node, site: Site) -> Match | None:
    """Reshape/Flatten/Squeeze/Unsqueeze whose output has the input's shape
    (Reshape: by its target, constant or computed from Shape ops; any of
    them: by inferred shapes)."""
    x, y = node.inputs[0], node.outputs[0]
    if x is None:
        return None
    if node.op_type == "Reshape":
        target = _reshape_target(node) if "shape" in node.attributes else _shape_entries(_input(node, 1))
        if target is not None and _reshape_target_is_input(_dims(x), target, _allowzero(node)):
            return Match("reshape", x)
    if node.op_type == "Flatten":
        axis = node.attributes.get("axis")
        axis = 1 if axis is None else axis.as_int()
        if _rank(x) == 2 and axis in (1, -1):
            return Match("reshape", x)
    if _same_shape(x, y):
        return Match("reshape", x)
    return None


def _squeeze_axes(node: ir.Node, source: ir.Value) -> set[int] | None:
    """Axes a Squeeze removes, normalized to ``source``'s rank when known."""
    if _has_operand(node, "axes", 1):
        axes = _operand(node, "axes", 1)
        return None if not axes else _norm_axes(axes, _rank(source))
    dims = _dims(source)
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return {i for i, d in enumerate(dims) if d == 1}


def reshape_pair(node: ir.Node, site: Site) -> Match | None:
    """Two shape ops in a row (they keep element order, so the pair is one
    Reshape): x itself when the second's output has x's shape, or when
    Unsqueeze/Squeeze use the same axes; Reshape(x, s2) when the second is a
    Reshape with a constant target whose 0 entries copy dims that x shares."""
    mid = node.inputs[0]
    first = mid.producer() if mid is not None else None
    if not _std(first, *_SHAPE_OPS) or first.inputs[0] is None:
        return None
    x = first.inputs[0]
    if _same_shape(x, node.outputs[0]):
        return Match("reshape", x)
    pair = (first.op_type, node.op_type)
    if pair in (("Unsqueeze", "Squeeze"), ("Squeeze", "Unsqueeze")):
        ref = mid if pair[0] == "Unsqueeze" else x  # both axes lists index this tensor
        unsq_node = first if pair[0] == "Unsqueeze" else node
        sq_node = node if pair[0] == "Unsqueeze" else first
        unsq = _operand(unsq_node, "axes", 1)
        sq = _squeeze_axes(sq_node, ref)
        if unsq and sq is not None and _norm_axes(unsq, _rank(ref)) == sq:
            return Match("reshape", x)
        return None
    if pair == ("Unsqueeze", "Unsqueeze"):
        return _merge_unsqueezes(first, node, site)
    if node.op_type != "Reshape" or "shape" in node.attributes:
        return None
    target = _reshape_target(node)
    if target is None:
        return None
    if not _allowzero(node):
        first_target = _reshape_target(first) if first.op_type == "Reshape" and not _allowzero(first) else None
        xd, md = _dims(x) or [], _dims(mid) or []
        for i, t in enumerate(target):
            if t != 0:
                continue
            copied = first_target is not None and i < len(first_target) and first_target[i] == 0
            if not copied and not (i < len(xd) and i < len(md) and _same_dim(xd[i], md[i])):
                return None
    # Inference solves a -1 from the data's size only when all its dims are
    # ints: with a symbolic one in x (or no unknown left in the output) the
    # new form infers the same dims.
    out_dims, x_dims = _dims(node.outputs[0]), _dims(x)
    neutral = x_dims is not None and out_dims is not None and (
        not all(isinstance(d, int) for d in x_dims) or all(isinstance(d, int) for d in out_dims))
    return Match("reshape", edit=lambda: node.replace_input_with(0, x), neutral=neutral)


def _merge_unsqueezes(first: ir.Node, node: ir.Node, site: Site) -> Match | None:
    """Unsqueeze(Unsqueeze(x, a1), a2) -> Unsqueeze(x, a) (axes name output
    positions: the second's axes stay, the first's move to the positions the
    middle tensor's dims land on)."""
    a1, a2, x = _operand(first, "axes", 1), _operand(node, "axes", 1), first.inputs[0]
    rank = _rank(x)
    by_attr = "axes" in node.attributes
    if not a1 or not a2 or rank is None or by_attr != ("axes" in first.attributes):
        return None
    if not by_attr and (not site.initializers or node.graph is None):
        return None
    mid_rank, out_rank = rank + len(a1), rank + len(a1) + len(a2)
    n1, n2 = _norm_axes(a1, mid_rank), _norm_axes(a2, out_rank)
    if len(n1) != len(a1) or len(n2) != len(a2) or not all(0 <= a < out_rank for a in n2):
        return None
    rest = [i for i in range(out_rank) if i not in n2]
    if not all(0 <= a < mid_rank for a in n1):
        return None
    merged = sorted(n2 | {rest[a] for a in n1})

    def fuse() -> None:
        if by_attr:
            node.attributes["axes"] = ir.Attr("axes", ir.AttributeType.INTS, merged)
        else:
            axes = site.initializer(node.graph, np.asarray(merged, dtype=np.int64), "unsqueeze_axes")
            node.replace_input_with(1, axes)
        node.replace_input_with(0, x)

    return Match("reshape", edit=fuse, neutral=True)


def _perm(node: ir.Node) -> list[int] | None:
    perm = _attr_ints(node, "perm")
    if perm is None:
        rank = _rank(node.inputs[0])
        return None if rank is None else list(reversed(range(rank)))
    return perm


def transpose(node: ir.Node, site: Site) -> Match | None:
    """Transpose with the identity perm; Transpose(Transpose(x, p1), p2) is x
    when p1[p2[i]] == i, else one Transpose with that composed perm."""
    perm = _perm(node)
    if perm is None or node.inputs[0] is None:
        return None
    if perm == list(range(len(perm))):
        return Match("transpose", node.inputs[0])
    first = node.inputs[0].producer()
    if not _std(first, "Transpose") or first.inputs[0] is None:
        return None
    inner = _perm(first)
    if inner is None or len(inner) != len(perm):
        return None
    composed = [inner[i] for i in perm]
    x = first.inputs[0]
    if composed == list(range(len(perm))):
        return Match("transpose", x)

    def fuse() -> None:
        node.attributes["perm"] = ir.Attr("perm", ir.AttributeType.INTS, composed)
        node.replace_input_with(0, x)

    return Match("transpose", edit=fuse, neutral=True)


def expand(node: ir.Node, site: Site) -> Match | None:
    """Expand to a shape that broadcasts to the input's own shape; Tile with
    all repeats 1; either when the inferred output shape is the input's."""
    x = node.inputs[0]
    if x is None:
        return None
    if node.op_type == "Expand":
        shape = _shape_entries(_input(node, 1))
        if shape is not None and _broadcast_safe(shape, _dims(x)):
            return Match("expand", x)
    else:
        repeats = _ints(_input(node, 1))
        if repeats is not None and all(r == 1 for r in repeats):
            return Match("expand", x)
    return Match("expand", x) if _same_shape(x, node.outputs[0]) else None


def slice_whole(node: ir.Node, site: Site) -> Match | None:
    """Slice whose every sliced axis runs from 0 (or before -dim) to the end
    (the dim, or the INT32/INT64 max sentinel) with step 1."""
    x = node.inputs[0]
    starts, ends = _operand(node, "starts", 1), _operand(node, "ends", 2)
    if x is None or starts is None or ends is None or len(starts) != len(ends):
        return None
    axes = _operand(node, "axes", 3) if _has_operand(node, "axes", 3) else list(range(len(starts)))
    steps = _ints(_input(node, 4)) if _input(node, 4) is not None else [1] * len(starts)
    if axes is None or steps is None or not (len(axes) == len(steps) == len(starts)):
        return None
    dims = _dims(x)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if axis < 0 and dims is not None:
            axis += len(dims)
        dim = dims[axis] if dims is not None and 0 <= axis < len(dims) else None
        known = isinstance(dim, int)
        if step != 1:
            return None
        if not (start == 0 or (known and start <= -dim)):
            return None
        if not (end >= _WHOLE or (known and end >= dim)):
            return None
    return Match("slice", x)


def pad(node: ir.Node, site: Site) -> Match | None:
    """Pad with all pads 0 (any mode)."""
    pads = _attr_ints(node, "pads") or _attr_ints(node, "paddings") or _ints(_input(node, 1))
    if pads is None or any(pads) or node.inputs[0] is None:
        return None
    return Match("pad", node.inputs[0])


def concat(node: ir.Node, site: Site) -> Match | None:
    """Concat of a single input."""
    return Match("concat", node.inputs[0]) if len(node.inputs) == 1 and node.inputs[0] is not None else None


def split(node: ir.Node, site: Site) -> Match | None:
    """Split into a single output (its split, if any, must be the whole axis)."""
    return Match("split", node.inputs[0]) if len(node.outputs) == 1 and node.inputs[0] is not None else None


_UNIT = {"Mul": (1, True), "Add": (0, True), "Sub": (0, False), "Div": (1, False), "Pow": (1, False),
         "And": (True, True), "Or": (False, True), "Xor": (False, True)}


def arith(node: ir.Node, site: Site) -> Match | None:
    """x*1, 1*x, x+0, 0+x, x-0, x/1, x**1, x and True, x or False, x xor
    False (either side where the op commutes) with a constant of identity
    elements that does not broadcast x to a larger shape (same dtype by the
    operator's type constraint)."""
    unit, commutes = _UNIT[node.op_type]
    if len(node.inputs) != 2 or None in node.inputs:
        return None
    orders = [(0, 1), (1, 0)] if commutes else [(0, 1)]
    for xi, ci in orders:
        x, c = node.inputs[xi], node.inputs[ci]
        tensor = ir.const_tensor(c)
        if tensor is None or (x.dtype is not None and tensor.dtype != x.dtype):
            continue
        small = list(tensor.shape) if tensor.shape is not None else None
        if not (_broadcast_safe(small, _dims(x)) or _same_shape(x, node.outputs[0])):
            continue
        array = ir.const_array(c, max_elements=_MAX_CONST)
        if array is not None and bool(np.all(array == unit)):
            return Match("arith", x)
    return None


RULES: dict[str, tuple[Callable[[ir.Node, Site], Match | None], ...]] = {
    "Identity": (identity,),
    "Dropout": (dropout,),
    "Cast": (cast,),
    "Reshape": (reshape_same, reshape_pair),
    "Flatten": (reshape_same, reshape_pair),
    "Squeeze": (reshape_same, reshape_pair),
    "Unsqueeze": (reshape_same, reshape_pair),
    "Transpose": (transpose,),
    "Expand": (expand,),
    "Tile": (expand,),
    "Slice": (slice_whole,),
    "Pad": (pad,),
    "Concat": (concat,),
    "Split": (split,),
    **{op: (arith,) for op in _UNIT},
}
"""Rules by operator type (default domain), tried in order."""


def match(node: ir.Node, site: Site) -> Match | None:
    """The first rule that matches ``node`` (default-domain ops only)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    for rule in RULES.get(node.op_type, ()):
        found = rule(node, site)
        if found is not None:
            return found
    return None

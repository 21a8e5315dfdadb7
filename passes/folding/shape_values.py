"""Symbolic values of small integer tensors (shape values), element by
element, for ``fold-shapes``: each element a known int, a symbolic dim's
name (``batch``) or unknown, propagated through the ops exporters build
shape computations from (ONNX operator specs of Shape, Gather, Concat, ...)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from graphopt import ir
from graphopt.analysis.shapes import known_dim
from graphopt.analysis.shapes import value_dims as dims_of
from graphopt.passes.cleanup.shapes import DATA_CARRIED

__all__ = ["Dim", "SymValue", "Propagator", "dims_of", "known_dim", "node_attr", "if_condition"]

Dim = int | str | None
"""One element of a shape value: a known int, a symbolic dim's name, or unknown."""


@dataclass(frozen=True)
class SymValue:
    """A small integer tensor (scalar or 1-D) known element by element.

    Attributes:
        dims: the elements: int when known, the dim_param's name when it is a
            symbolic dim of some tensor, None when unknown.
        scalar: True for a rank-0 tensor (then ``len(dims) == 1``).
        boolean: True for a bool tensor (``Equal`` of shape values): the
            elements are then True/False/None.
    """

    dims: tuple[Dim, ...]
    scalar: bool = False
    boolean: bool = False

    @property
    def known(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


_SMALL = 64


def _normalize(i: int, n: int) -> int | None:
    i = i + n if i < 0 else i
    return i if 0 <= i < n else None


def node_attr(node: ir.Node, name: str, default: object = None) -> object:
    """The value of the node's attribute ``name``, or ``default`` when it is
    absent or a reference to a function attribute."""
    attr = node.attributes.get(name)
    return default if attr is None or attr.is_ref() else attr.value


def if_condition(node: ir.Node, value_of: Callable[[ir.Value | None], SymValue | None]) -> bool | None:
    """The value of an If's condition when it is decided: a one-element bool
    constant, or a boolean shape value (``value_of``, the propagator's: the
    ``Equal(Size(Shape(x)), 3)`` of a rank guard) whose one element is
    known; else None (a run-time value, or a condition with several
    elements, which the ONNX If spec refuses)."""
    cond = node.inputs[0] if node.inputs else None
    if cond is None:
        return None
    tensor = ir.const_tensor(cond)
    if tensor is not None:
        if tensor.dtype != ir.DataType.BOOL or tensor.shape is None or math.prod(tensor.shape.numpy()) != 1:
            return None
        return bool(tensor.numpy().reshape(-1)[0])
    sym = value_of(cond)
    if sym is None or not sym.boolean or len(sym.dims) != 1 or sym.dims[0] is None:
        return None
    return bool(sym.dims[0])


_VISITED = frozenset({"Shape", "Size", "Identity", "Cast", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
                      "Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Where", "Reshape", "Not", "And", "Or",
                      "Greater", "Less", "GreaterOrEqual", "LessOrEqual"})
"""The ops :meth:`_Propagator.visit` gives a value for (every other op: None)."""

_ONNX_CARRIED = DATA_CARRIED | {"Shape", "Gather"}
"""Ops through which ONNX inference's data propagation carries shape values
(``DATA_CARRIED``, checked on onnx 1.23 as there; Shape with start/end and
Gather too; not Size, Div, Max, Min, Equal, Where, Identity or Reshape)."""


_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "Greater": lambda x, y: x > y, "Less": lambda x, y: x < y,
    "GreaterOrEqual": lambda x, y: x >= y, "LessOrEqual": lambda x, y: x <= y}
"""The order comparisons :meth:`Propagator._compare` decides (ONNX operator specs)."""


class Propagator:
    """Symbolic values of shape tensors, node by node (one instance per model,
    so subgraphs see the outer graph's values)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.values: dict[ir.Value, SymValue] = {}
        self._refine: Callable[[ir.Value], tuple[Dim, ...] | None] | None = None
        self._lazy: dict[ir.Value, tuple[ir.Value, int, int | None]] = {}
        self.refined = 0
        """How many dims :meth:`dims` took from ``refine``."""
        self.unseen: set[ir.Value] = set()
        """Values whose contents ONNX inference's data propagation did not have (see :meth:`visit`)."""

    def _sharpened(self, value: ir.Value, sym: SymValue) -> SymValue:
        """``sym`` (a Shape output's value with unknown elements) with the
        dims ``refine`` knows. Asked only where an unknown element is read,
        so that the symbolic inference runs only when it can matter."""
        source = self._lazy.pop(value, None)
        if source is None or all(known_dim(d) is not None for d in sym.dims):
            return sym
        dims = self.dims(source[0])
        if dims is None:
            return sym
        sharp = SymValue(dims[slice(source[1], source[2])])
        self.values[value] = sharp
        if sharp != sym:
            self.unseen.add(value)
        return sharp

    def dims(self, value: ir.Value) -> tuple[Dim, ...] | None:
        """The value's dims as ONNX inference left them, with each dim it
        could not name (None, ``unk__N``) taken from ``refine`` (the strict
        symbolic dims of ``shape_dims.NativeDims``) where that knows it."""
        dims = dims_of(value)
        if dims is None and self._refine is not None:
            return self._refine(value)  # no rank from inference: an If's output, say (NativeDims._if)
        if dims is None or self._refine is None or all(known_dim(d) is not None for d in dims):
            return dims
        better = self._refine(value)
        if better is None or len(better) != len(dims):
            return dims
        out = tuple(d if known_dim(d) is not None or known_dim(b) is None else b for d, b in zip(dims, better))
        self.refined += sum(a != b for a, b in zip(dims, out))
        return out

    def get(self, value: ir.Value | None) -> SymValue | None:
        if value is None:
            return None
        if value in self.values:
            return self.values[value]
        tensor = ir.const_tensor(value)
        if tensor is None or tensor.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            return None
        if len(tensor.shape) > 1 or math.prod(tensor.shape.numpy()) > _SMALL:
            return None
        array = tensor.numpy()
        sym = SymValue(tuple(int(x) for x in array.reshape(-1)), array.ndim == 0)
        self.values[value] = sym
        return sym

    def take_values(self, other: Propagator) -> None:
        """Start from ``other``'s values (a walk of the same model that this
        one continues under more assumptions, see ``shape_worlds``)."""
        self.values.update(other.values)
        self._lazy.update(other._lazy)

    def set_refine(self, refine: Callable[[ir.Value], tuple[Dim, ...] | None]) -> None:
        """Set ``refine``: the dims of a value whose IR dims have unknowns (a
        tuple as long as the rank, None elements where it does not know
        either), asked when a Shape output's unknown element is read."""
        self._refine = refine

    def read(self, value: ir.Value | None) -> SymValue | None:
        """:meth:`get`, sharpened (see :meth:`_sharpened`) when it is a Shape
        output with unknown elements: the reader uses every element."""
        sym = self.get(value)
        if sym is not None and value in self._lazy:
            sym = self._sharpened(value, sym)  # type: ignore[arg-type]
        return sym

    def _ints(self, value: ir.Value | None) -> list[int] | None:
        sym = self.get(value)
        return list(sym.dims) if sym is not None and sym.known else None  # type: ignore[arg-type]

    def visit(self, node: ir.Node) -> SymValue | None:
        """The symbolic value of the node's first output, or None. The output
        goes into :attr:`unseen` when ONNX inference's data propagation did
        not have that value: the op is not one it carries values through
        (``DATA_CARRIED``, Shape and Gather), or an input is unseen (a
        Shape output whose dims ``refine`` sharpened is)."""
        sym = self._visit(node)
        if sym is not None and (node.op_type not in _ONNX_CARRIED
                                or any(v in self.unseen for v in node.inputs if v is not None)):
            self.unseen.add(node.outputs[0])
        return sym

    def _visit(self, node: ir.Node) -> SymValue | None:  # noqa: C901 - one case per op
        op = node.op_type
        if op not in _VISITED or node.domain not in ("", "ai.onnx") or not node.outputs:
            return None
        ins = node.inputs
        if op == "Shape":
            dims = dims_of(ins[0])
            if dims is None and self._refine is not None:
                # No rank from inference (the output of an If whose branches
                # differ in rank): the rules may know it (the taken branch's).
                dims = self._refine(ins[0])
                if dims is not None:
                    self.unseen.add(node.outputs[0])
            if dims is None:
                return None
            start, end = node_attr(node, "start", 0), node_attr(node, "end", None)
            if self._refine is not None and any(known_dim(d) is None for d in dims):
                self._lazy[node.outputs[0]] = (ins[0], start, end)
            return SymValue(dims[slice(start, end)])
        if op == "Size":
            dims = self.dims(ins[0])
            if dims is None or not all(isinstance(d, int) for d in dims):
                return None
            return SymValue((math.prod(dims),), scalar=True)  # type: ignore[arg-type]
        if op in ("Identity", "Cast"):
            to = node_attr(node, "to")
            if op == "Cast" and to == ir.DataType.BOOL.value:  # aten::Bool of a guard: non-zero is True
                sym = self.read(ins[0])
                if sym is None or sym.boolean:
                    return sym
                return SymValue(tuple(d != 0 if isinstance(d, int) else None for d in sym.dims), sym.scalar,
                                boolean=True)
            if op == "Cast" and to not in (ir.DataType.INT64.value, ir.DataType.INT32.value):
                return None
            sym = self.read(ins[0])
            if op == "Cast" and sym is not None and sym.boolean:  # bool -> int: True/False become 1/0
                return SymValue(tuple(None if d is None else int(d) for d in sym.dims), sym.scalar)
            return sym
        data = self.get(ins[0]) if ins else None
        if data is None:
            return None
        if op not in ("Gather", "Slice") and ins[0] in self._lazy:
            data = self._sharpened(ins[0], data)
        if op == "Gather" and node_attr(node, "axis", 0) in (0, -1) and not data.scalar:
            idx = self.get(ins[1])
            if idx is None or not idx.known:
                return None
            picked = [_normalize(int(i), len(data.dims)) for i in idx.dims]  # type: ignore[arg-type]
            if any(p is None for p in picked):
                return None
            if ins[0] in self._lazy and any(known_dim(data.dims[p]) is None for p in picked):  # type: ignore[index]
                data = self._sharpened(ins[0], data)
            return SymValue(tuple(data.dims[p] for p in picked), idx.scalar)  # type: ignore[index]
        if op == "Unsqueeze" and data.scalar:
            axes = node_attr(node, "axes") if self.opset < 13 else self._ints(ins[1] if len(ins) > 1 else None)
            if axes is None or list(axes) not in ([0], [-1]):
                return None
            return SymValue(data.dims, boolean=data.boolean)
        if op == "Squeeze" and not data.scalar and len(data.dims) == 1:
            return SymValue(data.dims, scalar=True, boolean=data.boolean)  # a guard's [1] condition to a scalar
        if op == "Concat" and not data.scalar:
            parts = [self.read(v) for v in ins]
            if any(p is None or p.scalar for p in parts):
                return None
            return SymValue(tuple(d for p in parts for d in p.dims))  # type: ignore[union-attr]
        if op == "Slice" and not data.scalar:
            if self.opset >= 10:
                starts, ends = self._ints(ins[1]), self._ints(ins[2])
                axes = self._ints(ins[3]) if len(ins) > 3 and ins[3] is not None else [0]
                steps = self._ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1]
            else:  # opset 1-9: starts/ends/axes are attributes (older paddle2onnx exports)
                starts, ends = node_attr(node, "starts"), node_attr(node, "ends")
                axes, steps = node_attr(node, "axes", [0]), [1]
                starts, ends, axes = (None if a is None else list(a) for a in (starts, ends, axes))
            if not starts or not ends or axes not in ([0], [-1]) or not steps or steps[0] == 0:
                return None
            window = slice(*_py_slice(starts[0], ends[0], steps[0], len(data.dims)))
            if ins[0] in self._lazy and any(known_dim(d) is None for d in data.dims[window]):
                data = self._sharpened(ins[0], data)
            return SymValue(tuple(data.dims[window]))
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(ins) == 2 and not data.boolean:
            return self._arith(op, data, self.read(ins[1]))
        if op == "Equal" and len(ins) == 2 and not data.boolean:
            return self._equal(data, self.read(ins[1]))
        if op == "Not" and data.boolean:
            return SymValue(tuple(None if d is None else not d for d in data.dims), data.scalar, boolean=True)
        if op in ("And", "Or") and data.boolean and len(ins) == 2:
            return self._logic(op, data, self.read(ins[1]))
        if op in _COMPARE and not data.boolean and len(ins) == 2:
            return self._compare(op, data, self.read(ins[1]))
        if op == "Where" and data.boolean and len(ins) == 3:
            return self._where(data, self.read(ins[1]), self.read(ins[2]))
        if op == "Reshape" and len(ins) == 2:
            return self._reshape(data, self._ints(ins[1]))
        return None

    @staticmethod
    def _reshape(data: SymValue, target: list[int] | None) -> SymValue | None:
        """Reshape of a shape value to 1-D (``[-1]`` or its length; the
        exporters' ``Reshape(Concat(...), [-1])`` in front of Expand's guard)
        or of a one-element value to a scalar (``[]``)."""
        if target is None:
            return None
        n = len(data.dims)
        if target in ([-1], [n]):
            return SymValue(data.dims, boolean=data.boolean)
        if target == [] and n == 1:
            return SymValue(data.dims, scalar=True, boolean=data.boolean)
        return None

    @staticmethod
    def _pairs(a: SymValue, b: SymValue) -> list[tuple[Dim, Dim]] | None:
        """Elementwise pairs under 1-D broadcasting (a length-1 side repeats)."""
        n = max(len(a.dims), len(b.dims))
        if len(a.dims) not in (1, n) or len(b.dims) not in (1, n):
            return None
        return list(zip(a.dims * n if len(a.dims) == 1 else a.dims, b.dims * n if len(b.dims) == 1 else b.dims))

    def _equal(self, a: SymValue, b: SymValue | None) -> SymValue | None:
        """Equal of shape values: a dim is never negative, so ``Equal(dim, -1)``
        is False even for a symbolic dim (the exporters' ``Where(Equal(shape,
        -1), 1, shape)`` guard of Expand); the same symbol is equal to itself."""
        pairs = None if b is None or b.boolean else self._pairs(a, b)
        if pairs is None:
            return None
        out: list[Dim] = []
        for x, y in pairs:
            if isinstance(x, int) and isinstance(y, int):
                out.append(x == y)
            elif isinstance(x, int) and x < 0 or isinstance(y, int) and y < 0:
                out.append(False)
            elif isinstance(x, str) and x == y:
                out.append(True)
            else:
                out.append(None)
        return SymValue(tuple(out), a.scalar and b.scalar, boolean=True)  # type: ignore[union-attr]

    def _logic(self, op: str, a: SymValue, b: SymValue | None) -> SymValue | None:
        """And/Or of boolean shape values; a known False (And) or True (Or)
        decides the element whatever the other is."""
        pairs = None if b is None or not b.boolean else self._pairs(a, b)
        if pairs is None:
            return None
        absorbing = op == "Or"  # True for Or, False for And
        out: list[Dim] = []
        for x, y in pairs:
            if x is absorbing or y is absorbing:
                out.append(absorbing)
            elif x is None or y is None:
                out.append(None)
            else:
                out.append(bool(x) and bool(y) if op == "And" else bool(x) or bool(y))
        return SymValue(tuple(out), a.scalar and b.scalar, boolean=True)  # type: ignore[union-attr]

    def _compare(self, op: str, a: SymValue, b: SymValue | None) -> SymValue | None:
        """Greater/Less/GreaterOrEqual/LessOrEqual of shape values: decided
        for two ints (a rank against its guard), else unknown (a symbolic
        dim may be any size, 0 included)."""
        pairs = None if b is None or b.boolean else self._pairs(a, b)
        if pairs is None:
            return None
        test = _COMPARE[op]
        out: list[Dim] = [test(x, y) if isinstance(x, int) and isinstance(y, int) else None for x, y in pairs]
        return SymValue(tuple(out), a.scalar and b.scalar, boolean=True)  # type: ignore[union-attr]

    def _where(self, c: SymValue, x: SymValue | None, y: SymValue | None) -> SymValue | None:
        if x is None or y is None or x.boolean != y.boolean:
            return None
        xy = self._pairs(x, y)
        if xy is None:
            return None
        cxy = self._pairs(c, SymValue(tuple(range(len(xy)))))
        if cxy is None or len(cxy) != len(xy):
            return None
        out: list[Dim] = []
        for (cond, i) in cxy:
            a, b = xy[i]  # type: ignore[index]
            out.append(a if cond is True else b if cond is False else a if a == b and a is not None else None)
        return SymValue(tuple(out), c.scalar and x.scalar and y.scalar, boolean=x.boolean)

    @staticmethod
    def _arith(op: str, a: SymValue, b: SymValue | None) -> SymValue | None:
        if b is None:
            return None
        n = max(len(a.dims), len(b.dims))
        if len(a.dims) not in (1, n) or len(b.dims) not in (1, n):
            return None
        xs = a.dims * n if len(a.dims) == 1 else a.dims
        ys = b.dims * n if len(b.dims) == 1 else b.dims
        out: list[Dim] = []
        for x, y in zip(xs, ys):
            if not isinstance(x, int) or not isinstance(y, int) or (op == "Div" and y == 0):
                out.append(x if op in ("Mul", "Div") and y == 1 or op in ("Add", "Sub") and y == 0 else None)
                continue
            if op == "Div":
                q = abs(x) // abs(y)
                out.append(q if (x < 0) == (y < 0) else -q)
            else:
                out.append({"Add": x + y, "Sub": x - y, "Mul": x * y, "Max": max(x, y), "Min": min(x, y)}[op])
        return SymValue(tuple(out), a.scalar and b.scalar)


def _py_slice(start: int, end: int, step: int, n: int) -> tuple[int, int | None, int]:
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return min(max(start, 0), n), min(max(end, 0), n), step
    start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return start, (None if end < 0 else end), step

"""Strict symbolic dims for ``fold-shapes``: the dims ONNX shape inference
leaves unknown (``unk__N``), rederived from the producer's shape rule (ONNX
operator specs: broadcasting, Reshape, Expand, Range, Transpose, MatMul, ...)
and the values of shape tensors that :class:`~.shape_values.Propagator`
knows. No two dims are taken as equal unless the rules prove it: a named dim
broadcast against an unknown one stays unknown (either may be 1)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from graphopt import ir
from graphopt.passes.folding.shape_values import Dim, Propagator, SymValue, dims_of, if_condition, node_attr

__all__ = ["NativeDims", "model_dims"]

_SAME = frozenset({
    "Identity", "Cast", "CastLike", "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Reciprocal", "Neg", "Exp", "Log",
    "Abs", "Softmax", "LogSoftmax", "Dropout", "Not", "IsNaN", "IsInf", "Sin", "Cos", "Gelu", "LayerNormalization",
    "RMSNormalization", "Clip", "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Softplus", "Trilu", "Sign",
    "Floor", "Ceil", "Round", "BatchNormalization", "InstanceNormalization", "Selu", "Mish", "Celu"})
"""Ops whose first output has the first input's shape (ONNX operator specs)."""

_BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "And", "Or", "Xor", "Max", "Min", "Mod", "PRelu", "Sum", "Mean", "BitShift"})
"""Ops with multidirectional (numpy) broadcasting of all inputs."""


_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
"""Reductions (ONNX operator specs: axes, keepdims, noop_with_empty_axes)."""

_COVERED = _SAME | _BROADCAST | _REDUCE | frozenset({
    "Transpose", "MatMul", "Gemm", "Reshape", "Expand", "Unsqueeze", "Squeeze", "Gather", "Concat", "Split",
    "Slice", "Tile", "Flatten", "ConstantOfShape", "Range", "Shape", "Pad", "Conv", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
"""The ops :meth:`NativeDims._rule` has a shape rule for."""


def _product_dim(dims: tuple[Dim, ...]) -> Dim:
    """The product of dims as one dim (an int, a single name), else None."""
    product = _product(dims)
    return None if product is None else _as_dim(*product)


def _broadcast_pair(a: Dim, b: Dim) -> Dim:
    """One output dim of broadcasting ``a`` with ``b``, never assuming two
    unrelated dims equal: 1 gives way to the other; an int > 1 wins (a valid
    model has the other equal to it or 1); the same name is itself."""
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a is not None and a == b else None


def _broadcast(shapes: list[tuple[Dim, ...]]) -> tuple[Dim, ...]:
    n = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(n):
        dim: Dim = 1
        for s in shapes:
            j = i - (n - len(s))
            if j >= 0:
                dim = _broadcast_pair(dim, s[j])
        out.append(dim)
    return tuple(out)


def _product(dims: tuple[Dim, ...]) -> tuple[int, Counter] | None:
    """The product of dims as (int factor, names), or None with an unknown dim."""
    coef, names = 1, Counter()
    for d in dims:
        if isinstance(d, int):
            coef *= d
        elif d is None:
            return None
        else:
            names[d] += 1
    return coef, names


def _as_dim(coef: int, names: Counter) -> Dim:
    """A (factor, names) monomial as one dim: an int, a single name, or unknown."""
    names = +names
    if not names:
        return coef
    if coef == 1 and sum(names.values()) == 1:
        return next(iter(names))
    return None


def _axes(node: ir.Node, opset: int, const: Callable[[ir.Value | None], list[int] | None],
          since: int) -> list[int] | None:
    """The ``axes`` of Squeeze/Unsqueeze/Reduce*: an attribute before
    ``since``, the second input from it on."""
    if opset < since:
        value = node_attr(node, "axes")
        return None if value is None else list(value)  # type: ignore[arg-type]
    return const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None


class NativeDims:
    """``refine`` for :class:`~.shape_values.Propagator`: a value's dims,
    each unknown one of ONNX inference's taken from the producer's shape
    rule over its inputs' dims (recursively, memoized).

    Args:
        opset: the model's default-domain opset.
        value_of: the symbolic value of a small integer tensor (the
            propagator's), for Reshape/Expand targets and Range bounds.
        names: the graph inputs' dim names, the only names kept (others,
            such as ``unk__3``, mean nothing outside one inference).
    """

    def __init__(self, opset: int, value_of: Callable[[ir.Value | None], SymValue | None],
                 names: set[str]) -> None:
        self._opset = opset
        self._value_of_raw = value_of
        self._names = names
        self._memo: dict[ir.Value, tuple[Dim, ...] | None] = {}
        self.pinned: dict[ir.Value, tuple[Dim, ...]] = {}
        """Dims taken as given, before the IR's and the rules' (an If output
        whose other branch no valid run takes: ``shape_worlds.pin_if_outputs``)."""

    def __call__(self, value: ir.Value) -> tuple[Dim, ...] | None:
        """The value's dims (int, a graph input's dim name, or None), or None
        when not even its rank is known."""
        if value in self._memo:
            return self._memo[value]
        if value in self.pinned:
            return self.pinned[value]
        ir_dims = dims_of(value)
        have = None if ir_dims is None else tuple(map(self._named, ir_dims))
        if have is not None and all(d is not None for d in have):
            return have
        self._memo[value] = have  # a cycle (it cannot happen in a DAG) reads the IR's dims
        node = value.producer()
        rule = None
        if node is not None and node.domain in ("", "ai.onnx"):
            try:
                rule = self._rule(node, node.outputs.index(value))
            except (IndexError, TypeError, ValueError, ZeroDivisionError):
                rule = None
        if rule is not None and (have is None or len(rule) == len(have)):
            have = rule if have is None else tuple(h if h is not None else r for h, r in zip(have, rule))
        self._memo[value] = have
        return have

    def by_rule(self, value: ir.Value) -> tuple[Dim, ...] | None:
        """The value's dims by its producer's shape rule alone (over its
        inputs' dims as :meth:`__call__` gives them): None when the op has
        no rule here or the rule cannot tell the rank."""
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        try:
            return self._rule(node, node.outputs.index(value))
        except (IndexError, TypeError, ValueError, ZeroDivisionError):
            return None

    def _value_of(self, value: ir.Value | None) -> SymValue | None:
        """The propagator's value, with names other than the graph inputs'
        dims (``unk__N``) as unknown, as in the IR's dims."""
        sym = self._value_of_raw(value)
        if sym is None or sym.boolean:
            return sym
        dims = tuple(map(self._named, sym.dims))
        return sym if dims == sym.dims else SymValue(dims, sym.scalar)

    def _named(self, dim: Dim) -> Dim:
        """``dim`` when it is an int or a graph input's dim name, else None."""
        return dim if isinstance(dim, int) or dim in self._names else None

    def _ints(self, value: ir.Value | None) -> list[int] | None:
        sym = self._value_of(value) if value is not None else None
        return list(sym.dims) if sym is not None and sym.known else None  # type: ignore[arg-type]

    def _scalar(self, value: ir.Value | None) -> Dim:
        sym = self._value_of(value) if value is not None else None
        return sym.dims[0] if sym is not None and len(sym.dims) == 1 else None

    def _rule(self, node: ir.Node, index: int) -> tuple[Dim, ...] | None:  # noqa: C901 - one case per op
        """The output's dims by the op's shape rule, or None."""
        op, ins = node.op_type, node.inputs
        if op == "If":
            return self._if(node, index)
        d0 = self(ins[0]) if ins and ins[0] is not None else None
        if op in _SAME:
            return d0 if index == 0 else None
        if op in _BROADCAST:
            shapes = [self(v) for v in ins if v is not None]
            return None if any(s is None for s in shapes) else _broadcast(shapes)  # type: ignore[arg-type]
        if d0 is None:
            return self._sources(op, node)
        if op == "Transpose":
            perm = node_attr(node, "perm") or list(range(len(d0)))[::-1]
            return tuple(d0[p] for p in perm)  # type: ignore[union-attr]
        if op == "MatMul":
            d1 = self(ins[1])
            if d1 is None or len(d0) < 2 or len(d1) < 2:
                return None
            return _broadcast([d0[:-2], d1[:-2]]) + (d0[-2], d1[-1])
        if op == "Gemm":
            d1 = self(ins[1])
            if d1 is None:
                return None
            m = d0[1] if node_attr(node, "transA", 0) else d0[0]
            n = d1[0] if node_attr(node, "transB", 0) else d1[1]
            return (m, n)
        if op == "Reshape":
            return self._reshape(node, d0)
        if op == "Expand":
            shape = self._value_of(ins[1])
            return None if shape is None else _broadcast([d0, shape.dims])
        if op == "Unsqueeze":
            axes = _axes(node, self._opset, self._ints, 13)
            if axes is None:
                return None
            n = len(d0) + len(axes)
            axes = sorted(a + n if a < 0 else a for a in axes)
            out = list(d0)
            for a in axes:
                out.insert(a, 1)
            return tuple(out)
        if op == "Squeeze":
            axes = _axes(node, self._opset, self._ints, 13)
            if axes is None:
                return None
            drop = {a + len(d0) if a < 0 else a for a in axes}
            return tuple(d for i, d in enumerate(d0) if i not in drop)
        if op == "Gather":
            d1 = self(ins[1])
            axis = node_attr(node, "axis", 0)
            axis = axis + len(d0) if axis < 0 else axis  # type: ignore[operator]
            return None if d1 is None else d0[:axis] + d1 + d0[axis + 1:]  # type: ignore[index]
        if op == "Concat":
            parts = [self(v) for v in ins]
            axis = node_attr(node, "axis", 0)
            axis = axis + len(d0) if axis < 0 else axis  # type: ignore[operator]
            if any(p is None or len(p) != len(d0) for p in parts):
                return None
            along = [p[axis] for p in parts]  # type: ignore[index]
            nonzero = [p for p in along if p != 0]
            size = sum(along) if all(isinstance(p, int) for p in along) else nonzero[0] if len(nonzero) == 1 else None
            out = [next((p[i] for p in parts if p[i] is not None), None) for i in range(len(d0))]  # type: ignore[index]
            out[axis] = size  # type: ignore[index]
            return tuple(out)
        if op == "Split":
            return self._split(node, d0, index)
        if op == "Slice":
            return self._slice(node, d0)
        if op == "Tile":
            reps = self._ints(ins[1])
            if reps is None or len(reps) != len(d0):
                return None
            return tuple(d if r == 1 else d * r if isinstance(d, int) else None for d, r in zip(d0, reps))
        if op == "Flatten":
            axis = node_attr(node, "axis", 1)
            axis = axis + len(d0) if axis < 0 else axis  # type: ignore[operator]
            return tuple(_product_dim(part) for part in (d0[:axis], d0[axis:]))  # type: ignore[index]
        if op in _REDUCE:
            return self._reduce(node, d0)
        if op == "Pad":
            return self._pad(node, d0)
        if op in ("Conv", "MaxPool", "AveragePool", "LpPool"):
            return self._window(node, d0, index)
        if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
            return d0[:2] + (1,) * (len(d0) - 2)
        return self._sources(op, node)

    def _pad(self, node: ir.Node, data: tuple[Dim, ...]) -> tuple[Dim, ...]:
        """Pad (ONNX spec, opset 2 on: ``pads`` an attribute before 11, an
        input from 11, ``axes`` from 18): each padded dim grows by its begin
        and end pads; the rank always stays, so unknown pads give unknown
        dims of the same rank."""
        ins = node.inputs
        if self._opset < 11:
            pads = node_attr(node, "pads")
            pads = None if pads is None else list(pads)  # type: ignore[arg-type]
        else:
            pads = self._ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None
        axes = self._ints(ins[3]) if self._opset >= 18 and len(ins) > 3 and ins[3] is not None else None
        axes = list(range(len(data))) if axes is None else [a + len(data) if a < 0 else a for a in axes]
        if pads is None or len(pads) != 2 * len(axes) or not all(0 <= a < len(data) for a in axes):
            return (None,) * len(data)
        out = list(data)
        for i, a in enumerate(axes):
            begin, end = pads[i], pads[i + len(axes)]
            out[a] = out[a] + begin + end if isinstance(out[a], int) else out[a] if begin == end == 0 else None
        return tuple(out)

    def _window(self, node: ir.Node, data: tuple[Dim, ...], index: int) -> tuple[Dim, ...] | None:
        """Conv and the pools: ``[N, C_out, O...]`` with, per spatial dim
        ``D``, ``O = floor((D + pads - ((k - 1) * dilation + 1)) / stride) + 1``
        (``ceil`` with ``ceil_mode``), ``ceil(D / stride)`` for ``auto_pad``
        SAME_UPPER/SAME_LOWER, the padding 0 for VALID (ONNX operator specs).
        A symbolic ``D`` passes through only where the window keeps every
        position (one-element kernel, stride 1, no padding; or SAME with
        stride 1)."""
        if index != 0 and node.op_type != "MaxPool" or len(data) < 3:
            return None
        spatial = len(data) - 2
        if node.op_type == "Conv":
            w = self(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
            if w is None or len(w) != len(data):
                return None
            channels, kernel = w[0], node_attr(node, "kernel_shape") or w[2:]
        else:
            channels, kernel = data[1], node_attr(node, "kernel_shape")
        if kernel is None or len(kernel) != spatial or not all(isinstance(k, int) for k in kernel):
            return None
        strides = node_attr(node, "strides") or [1] * spatial
        dilations = node_attr(node, "dilations") or [1] * spatial
        pads = node_attr(node, "pads") or [0] * (2 * spatial)
        auto_pad = node_attr(node, "auto_pad", "NOTSET")
        ceil_mode = node_attr(node, "ceil_mode", 0)
        if len(strides) != spatial or len(dilations) != spatial or len(pads) != 2 * spatial:
            return None
        out: list[Dim] = [data[0], channels]
        for i, d in enumerate(data[2:]):
            window = (kernel[i] - 1) * dilations[i] + 1
            s = strides[i]
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out.append(-(-d // s) if isinstance(d, int) else d if s == 1 else None)
                continue
            pad = 0 if auto_pad == "VALID" else pads[i] + pads[i + spatial]
            if not isinstance(d, int):
                out.append(d if window == 1 and s == 1 and pad == 0 else None)
                continue
            span = d + pad - window
            if span < 0:
                return None
            out.append((-(-span // s) if ceil_mode else span // s) + 1)
        return tuple(out)

    def _reduce(self, node: ir.Node, data: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
        """Reduce*: ``axes`` (attribute, or input since opset 18, ReduceSum 13)
        reduced to 1 (``keepdims``, default 1) or dropped; no axes reduce all
        of them unless ``noop_with_empty_axes``."""
        since = 13 if node.op_type == "ReduceSum" else 18
        axes = _axes(node, self._opset, self._ints, since)
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None and self._opset >= since:
            return None  # computed axes
        if not axes:
            if node_attr(node, "noop_with_empty_axes", 0):
                return data
            axes = list(range(len(data)))
        drop = {a + len(data) if a < 0 else a for a in axes}
        if node_attr(node, "keepdims", 1):
            return tuple(1 if i in drop else d for i, d in enumerate(data))
        return tuple(d for i, d in enumerate(data) if i not in drop)

    def covers(self, node: ir.Node) -> bool:
        """Whether ``node``'s op has a shape rule here (default domain)."""
        return node.domain in ("", "ai.onnx") and node.op_type in _COVERED

    def _sources(self, op: str, node: ir.Node) -> tuple[Dim, ...] | None:
        """Ops whose output shape is an input's value: Range, ConstantOfShape, Shape."""
        ins = node.inputs
        if op == "ConstantOfShape":
            shape = self._value_of(ins[0])
            return None if shape is None else shape.dims
        if op == "Range":
            start, limit, delta = (self._scalar(v) for v in ins[:3])
            if isinstance(start, int) and isinstance(limit, int) and isinstance(delta, int) and delta:
                return (max(0, -(-(limit - start) // delta)),)
            if start == 0 and delta == 1 and isinstance(limit, str):
                return (limit,)
            return None
        if op == "Shape":
            d0 = self(ins[0])
            if d0 is None:
                return None
            start, end = node_attr(node, "start", 0), node_attr(node, "end", None)
            return (len(d0[slice(start, end)]),)
        return None

    def _if(self, node: ir.Node, index: int) -> tuple[Dim, ...] | None:
        """An If output's dims (ONNX If spec: the outputs are the taken
        branch's): with the condition known (a constant, or a shape value the
        propagator decided), the taken branch's output dims, by these rules
        inside the branch (its values read outer-scope values' dims); else
        the dims both branches agree on, and None where their ranks differ.
        ONNX inference merges the branches the same way but cannot pick one:
        a rank guard's If (``Unsqueeze`` in one branch, ``Identity`` in the
        other) leaves its output without a rank for every guard below it."""
        branches = []
        for key in ("then_branch", "else_branch"):
            attr = node.attributes.get(key)
            if attr is None or attr.is_ref() or attr.type != ir.AttributeType.GRAPH:
                return None
            if index >= len(attr.value.outputs):
                return None
            branches.append(attr.value.outputs[index])
        cond = if_condition(node, self._value_of)
        if cond is not None:
            return self(branches[0] if cond else branches[1])
        then_dims, else_dims = self(branches[0]), self(branches[1])
        if then_dims is None or else_dims is None or len(then_dims) != len(else_dims):
            return None
        return tuple(a if a == b else None for a, b in zip(then_dims, else_dims))

    def _reshape(self, node: ir.Node, data: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
        """Reshape's output: 0 copies the data's dim (``allowzero`` off), -1 is
        the data's size over the other entries' product, solved when both are
        monomials of ints and names."""
        target = self._value_of(node.inputs[1])
        if target is None or target.scalar:
            return None
        allowzero = node_attr(node, "allowzero", 0)
        out = [data[i] if t == 0 and not allowzero and i < len(data) else t for i, t in enumerate(target.dims)]
        if -1 not in out:
            return tuple(d if d is None or isinstance(d, str) or d >= 0 else None for d in out)
        total = _product(data)
        rest = _product(tuple(d for d in out if d != -1))
        at = out.index(-1)
        out[at] = None
        if total is not None and rest is not None and rest[0] and total[0] % rest[0] == 0 \
                and not rest[1] - total[1]:
            out[at] = _as_dim(total[0] // rest[0], total[1] - rest[1])
        return tuple(out)

    def _split(self, node: ir.Node, data: tuple[Dim, ...], index: int) -> tuple[Dim, ...] | None:
        axis = node_attr(node, "axis", 0)
        axis = axis + len(data) if axis < 0 else axis  # type: ignore[operator]
        sizes = node_attr(node, "split")
        if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            sizes = self._ints(node.inputs[1])
        if sizes is None and isinstance(data[axis], int):  # type: ignore[index]
            n = len(node.outputs)
            if data[axis] % n == 0:  # type: ignore[index,operator]
                sizes = [data[axis] // n] * n  # type: ignore[index,operator]
        out = list(data)
        out[axis] = sizes[index] if sizes is not None and index < len(sizes) else None  # type: ignore[index]
        return tuple(out)

    def _slice(self, node: ir.Node, data: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
        if self._opset < 10:
            return None
        ins = node.inputs
        starts, ends = self._ints(ins[1]), self._ints(ins[2])
        axes = self._ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = self._ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
        if starts is None or ends is None:
            return None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        out = list(data)
        for s, e, a, st in zip(starts, ends, axes, steps):
            a = a + len(data) if a < 0 else a
            d = data[a]
            if isinstance(d, int):
                out[a] = len(range(d)[slice(s, e, st)])
            elif s == 0 and st == 1 and e >= 2**31 - 1:
                out[a] = d
            else:
                out[a] = None
        return tuple(out)


def model_dims(model: ir.Model, prop: Propagator | None = None) -> tuple[Propagator, NativeDims]:
    """A fresh :class:`Propagator` for ``model``'s default-domain opset (or
    ``prop``, to read its values anew) and the :class:`NativeDims` over it
    (names: the graph inputs' dim names). The propagator's ``refine`` is
    not set: callers that want Shape values sharpened set it to the
    returned NativeDims."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    prop = Propagator(opset) if prop is None else prop
    names = {d for v in model.graph.inputs for d in (dims_of(v) or ()) if isinstance(d, str)}
    return prop, NativeDims(opset, prop.read, names)

"""numpy kernels for constant folding, following the ONNX operator spec.

Each kernel takes ``(node, inputs, opset)`` - ``inputs`` are numpy arrays, or
None for an omitted optional input - and returns one array per node output.
A kernel raises :class:`Unsupported` for an attribute or dtype combination it
does not implement; the caller then evaluates the node with onnxruntime.

Kernels keep ONNX's dtype rules exactly (numpy's promotion is not ONNX's: an
``int64 // int64`` floors where ONNX truncates, ``float32 ** int64`` widens to
float64 in numpy but stays float32 in ONNX), and the opset-dependent forms:
``axes`` of Squeeze/Unsqueeze/ReduceSum as an attribute before opset 13 and an
input after (opset 18 for the other reductions); Slice's ``starts``/``ends`` as
attributes before opset 10; Split's ``split`` as an input from opset 13 and
``num_outputs`` from 18; Shape's ``start``/``end`` from opset 15; Reshape's
``allowzero`` from 14. Source: https://onnx.ai/onnx/operators/ (the per-version
pages), cross-checked against ``onnx.reference``.

:func:`predict_elements` gives an op's output element count from its inputs'
shapes (reading only small shape-like inputs), so a fold that would allocate a
huge tensor (ConstantOfShape, Expand, Tile, Range, a broadcasting Add, ...) is
refused before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["KERNELS", "ANY_DTYPE_OPS", "GROWING_OPS", "Unsupported", "predict_elements", "NUMERIC_DTYPES"]

GROWING_OPS = frozenset({"OneHot", "Pad", "Resize", "Upsample", "EyeLike", "CenterCropPad", "Col2Im",
                         "ConstantOfShape", "Expand", "Tile", "Range"})
"""Ops whose output can be far larger than their inputs. Where
:func:`predict_elements` has no rule for one, it is folded only when the
output's shape is statically known."""


class Unsupported(Exception):
    """The kernel does not implement this node's attributes or dtypes."""


Kernel = Callable[[object, list, int], list]
KERNELS: dict[str, Kernel] = {}
"""op_type (default domain) -> kernel."""

ANY_DTYPE_OPS: set[str] = set()
"""Ops that only move data, so their kernels are exact for any dtype
(strings, bfloat16, float8, ...). Other kernels run on :data:`NUMERIC_DTYPES` only."""

NUMERIC_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64))


def kernel(*ops: str, any_dtype: bool = False) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        for op in ops:
            KERNELS[op] = fn
            if any_dtype:
                ANY_DTYPE_OPS.add(op)
        return fn
    return register


def _attr(node, name: str, default=None):  # noqa: ANN001, ANN202
    attr = node.attributes.get(name)
    if attr is None:
        return default
    if attr.is_ref():
        raise Unsupported(f"attribute {name} refers to a function attribute")
    return attr.value


def _axes_of(node, inputs: list, opset: int, since: int) -> list[int] | None:  # noqa: ANN001
    """``axes`` from the attribute (opset < since) or the second input."""
    if opset < since:
        axes = _attr(node, "axes")
        return None if axes is None else [int(a) for a in axes]
    if len(inputs) < 2 or inputs[1] is None:
        return None
    return [int(a) for a in np.asarray(inputs[1]).reshape(-1)]


# --- elementwise -------------------------------------------------------------------------------

def _same(fn: Callable) -> Kernel:
    """A kernel whose output dtype is the first input's (ONNX ``T -> T``)."""
    def run(node, inputs, opset):  # noqa: ANN001, ANN202
        a = inputs[0]
        return [np.asarray(fn(*inputs)).astype(a.dtype, copy=False)]
    return run


def _float_only(fn: Callable) -> Kernel:
    def run(node, inputs, opset):  # noqa: ANN001, ANN202
        if inputs[0].dtype.kind != "f":
            raise Unsupported("float op on a non-float tensor")
        with np.errstate(all="ignore"):
            return [np.asarray(fn(inputs[0])).astype(inputs[0].dtype, copy=False)]
    return run


for _op, _fn in {
    "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Reciprocal": np.reciprocal, "Floor": np.floor,
    "Ceil": np.ceil, "Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Tanh": np.tanh,
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Round": np.round,
}.items():
    KERNELS[_op] = _float_only(_fn)

KERNELS["Abs"] = _same(np.abs)
KERNELS["Neg"] = _same(np.negative)
KERNELS["Sign"] = _same(np.sign)
KERNELS["Relu"] = _same(lambda x: np.maximum(x, np.zeros((), x.dtype)))


@kernel("Not")
def _not(node, inputs, opset):  # noqa: ANN001, ANN202
    return [np.logical_not(inputs[0])]


@kernel("IsNaN")
def _isnan(node, inputs, opset):  # noqa: ANN001, ANN202
    return [np.isnan(inputs[0])]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if not np.all(b):
            raise Unsupported("integer division by zero")
        q = np.floor_divide(a, b)  # ONNX (like C) truncates toward zero: fix the floor
        fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return q + fix.astype(q.dtype)
    with np.errstate(all="ignore"):
        return np.divide(a, b)


def _binary(fn: Callable, same_type: bool = True) -> Kernel:
    def run(node, inputs, opset):  # noqa: ANN001, ANN202
        a, b = inputs
        if same_type and a.dtype != b.dtype:
            raise Unsupported("inputs of different dtypes")
        with np.errstate(all="ignore"):
            out = np.asarray(fn(a, b))
        return [out if out.dtype == np.bool_ else out.astype(a.dtype, copy=False)]
    return run


KERNELS.update({
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_div),
    "Equal": _binary(np.equal), "Less": _binary(np.less), "LessOrEqual": _binary(np.less_equal),
    "Greater": _binary(np.greater), "GreaterOrEqual": _binary(np.greater_equal),
    "And": _binary(np.logical_and), "Or": _binary(np.logical_or), "Xor": _binary(np.logical_xor),
})


@kernel("Pow")
def _pow(node, inputs, opset):  # noqa: ANN001, ANN202
    a, b = inputs
    if a.dtype.kind != "f":
        raise Unsupported("integer Pow")  # overflow and negative exponents: leave to onnxruntime
    with np.errstate(all="ignore"):
        return [np.power(a, b.astype(a.dtype, copy=False)).astype(a.dtype, copy=False)]


@kernel("Mod")
def _mod(node, inputs, opset):  # noqa: ANN001, ANN202
    a, b = inputs
    if a.dtype.kind in "iu" and not np.all(b):
        raise Unsupported("integer modulo by zero")
    with np.errstate(all="ignore"):
        out = np.fmod(a, b) if _attr(node, "fmod", 0) else np.mod(a, b)
    return [np.asarray(out).astype(a.dtype, copy=False)]


def _variadic(fn: Callable) -> Kernel:
    def run(node, inputs, opset):  # noqa: ANN001, ANN202
        if any(x.dtype != inputs[0].dtype for x in inputs):
            raise Unsupported("inputs of different dtypes")
        out = inputs[0]
        for x in inputs[1:]:
            out = fn(out, x)
        return [np.asarray(out).astype(inputs[0].dtype, copy=False)]
    return run


KERNELS.update({"Max": _variadic(np.maximum), "Min": _variadic(np.minimum), "Sum": _variadic(np.add)})


@kernel("Where")
def _where(node, inputs, opset):  # noqa: ANN001, ANN202
    c, x, y = inputs
    if x.dtype != y.dtype:
        raise Unsupported("Where of different dtypes")
    return [np.where(c, x, y).astype(x.dtype, copy=False)]


@kernel("Cast", "CastLike")
def _cast(node, inputs, opset):  # noqa: ANN001, ANN202
    from onnx_ir import DataType

    if node.op_type == "Cast":
        target = DataType(_attr(node, "to")).numpy()
    else:
        target = inputs[1].dtype
    if np.dtype(target) not in NUMERIC_DTYPES:
        raise Unsupported(f"Cast to {target}")
    src = inputs[0]
    if src.dtype.kind == "f" and np.dtype(target).kind in "iu" and not np.all(np.isfinite(src)):
        raise Unsupported("Cast of inf/NaN to an integer is implementation-defined")
    return [src.astype(target)]


# --- shapes and data movement ------------------------------------------------------------------

@kernel("Shape", any_dtype=True)
def _shape(node, inputs, opset):  # noqa: ANN001, ANN202
    dims = list(inputs[0].shape)
    start, end = _attr(node, "start", 0), _attr(node, "end", None)
    return [np.array(dims[slice(start, end)], dtype=np.int64)]


@kernel("Size", any_dtype=True)
def _size(node, inputs, opset):  # noqa: ANN001, ANN202
    return [np.array(inputs[0].size, dtype=np.int64)]


def reshape_target(in_shape: Sequence[int], shape: Sequence[int], allowzero: int) -> list[int]:
    """Reshape's output shape per the spec: ``0`` copies the input dim (unless
    ``allowzero``), one ``-1`` is inferred."""
    out = [int(d) for d in shape]
    if not allowzero:
        out = [in_shape[i] if d == 0 else d for i, d in enumerate(out)]
    if out.count(-1) > 1:
        raise Unsupported("Reshape with more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        total = math.prod(in_shape)
        if known == 0 or total % known:
            raise Unsupported("Reshape -1 does not divide the size")
        out[out.index(-1)] = total // known
    return out


@kernel("Reshape", any_dtype=True)
def _reshape(node, inputs, opset):  # noqa: ANN001, ANN202
    data = inputs[0]
    if opset < 5:
        raise Unsupported("Reshape-1 (shape attribute)")
    return [data.reshape(reshape_target(data.shape, inputs[1].tolist(), _attr(node, "allowzero", 0)))]


@kernel("Flatten", any_dtype=True)
def _flatten(node, inputs, opset):  # noqa: ANN001, ANN202
    x = inputs[0]
    axis = _attr(node, "axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@kernel("Transpose", any_dtype=True)
def _transpose(node, inputs, opset):  # noqa: ANN001, ANN202
    perm = _attr(node, "perm")
    return [np.ascontiguousarray(np.transpose(inputs[0], None if perm is None else list(perm)))]


@kernel("Squeeze", any_dtype=True)
def _squeeze(node, inputs, opset):  # noqa: ANN001, ANN202
    x = inputs[0]
    axes = _axes_of(node, inputs, opset, 13)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    axes = [a + x.ndim if a < 0 else a for a in axes]
    if any(x.shape[a] != 1 for a in axes):
        raise Unsupported("Squeeze of a dim that is not 1")
    return [np.squeeze(x, axis=tuple(axes))]


@kernel("Unsqueeze", any_dtype=True)
def _unsqueeze(node, inputs, opset):  # noqa: ANN001, ANN202
    x = inputs[0]
    axes = _axes_of(node, inputs, opset, 13)
    if axes is None:
        raise Unsupported("Unsqueeze without axes")
    rank = x.ndim + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return [x.reshape(shape)]


@kernel("Concat", any_dtype=True)
def _concat(node, inputs, opset):  # noqa: ANN001, ANN202
    if len({x.dtype for x in inputs}) != 1:
        raise Unsupported("Concat of different dtypes")
    return [np.concatenate(inputs, axis=_attr(node, "axis", 0))]


@kernel("Gather", any_dtype=True)
def _gather(node, inputs, opset):  # noqa: ANN001, ANN202
    data, idx = inputs
    axis = _attr(node, "axis", 0)
    axis = axis + data.ndim if axis < 0 else axis
    dim = data.shape[axis]
    idx = idx.astype(np.int64)
    if np.any(idx < -dim) or np.any(idx >= dim):
        raise Unsupported("Gather index out of range")
    return [np.take(data, np.where(idx < 0, idx + dim, idx), axis=axis)]


def _clamp_slice(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice bounds (negative = from the end, then clamped) as a Python slice."""
    if step == 0:
        raise Unsupported("Slice step 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return slice(start, end, step)
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


@kernel("Slice", any_dtype=True)
def _slice(node, inputs, opset):  # noqa: ANN001, ANN202
    x = inputs[0]
    if opset < 10:
        starts, ends, axes = _attr(node, "starts"), _attr(node, "ends"), _attr(node, "axes")
        steps = None
    else:
        def opt(i):  # noqa: ANN001, ANN202
            return None if len(inputs) <= i or inputs[i] is None else inputs[i].reshape(-1).tolist()
        starts, ends, axes, steps = opt(1), opt(2), opt(3), opt(4)
    axes = list(range(len(starts))) if axes is None else [a + x.ndim if a < 0 else a for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = _clamp_slice(int(s), int(e), int(st), x.shape[a])
    return [np.ascontiguousarray(x[tuple(index)])]


@kernel("Split", any_dtype=True)
def _split(node, inputs, opset):  # noqa: ANN001, ANN202
    x = inputs[0]
    axis = _attr(node, "axis", 0)
    axis = axis + x.ndim if axis < 0 else axis
    n = len(node.outputs)
    split = _attr(node, "split") if opset < 13 else (
        inputs[1].tolist() if len(inputs) > 1 and inputs[1] is not None else None)
    if split is None:
        size = -(-x.shape[axis] // n)  # ceil: the last chunk may be smaller (opset 18)
        split = [min(size, x.shape[axis] - i * size) for i in range(n)]
    if sum(split) != x.shape[axis] or len(split) != n:
        raise Unsupported("Split sizes do not add up")
    return [np.ascontiguousarray(p) for p in np.split(x, np.cumsum(split)[:-1], axis=axis)]


@kernel("ConstantOfShape")
def _constant_of_shape(node, inputs, opset):  # noqa: ANN001, ANN202
    value = _attr(node, "value")
    fill = np.zeros(1, np.float32) if value is None else value.numpy().reshape(-1)
    return [np.full(tuple(int(d) for d in inputs[0]), fill[0], dtype=fill.dtype)]


@kernel("Expand", any_dtype=True)
def _expand(node, inputs, opset):  # noqa: ANN001, ANN202
    x, shape = inputs
    out = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))
    return [np.ascontiguousarray(np.broadcast_to(x, out))]


@kernel("Tile", any_dtype=True)
def _tile(node, inputs, opset):  # noqa: ANN001, ANN202
    return [np.tile(inputs[0], [int(r) for r in inputs[1]])]


@kernel("Range")
def _range(node, inputs, opset):  # noqa: ANN001, ANN202
    start, limit, delta = (np.asarray(x).reshape(()) for x in inputs)
    if delta == 0:
        raise Unsupported("Range with delta 0")
    return [np.arange(start, limit, delta, dtype=start.dtype)]


def _reduce(fn: Callable, since: int) -> Kernel:
    def run(node, inputs, opset):  # noqa: ANN001, ANN202
        x = inputs[0]
        axes = _axes_of(node, inputs, opset, since)
        if not axes:
            if _attr(node, "noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        keep = bool(_attr(node, "keepdims", 1))
        return [np.asarray(fn(x, axis=tuple(axes), keepdims=keep)).astype(x.dtype, copy=False)]
    return run


KERNELS.update({
    "ReduceSum": _reduce(np.sum, 13), "ReduceMean": _reduce(np.mean, 18), "ReduceMax": _reduce(np.max, 18),
    "ReduceMin": _reduce(np.min, 18), "ReduceProd": _reduce(np.prod, 18),
})


@kernel("MatMul")
def _matmul(node, inputs, opset):  # noqa: ANN001, ANN202
    a, b = inputs
    if a.dtype != b.dtype or a.dtype.kind != "f":
        raise Unsupported("MatMul of non-float or mixed dtypes")
    return [np.matmul(a, b)]


# --- output size prediction ---------------------------------------------------------------------

def _broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    try:
        return np.broadcast_shapes(*(tuple(s) for s in shapes))
    except ValueError as e:
        raise Unsupported("shapes do not broadcast") from e


def _small(tensor) -> np.ndarray:  # noqa: ANN001
    """Read a shape-like input, refusing large ones."""
    if tensor.size > 64:
        raise Unsupported("shape input with more than 64 elements")
    return tensor.numpy().reshape(-1)


_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "LessOrEqual", "Greater",
                "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "Where", "BitShift",
                "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu"}


def predict_elements(op: str, tensors: list, attrs: dict) -> int | None:  # noqa: C901
    """Output element count of a fold before computing it, from the input
    tensors' shapes (lazy: only small shape-like inputs are read).

    Args:
        op: the node's op_type.
        tensors: the inputs as IR tensors (None for an omitted input).
        attrs: the node's attribute values by name (``axis`` of Gather).

    Returns:
        The element count of the largest output, or None when the op's size is
        not predicted here (the caller checks the computed result instead).

    Raises:
        Unsupported: the inputs are inconsistent (e.g. shapes that do not broadcast).
    """
    shapes = [None if t is None else tuple(int(d) for d in t.shape.numpy()) for t in tensors]
    if op == "ConstantOfShape":
        return math.prod(int(d) for d in _small(tensors[0]))
    if op == "Expand":
        return math.prod(_broadcast(shapes[0], [int(d) for d in _small(tensors[1])]))
    if op == "Tile":
        return math.prod(d * int(r) for d, r in zip(shapes[0], _small(tensors[1])))
    if op == "Range":
        start, limit, delta = (float(_small(t)[0]) for t in tensors)
        return 0 if delta == 0 else max(math.ceil((limit - start) / delta), 0)
    if op in _ELEMENTWISE:
        return math.prod(_broadcast(*[s for s in shapes if s is not None]))
    if op == "MatMul" and len(shapes[0]) >= 1 and len(shapes[1]) >= 1:
        a, b = shapes
        batch = _broadcast(a[:-2], b[:-2])
        return math.prod(batch) * (a[-2] if len(a) > 1 else 1) * (b[-1] if len(b) > 1 else 1)
    if op == "Gather":
        data, idx = shapes
        return math.prod(data) // max(data[attrs.get("axis", 0)] if data else 1, 1) * math.prod(idx)
    return None

"""The steps of :mod:`graphgen` (import :mod:`graphgen`, not this module).

Each step reads values from the builder's pool, appends nodes (and
initializers) and puts its results in the pool; the pool holds float32 values
of rank >= 1 only. Constants that a step makes are initializers unless it says
otherwise, so the node budget in ``graphgen.STEPS`` is an upper bound.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphgen import MAX_RANK, Builder, Draw, ok_shape, pick, rand_array, reduce_node, size_of

# ---------------------------------------------------------------------------
# the steps of the original O1 property test


def step_unary(d: Draw, b: Builder) -> int:
    """Relu/Neg/Abs/Sigmoid/Tanh/Identity, or Exp(Tanh(x))."""
    x = pick(d, b)
    op = d.choice(["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity", "ExpTanh"])
    if op == "ExpTanh":
        (t,) = b.node("Tanh", [x.name])
        (y,) = b.node("Exp", [t])
        b.add(t, x.shape)
        b.add(y, x.shape)
        return 2
    (y,) = b.node(op, [x.name])
    b.add(y, x.shape)
    return 1


def step_binary_var(d: Draw, b: Builder) -> int:
    """Add/Sub/Mul of two values of the same shape."""
    x = pick(d, b)
    y = pick(d, b, lambda v: v.shape == x.shape)
    op = d.choice(["Add", "Sub", "Mul"])
    (z,) = b.node(op, [x.name, y.name])
    b.add(z, x.shape)
    return 1


def step_div_var(d: Draw, b: Builder) -> int:
    """x / (|y| + 1): a variable divisor kept away from zero."""
    x = pick(d, b)
    y = pick(d, b, lambda v: v.shape == x.shape)
    one = b.const(np.array(1.0, np.float32), as_node=False)
    (a,) = b.node("Abs", [y.name])
    (s,) = b.node("Add", [a, one])
    (z,) = b.node("Div", [x.name, s])
    b.add(z, x.shape)
    return 3


_CONSTS = {
    "Add": [0.0, 1.0, -0.5, 2.5],
    "Sub": [0.0, 1.0, 0.75],
    "Mul": [1.0, 0.0, 2.0, -1.0, 0.5],
    "Div": [1.0, 2.0, -4.0, 0.5],
}


def step_binary_const(d: Draw, b: Builder) -> int:
    """x op c for a constant c: identities (0, 1), broadcast and shape-growing ones."""
    x = pick(d, b)
    op = d.choice(sorted(_CONSTS))
    value = d.choice(_CONSTS[op])
    kind = d.choice(["scalar", "last", "full", "grow", "random"])
    if kind == "scalar":
        shape: tuple[int, ...] = ()
    elif kind == "last":
        shape = x.shape[-1:]
    elif kind == "grow":  # broadcasting makes the result bigger: x + 0 is then no no-op
        shape = (2, *x.shape)
        if not ok_shape(shape):
            shape = x.shape
    else:
        shape = x.shape
    if kind == "random":
        rng = np.random.default_rng(d.integer(0, 2**16))
        array = rng.uniform(0.5, 2.0, size=shape).astype(np.float32) * rng.choice([-1, 1], size=shape).astype(np.float32)
    else:
        array = np.full(shape, value, np.float32)
    c = b.const(array, as_node=d.boolean())
    const_first = op != "Div" and d.boolean()
    (z,) = b.node(op, [c, x.name] if const_first else [x.name, c])
    b.add(z, np.broadcast_shapes(x.shape, shape))
    return 1


def step_cast_roundtrip(d: Draw, b: Builder) -> int:
    """float32 -> T -> float32: exact through float64, lossy through float16 or
    int32 (a pass must not drop those)."""
    x = pick(d, b)
    via = d.choice([TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT32])
    (c,) = b.node("Cast", [x.name], to=via)
    (f,) = b.node("Cast", [c], to=TensorProto.FLOAT)
    b.add(f, x.shape)
    return 2


def step_transpose(d: Draw, b: Builder) -> int:
    """A Transpose, or a pair that cancels."""
    x = pick(d, b, lambda v: len(v.shape) >= 2)
    if x is None:
        return 0
    perm = d.permutation(len(x.shape))
    (t,) = b.node("Transpose", [x.name], perm=list(perm))
    tshape = tuple(x.shape[p] for p in perm)
    if d.boolean():
        inv = list(np.argsort(perm))
        (u,) = b.node("Transpose", [t], perm=[int(i) for i in inv])
        b.add(u, x.shape)
        return 2
    b.add(t, tshape)
    return 1


def step_reshape(d: Draw, b: Builder) -> int:
    """Reshape to [-1] or [0, -1], and maybe back."""
    x = pick(d, b, lambda v: len(v.shape) >= 2)
    if x is None:
        return 0
    target = d.choice([[-1], [0, -1]])
    shape = (size_of(x.shape),) if target == [-1] else (x.shape[0], size_of(x.shape[1:]))
    (r,) = b.node("Reshape", [x.name, b.const(np.array(target, np.int64), as_node=d.boolean())])
    if d.boolean():  # and back (0 copies the possibly symbolic first dim)
        back = [0, *x.shape[1:]] if target == [0, -1] else list(x.shape)
        (s,) = b.node("Reshape", [r, b.const(np.array(back, np.int64), as_node=False)])
        b.add(s, x.shape)
        return 2
    b.add(r, shape)
    return 1


def step_unsqueeze(d: Draw, b: Builder) -> int:
    """Unsqueeze, and maybe Squeeze back."""
    x = pick(d, b, lambda v: len(v.shape) < MAX_RANK)
    if x is None:
        return 0
    axis = d.integer(-len(x.shape) - 1, len(x.shape))
    (u,) = b.node("Unsqueeze", [x.name, b.const(np.array([axis], np.int64), as_node=False)])
    pos = axis if axis >= 0 else axis + len(x.shape) + 1
    ushape = (*x.shape[:pos], 1, *x.shape[pos:])
    if d.boolean():
        (s,) = b.node("Squeeze", [u, b.const(np.array([axis], np.int64), as_node=False)])
        b.add(s, x.shape)
        return 2
    b.add(u, ushape)
    return 1


def step_concat_slice(d: Draw, b: Builder) -> int:
    """Concat two values, and maybe slice the second back out."""
    x = pick(d, b)
    y = pick(d, b, lambda v: v.shape == x.shape)
    axis = d.integer(0, len(x.shape) - 1)
    cshape = tuple(n * 2 if i == axis else n for i, n in enumerate(x.shape))
    if not ok_shape(cshape):
        return 0
    (c,) = b.node("Concat", [x.name, y.name], axis=axis)
    if d.boolean():
        n = x.shape[axis]
        args = [np.array([n], np.int64), np.array([2 * n], np.int64), np.array([axis], np.int64)]
        (s,) = b.node("Slice", [c, *(b.const(a, as_node=False) for a in args)])
        b.add(s, x.shape)
        return 2
    b.add(c, cshape)
    return 1


def step_slice(d: Draw, b: Builder) -> int:
    """A full-range (no-op), partial or reversing Slice."""
    x = pick(d, b)
    axis = d.integer(0, len(x.shape) - 1)
    n = x.shape[axis]
    kind = d.choice(["full", "part", "reverse"])
    if kind == "full":
        start, end, step, out = 0, np.iinfo(np.int64).max, 1, n
    elif kind == "part":
        start = d.integer(0, n - 1)
        end = d.integer(start + 1, n)
        step, out = 1, end - start
    else:
        start, end, step, out = -1, np.iinfo(np.int64).min, -1, n
    args = [np.array([v], np.int64) for v in (start, end, axis, step)]
    (s,) = b.node("Slice", [x.name, *(b.const(a, as_node=False) for a in args)])
    b.add(s, tuple(out if i == axis else v for i, v in enumerate(x.shape)))
    return 1


def step_shape_chain(d: Draw, b: Builder) -> int:
    """Reshape y to x's shape through Shape -> Gather (-> Unsqueeze -> Concat)."""
    x = pick(d, b)
    y = pick(d, b, lambda v: size_of(v.shape) == size_of(x.shape))
    (sh,) = b.node("Shape", [x.name])
    if d.boolean() or len(x.shape) < 2:
        idx = b.const(np.arange(len(x.shape), dtype=np.int64), as_node=False)
        (g,) = b.node("Gather", [sh, idx], axis=0)
        (r,) = b.node("Reshape", [y.name, g])
        b.add(r, x.shape)
        return 3
    (g,) = b.node("Gather", [sh, b.const(np.array(0, np.int64), as_node=False)], axis=0)
    (u,) = b.node("Unsqueeze", [g, b.const(np.array([0], np.int64), as_node=False)])
    (c,) = b.node("Concat", [u, b.const(np.array([-1], np.int64), as_node=False)], axis=0)
    (r,) = b.node("Reshape", [y.name, c])
    b.add(r, (x.shape[0], size_of(x.shape) // x.shape[0]))
    return 5


def step_const_fold(d: Draw, b: Builder) -> int:
    """(c1 + c2) * c3 computed from constants, then applied to x."""
    x = pick(d, b)
    shape = d.choice([(), x.shape[-1:]])
    rng = np.random.default_rng(d.integer(0, 2**16))
    c1 = b.const(rng.uniform(-1, 1, shape).astype(np.float32), as_node=True)
    c2 = b.const(rng.uniform(-1, 1, shape).astype(np.float32), as_node=d.boolean())
    c3 = b.const(rng.uniform(0.5, 1.5, shape).astype(np.float32), as_node=False)
    (s,) = b.node("Add", [c1, c2])
    (m,) = b.node("Mul", [s, c3])
    (z,) = b.node(d.choice(["Add", "Mul", "Sub"]), [x.name, m])
    b.add(z, x.shape)
    return 3


def step_dropout(d: Draw, b: Builder) -> int:
    """Inference-mode Dropout, with and without ratio / training_mode / mask."""
    x = pick(d, b)
    inputs = [x.name]
    form = d.choice(["plain", "ratio", "ratio+mode"])
    if form != "plain":
        inputs.append(b.const(np.array(0.3, np.float32), as_node=False))
    if form == "ratio+mode":
        inputs.append(b.const(np.array(False), as_node=False))
    outs = b.node("Dropout", inputs, n_out=2 if d.boolean() else 1, dup=False)
    b.add(outs[0], x.shape)
    return 1


def step_duplicate(d: Draw, b: Builder) -> int:
    """Re-emit an earlier node with the same inputs and attributes (a CSE target)."""
    cands = [n for n in b.simple if n.op_type != "Constant"]
    if not cands:
        return 0
    orig = cands[d.integer(0, len(cands) - 1)]
    shape = next((v.shape for v in b.pool if v.name == orig.output[0]), None)
    if shape is None:
        return 0
    out = b.fresh(orig.op_type.lower() + "_dup")
    dup = onnx.NodeProto()
    dup.CopyFrom(orig)
    dup.name = b.fresh("n")
    dup.output[0] = out
    b.nodes.append(dup)
    b.add(out, shape)
    return 1


# ---------------------------------------------------------------------------
# elementwise, reductions, MatMul/Gemm, Conv, fusion targets


def step_elementwise(d: Draw, b: Builder) -> int:
    """Max/Min/Sum, Pow 2, Where(Greater), Clip, LeakyRelu, HardSigmoid, Erf,
    Softplus, Sqrt(|x| + 1)."""
    x = pick(d, b)
    kind = d.choice(["Max", "Min", "Sum", "Pow", "Where", "Clip", "LeakyRelu", "HardSigmoid", "Erf", "Softplus", "Sqrt"])
    if kind in ("Max", "Min", "Sum"):
        y = pick(d, b, lambda v: v.shape == x.shape)
        (z,) = b.node(kind, [x.name, y.name])
    elif kind == "Pow":
        (z,) = b.node("Pow", [x.name, b.const(np.array(d.choice([2.0, 1.0, 3.0]), np.float32), as_node=d.boolean())])
    elif kind == "Where":
        y = pick(d, b, lambda v: v.shape == x.shape)
        (g,) = b.node("Greater", [x.name, y.name])
        (z,) = b.node("Where", [g, x.name, y.name])
    elif kind == "Clip":
        lo, hi = d.choice([(-1.0, 1.0), (0.0, 6.0), (-0.5, 0.25)])
        (z,) = b.node("Clip", [x.name, b.const(np.array(lo, np.float32), as_node=False),
                               b.const(np.array(hi, np.float32), as_node=False)])
    elif kind == "LeakyRelu":
        (z,) = b.node("LeakyRelu", [x.name], alpha=d.choice([0.01, 0.2]))
    elif kind == "Sqrt":
        (a,) = b.node("Abs", [x.name])
        (s,) = b.node("Add", [a, b.const(np.array(1.0, np.float32), as_node=False)])
        (z,) = b.node("Sqrt", [s])
    else:
        (z,) = b.node(kind, [x.name])
    b.add(z, x.shape)
    return 1


def step_reduce(d: Draw, b: Builder) -> int:
    """ReduceSum/Mean/Max/Min/L2 over some axes (all of them only with keepdims)."""
    x = pick(d, b)
    r = len(x.shape)
    op = d.choice(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"])
    axes = sorted(d.permutation(r)[: d.integer(1, r)])
    keepdims = 1 if len(axes) == r else d.choice([0, 1])
    shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape) if keepdims or i not in axes)
    if d.boolean():
        axes = [a - r for a in axes]
    y = reduce_node(b, op, x.name, axes, keepdims)
    b.add(y, shape)
    return 1


def step_matmul(d: Draw, b: Builder) -> int:
    """x @ W (+ bias) (+ Relu), Gemm on rank 2, or x @ Transpose(y)."""
    x = pick(d, b)
    kind = d.choice(["const", "gemm", "var"])
    if kind == "var" and len(x.shape) >= 2:
        y = pick(d, b, lambda v: v.shape == x.shape)
        perm = [*range(len(x.shape) - 2), len(x.shape) - 1, len(x.shape) - 2]
        shape = (*x.shape[:-1], x.shape[-2])
        if not ok_shape(shape):
            return 0
        (t,) = b.node("Transpose", [y.name], perm=perm)
        (z,) = b.node("MatMul", [x.name, t])
        b.add(z, shape)
        return 2
    k, m = x.shape[-1], d.choice([2, 3, 4, 5])
    shape = (*x.shape[:-1], m)
    if not ok_shape(shape):
        return 0
    w = rand_array(d, (k, m))
    bias = rand_array(d, (m,))
    if kind == "gemm" and len(x.shape) == 2:
        trans_b = d.boolean()
        (z,) = b.node("Gemm", [x.name, b.const(w.T.copy() if trans_b else w, as_node=False), b.const(bias, as_node=False)],
                      transB=int(trans_b), alpha=d.choice([1.0, 0.5]), beta=d.choice([1.0, 2.0]))
    else:
        (z,) = b.node("MatMul", [x.name, b.const(w, as_node=False)])
        if d.boolean():
            c = b.const(bias, as_node=False)
            (z,) = b.node("Add", [z, c] if d.boolean() else [c, z])
    if d.boolean():
        (z,) = b.node(d.choice(["Relu", "Sigmoid", "Tanh"]), [z])
    b.add(z, shape)
    return 3


def step_conv(d: Draw, b: Builder) -> int:
    """Conv over [N, C, spatial...] (1 or 2 spatial dims, kernel 1 or 3 with
    'same' padding, maybe depthwise, maybe with bias), then maybe
    BatchNormalization and maybe Relu."""
    x = pick(d, b, lambda v: len(v.shape) in (3, 4))
    if x is None:
        return 0
    c, spatial = x.shape[1], x.shape[2:]
    k = d.choice([1, 3])
    depthwise = c > 1 and d.boolean()
    m = c if depthwise else d.choice([2, 3, 4])
    shape = (x.shape[0], m, *spatial)
    if not ok_shape(shape):
        return 0
    w = rand_array(d, (m, 1 if depthwise else c, *([k] * len(spatial))))
    inputs = [x.name, b.const(w, as_node=False)]
    if d.boolean():
        inputs.append(b.const(rand_array(d, (m,)), as_node=False))
    (z,) = b.node("Conv", inputs, pads=[k // 2] * (2 * len(spatial)), group=c if depthwise else 1)
    if d.boolean():
        params = [rand_array(d, (m,), 0.5, 1.5), rand_array(d, (m,)), rand_array(d, (m,)), rand_array(d, (m,), 0.5, 2.0)]
        (z,) = b.node("BatchNormalization", [z, *(b.const(p, as_node=False) for p in params)], epsilon=1e-5)
    if d.boolean():
        (z,) = b.node("Relu", [z])
    b.add(z, shape)
    return 3


def step_softmax(d: Draw, b: Builder) -> int:
    """Softmax or LogSoftmax along a random axis."""
    x = pick(d, b)
    axis = d.integer(-len(x.shape), len(x.shape) - 1)
    (z,) = b.node(d.choice(["Softmax", "LogSoftmax"]), [x.name], axis=axis)
    b.add(z, x.shape)
    return 1


def step_layernorm(d: Draw, b: Builder) -> int:
    """LayerNorm over the last axis as exporters decompose it (ReduceMean, Sub,
    Pow or Mul, ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta), of x
    plus a ramp (see below)."""
    x = pick(d, b)
    n = x.shape[-1]
    src = x.name
    if n > 1:
        # a ramp across the axis keeps the variance away from 0: normalizing
        # values that agree to a few ulps turns a pass's 1-ulp rounding change
        # into a 1e-4 error (fuzz seed 633 of the first run), a property of the
        # graph, not of a pass
        (src,) = b.node("Add", [src, b.const(np.linspace(-1.0, 1.0, n, dtype=np.float32), as_node=False)])
    mean = reduce_node(b, "ReduceMean", src, [-1], 1)
    (dev,) = b.node("Sub", [src, mean])
    if d.boolean():
        (sq,) = b.node("Pow", [dev, b.const(np.array(2.0, np.float32), as_node=False)])
    else:
        (sq,) = b.node("Mul", [dev, dev])
    var = reduce_node(b, "ReduceMean", sq, [-1], 1)
    (ve,) = b.node("Add", [var, b.const(np.array(d.choice([1e-5, 1e-12]), np.float32), as_node=False)])
    (sd,) = b.node("Sqrt", [ve])
    (z,) = b.node("Div", [dev, sd])
    if d.boolean():
        (z,) = b.node("Mul", [z, b.const(rand_array(d, (n,), 0.5, 1.5), as_node=False)])
        (z,) = b.node("Add", [z, b.const(rand_array(d, (n,)), as_node=False)])
    b.add(z, x.shape)
    return 10


def step_gelu(d: Draw, b: Builder) -> int:
    """Gelu as exporters decompose it: x * 0.5 * (1 + Erf(x / sqrt(2)))."""
    x = pick(d, b)
    (h,) = b.node("Div", [x.name, b.const(np.array(1.4142135, np.float32), as_node=False)])
    (e,) = b.node("Erf", [h])
    (a,) = b.node("Add", [e, b.const(np.array(1.0, np.float32), as_node=False)])
    half = b.const(np.array(0.5, np.float32), as_node=False)
    if d.boolean():
        (m,) = b.node("Mul", [x.name, a])
        (z,) = b.node("Mul", [m, half])
    else:
        (m,) = b.node("Mul", [x.name, half])
        (z,) = b.node("Mul", [m, a])
    b.add(z, x.shape)
    return 5


def step_shape_ops(d: Draw, b: Builder) -> int:
    """Expand, Tile, Pad, Split (two outputs), Flatten, Gather of constant
    indices, ConstantOfShape(Shape(x)) + x, or an int64 round trip with
    integer arithmetic."""
    x = pick(d, b)
    r = len(x.shape)
    kind = d.choice(["Expand", "Tile", "Pad", "Split", "Flatten", "Gather", "ConstantOfShape", "Int"])
    if kind == "Expand":
        shape = (2, *x.shape) if d.boolean() else x.shape
        if not ok_shape(shape):
            return 0
        (z,) = b.node("Expand", [x.name, b.const(np.array(shape, np.int64), as_node=d.boolean())])
    elif kind == "Tile":
        reps = [d.choice([1, 2]) for _ in range(r)]
        shape = tuple(n * k for n, k in zip(x.shape, reps))
        if not ok_shape(shape):
            return 0
        (z,) = b.node("Tile", [x.name, b.const(np.array(reps, np.int64), as_node=False)])
    elif kind == "Pad":
        pads = [d.choice([0, 0, 1]) for _ in range(2 * r)]
        shape = tuple(n + pads[i] + pads[i + r] for i, n in enumerate(x.shape))
        if not ok_shape(shape):
            return 0
        (z,) = b.node("Pad", [x.name, b.const(np.array(pads, np.int64), as_node=False),
                              b.const(np.array(d.choice([0.0, 1.5]), np.float32), as_node=False)])
    elif kind == "Split":
        axis = d.integer(0, r - 1)
        n = x.shape[axis]
        if n < 2:
            return 0
        first = d.integer(1, n - 1)
        outs = b.node("Split", [x.name, b.const(np.array([first, n - first], np.int64), as_node=False)],
                      n_out=2, axis=axis)
        b.add(outs[0], tuple(first if i == axis else v for i, v in enumerate(x.shape)))
        b.add(outs[1], tuple(n - first if i == axis else v for i, v in enumerate(x.shape)))
        return 1
    elif kind == "Flatten":
        axis = d.integer(0, r)
        shape = (size_of(x.shape[:axis]), size_of(x.shape[axis:]))
        (z,) = b.node("Flatten", [x.name], axis=axis)
    elif kind == "Gather":
        axis = d.integer(0, r - 1)
        n = x.shape[axis]
        idx = [d.integer(-n, n - 1) for _ in range(d.integer(1, 3))]
        shape = tuple(len(idx) if i == axis else v for i, v in enumerate(x.shape))
        (z,) = b.node("Gather", [x.name, b.const(np.array(idx, np.int64), as_node=d.boolean())], axis=axis)
    elif kind == "ConstantOfShape":
        (sh,) = b.node("Shape", [x.name])
        (f,) = b.node("ConstantOfShape", [sh], value=numpy_helper.from_array(np.array([d.choice([0.0, 1.0, 2.5])],
                                                                                         np.float32)))
        (z,) = b.node(d.choice(["Add", "Mul"]), [x.name, f])
        shape = x.shape
    else:
        (m,) = b.node("Mul", [x.name, b.const(np.array(4.0, np.float32), as_node=False)])
        (i,) = b.node("Cast", [m], to=TensorProto.INT64)
        (j,) = b.node(d.choice(["Add", "Mul", "Sub"]), [i, b.const(np.array(d.choice([0, 1, 3]), np.int64), as_node=False)])
        (z,) = b.node("Cast", [j], to=TensorProto.FLOAT)
        shape = x.shape
    b.add(z, shape)
    return 1


def step_siblings(d: Draw, b: Builder) -> int:
    """Two MatMuls (or Convs) reading the same value with different constant
    weights (a sibling-merge target), their results added or both kept."""
    conv = d.boolean()
    x = pick(d, b, lambda v: len(v.shape) in (3, 4)) if conv else pick(d, b)
    if x is None:
        return 0
    outs = []
    m = d.choice([2, 3])
    shape = (x.shape[0], m, *x.shape[2:]) if conv else (*x.shape[:-1], m)
    if not ok_shape(shape):
        return 0
    for _ in range(2):
        if conv:
            w = rand_array(d, (m, x.shape[1], *([1] * (len(x.shape) - 2))))
            (z,) = b.node("Conv", [x.name, b.const(w, as_node=False)])
        else:
            (z,) = b.node("MatMul", [x.name, b.const(rand_array(d, (x.shape[-1], m)), as_node=False)])
        outs.append(z)
        b.add(z, shape)
    if d.boolean():
        (s,) = b.node("Add", outs)
        b.add(s, shape)
    return 3


def step_dynamic(d: Draw, b: Builder) -> int:
    """Ops on run-time data that no pass can fold: Gather by an int64 index
    input (values in range, some negative), Expand of a constant to Shape(x),
    or Where on a bool input."""
    x = pick(d, b)
    kind = d.choice(["gather", "expand", "where"])
    if kind == "gather":
        axis = d.integer(0, len(x.shape) - 1)
        n, k = x.shape[axis], d.integer(1, 3)
        name = b.fresh("idx")
        rng = np.random.default_rng(d.integer(0, 2**16))
        b.extra_inputs.append((helper.make_tensor_value_info(name, TensorProto.INT64, [k]),
                               rng.integers(-n, n, size=k).astype(np.int64)))
        (z,) = b.node("Gather", [x.name, name], axis=axis)
        b.add(z, tuple(k if i == axis else v for i, v in enumerate(x.shape)))
        return 1
    if kind == "expand":
        (sh,) = b.node("Shape", [x.name])
        (e,) = b.node("Expand", [b.const(rand_array(d, x.shape[-1:]), as_node=False), sh])
        (z,) = b.node(d.choice(["Add", "Mul"]), [x.name, e])
        b.add(z, x.shape)
        return 3
    name = b.fresh("mask")
    rng = np.random.default_rng(d.integer(0, 2**16))
    b.extra_inputs.append((helper.make_tensor_value_info(name, TensorProto.BOOL, list(x.shape[-1:])),
                           rng.integers(0, 2, size=x.shape[-1:]).astype(bool)))
    (z,) = b.node("Where", [name, x.name, b.const(np.array(d.choice([0.0, -1.0]), np.float32), as_node=False)])
    b.add(z, x.shape)
    return 1


from graphgen_control import step_if, step_loop  # noqa: E402,F401 - re-exported for graphgen

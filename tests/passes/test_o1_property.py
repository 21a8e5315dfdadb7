"""Property test of the ``O1`` pipeline: on random small graphs of elementwise
and shape ops, the optimized model computes the same outputs as the original in
onnxruntime, keeps the output signature and never has more nodes.

The graphs (2-12 nodes, ONNX IR 10, opset 17, float32 inputs of rank 2-3 whose
first dim is static or symbolic) are built with ``onnx.helper`` from steps that
each exercise something O1 does or will do: Add/Sub/Mul/Div with variable and
constant operands (0 and 1 included, constants as initializers or Constant
nodes, broadcast and shape-growing constants), Relu/Neg/Abs/Sigmoid/Tanh,
Exp(Tanh), Identity, float32->float64->float32 Cast round trips (and lossy ones
through float16 and int32), Transpose pairs and single Transposes, Reshape
(with 0 and -1) and back, Unsqueeze/Squeeze,
Concat then Slice, full-range Slice, Shape->Gather->Reshape chains, constant
subgraphs that fold, inference-mode Dropout (with and without ratio /
training_mode / mask), and exact duplicates of earlier nodes (CSE). Values not
chosen as outputs are dead code.

Both models run with onnxruntime's graph optimizations disabled, so the
comparison sees graphopt's rewrites only. ``GRAPHOPT_PROPERTY_PIPELINE`` (a
pipeline spec) replaces ``O1``, to try a pass on these graphs before it joins O1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.verify import compare_outputs, run_model, signature_differences

MAX_NODES = 12
MAX_ELEMENTS = 2048
MAX_RANK = 5
RTOL, ATOL = 1e-5, 1e-6
PIPELINE = os.environ.get("GRAPHOPT_PROPERTY_PIPELINE", "O1")


@dataclass
class Val:
    name: str
    shape: tuple[int, ...]


@dataclass
class Builder:
    """Accumulates nodes and initializers; ``pool`` holds the float32 values
    (with their concrete shapes) that later steps may read."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    pool: list[Val] = field(default_factory=list)
    simple: list[onnx.NodeProto] = field(default_factory=list)  # candidates for duplication
    counter: int = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def node(self, op: str, inputs: list[str], n_out: int = 1, dup: bool = True, **attrs) -> list[str]:
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        node = helper.make_node(op, inputs, outs, name=self.fresh("n"), **attrs)
        self.nodes.append(node)
        if dup and n_out == 1:
            self.simple.append(node)
        return outs

    def const(self, array: np.ndarray, as_node: bool) -> str:
        """A constant, as an initializer or a Constant node."""
        if as_node:
            (out,) = self.node("Constant", [], value=numpy_helper.from_array(array, self.fresh("c")), dup=False)
            return out
        name = self.fresh("init")
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def add(self, name: str, shape: tuple[int, ...]) -> Val:
        v = Val(name, tuple(int(d) for d in shape))
        self.pool.append(v)
        return v


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _ok_shape(shape: tuple[int, ...]) -> bool:
    return len(shape) <= MAX_RANK and _size(shape) <= MAX_ELEMENTS


def _pick(draw, b: Builder, pred=None) -> Val | None:
    cands = [v for v in b.pool if pred is None or pred(v)]
    if not cands:
        return None
    # biased toward recent values, so chains get deep
    i = draw(st.integers(0, len(cands) - 1))
    return cands[len(cands) - 1 - i]


# ---------------------------------------------------------------------------
# steps: each appends nodes and pool values (the budget check uses the most
# nodes a step can add, from STEPS); the return value is informational


def step_unary(draw, b: Builder) -> int:
    x = _pick(draw, b)
    op = draw(st.sampled_from(["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity", "ExpTanh"]))
    if op == "ExpTanh":
        (t,) = b.node("Tanh", [x.name])
        (y,) = b.node("Exp", [t])
        b.add(t, x.shape)
        b.add(y, x.shape)
        return 2
    (y,) = b.node(op, [x.name])
    b.add(y, x.shape)
    return 1


def step_binary_var(draw, b: Builder) -> int:
    x = _pick(draw, b)
    y = _pick(draw, b, lambda v: v.shape == x.shape)
    op = draw(st.sampled_from(["Add", "Sub", "Mul"]))
    (z,) = b.node(op, [x.name, y.name])
    b.add(z, x.shape)
    return 1


def step_div_var(draw, b: Builder) -> int:
    """x / (|y| + 1): a variable divisor kept away from zero."""
    x = _pick(draw, b)
    y = _pick(draw, b, lambda v: v.shape == x.shape)
    one = b.const(np.array(1.0, np.float32), as_node=False)
    (a,) = b.node("Abs", [y.name])
    (d,) = b.node("Add", [a, one])
    (z,) = b.node("Div", [x.name, d])
    b.add(z, x.shape)
    return 3


_CONSTS = {
    "Add": [0.0, 1.0, -0.5, 2.5],
    "Sub": [0.0, 1.0, 0.75],
    "Mul": [1.0, 0.0, 2.0, -1.0, 0.5],
    "Div": [1.0, 2.0, -4.0, 0.5],
}


def step_binary_const(draw, b: Builder) -> int:
    x = _pick(draw, b)
    op = draw(st.sampled_from(sorted(_CONSTS)))
    value = draw(st.sampled_from(_CONSTS[op]))
    kind = draw(st.sampled_from(["scalar", "last", "full", "grow", "random"]))
    if kind == "scalar":
        shape: tuple[int, ...] = ()
    elif kind == "last":
        shape = x.shape[-1:]
    elif kind == "grow":  # broadcasting makes the result bigger: x + 0 is then no no-op
        shape = (2, *x.shape)
        if not _ok_shape(shape):
            shape = x.shape
    else:
        shape = x.shape
    if kind == "random":
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        array = rng.uniform(0.5, 2.0, size=shape).astype(np.float32) * rng.choice([-1, 1], size=shape).astype(np.float32)
    else:
        array = np.full(shape, value, np.float32)
    c = b.const(array, as_node=draw(st.booleans()))
    const_first = op != "Div" and draw(st.booleans())
    (z,) = b.node(op, [c, x.name] if const_first else [x.name, c])
    b.add(z, np.broadcast_shapes(x.shape, shape))
    return 1


def step_cast_roundtrip(draw, b: Builder) -> int:
    """float32 -> T -> float32: exact through float64, lossy through float16 or
    int32 (a pass must not drop those)."""
    x = _pick(draw, b)
    via = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT32]))
    (d,) = b.node("Cast", [x.name], to=via)
    (f,) = b.node("Cast", [d], to=TensorProto.FLOAT)
    b.add(f, x.shape)
    return 2


def step_transpose(draw, b: Builder) -> int:
    x = _pick(draw, b, lambda v: len(v.shape) >= 2)
    if x is None:
        return 0
    perm = draw(st.permutations(range(len(x.shape))))
    (t,) = b.node("Transpose", [x.name], perm=list(perm))
    tshape = tuple(x.shape[p] for p in perm)
    if draw(st.booleans()):  # a pair that cancels
        inv = list(np.argsort(perm))
        (u,) = b.node("Transpose", [t], perm=[int(i) for i in inv])
        b.add(u, x.shape)
        return 2
    b.add(t, tshape)
    return 1


def step_reshape(draw, b: Builder) -> int:
    x = _pick(draw, b, lambda v: len(v.shape) >= 2)
    if x is None:
        return 0
    target = draw(st.sampled_from([[-1], [0, -1]]))
    shape = (_size(x.shape),) if target == [-1] else (x.shape[0], _size(x.shape[1:]))
    (r,) = b.node("Reshape", [x.name, b.const(np.array(target, np.int64), as_node=draw(st.booleans()))])
    if draw(st.booleans()):  # and back (0 copies the possibly symbolic first dim)
        back = [0, *x.shape[1:]] if target == [0, -1] else list(x.shape)
        (s,) = b.node("Reshape", [r, b.const(np.array(back, np.int64), as_node=False)])
        b.add(s, x.shape)
        return 2
    b.add(r, shape)
    return 1


def step_unsqueeze(draw, b: Builder) -> int:
    x = _pick(draw, b, lambda v: len(v.shape) < MAX_RANK)
    if x is None:
        return 0
    axis = draw(st.integers(-len(x.shape) - 1, len(x.shape)))
    (u,) = b.node("Unsqueeze", [x.name, b.const(np.array([axis], np.int64), as_node=False)])
    pos = axis if axis >= 0 else axis + len(x.shape) + 1
    ushape = (*x.shape[:pos], 1, *x.shape[pos:])
    if draw(st.booleans()):
        (s,) = b.node("Squeeze", [u, b.const(np.array([axis], np.int64), as_node=False)])
        b.add(s, x.shape)
        return 2
    b.add(u, ushape)
    return 1


def step_concat_slice(draw, b: Builder) -> int:
    x = _pick(draw, b)
    y = _pick(draw, b, lambda v: v.shape == x.shape)
    axis = draw(st.integers(0, len(x.shape) - 1))
    cshape = tuple(d * 2 if i == axis else d for i, d in enumerate(x.shape))
    if not _ok_shape(cshape):
        return 0
    (c,) = b.node("Concat", [x.name, y.name], axis=axis)
    if draw(st.booleans()):  # slice the second operand back out
        d = x.shape[axis]
        args = [np.array([d], np.int64), np.array([2 * d], np.int64), np.array([axis], np.int64)]
        (s,) = b.node("Slice", [c, *(b.const(a, as_node=False) for a in args)])
        b.add(s, x.shape)
        return 2
    b.add(c, cshape)
    return 1


def step_slice(draw, b: Builder) -> int:
    x = _pick(draw, b)
    axis = draw(st.integers(0, len(x.shape) - 1))
    d = x.shape[axis]
    kind = draw(st.sampled_from(["full", "part", "reverse"]))
    if kind == "full":  # a no-op slice
        start, end, step = 0, np.iinfo(np.int64).max, 1
        out = d
    elif kind == "part":
        start = draw(st.integers(0, d - 1))
        end = draw(st.integers(start + 1, d))
        step, out = 1, end - start
    else:
        start, end, step, out = -1, np.iinfo(np.int64).min, -1, d
    args = [np.array([v], np.int64) for v in (start, end, axis, step)]
    (s,) = b.node("Slice", [x.name, *(b.const(a, as_node=False) for a in args)])
    b.add(s, tuple(out if i == axis else v for i, v in enumerate(x.shape)))
    return 1


def step_shape_chain(draw, b: Builder) -> int:
    """Reshape y to x's shape through Shape -> Gather (-> Unsqueeze -> Concat)."""
    x = _pick(draw, b)
    y = _pick(draw, b, lambda v: _size(v.shape) == _size(x.shape))
    (sh,) = b.node("Shape", [x.name])
    if draw(st.booleans()) or len(x.shape) < 2:
        idx = b.const(np.arange(len(x.shape), dtype=np.int64), as_node=False)
        (g,) = b.node("Gather", [sh, idx], axis=0)
        (r,) = b.node("Reshape", [y.name, g])
        b.add(r, x.shape)
        return 3
    (g,) = b.node("Gather", [sh, b.const(np.array(0, np.int64), as_node=False)], axis=0)
    (u,) = b.node("Unsqueeze", [g, b.const(np.array([0], np.int64), as_node=False)])
    (c,) = b.node("Concat", [u, b.const(np.array([-1], np.int64), as_node=False)], axis=0)
    (r,) = b.node("Reshape", [y.name, c])
    b.add(r, (x.shape[0], _size(x.shape) // x.shape[0]))
    return 5


def step_const_fold(draw, b: Builder) -> int:
    """(c1 + c2) * c3 computed from constants, then applied to x."""
    x = _pick(draw, b)
    shape = draw(st.sampled_from([(), x.shape[-1:]]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    c1 = b.const(rng.uniform(-1, 1, shape).astype(np.float32), as_node=True)
    c2 = b.const(rng.uniform(-1, 1, shape).astype(np.float32), as_node=draw(st.booleans()))
    c3 = b.const(rng.uniform(0.5, 1.5, shape).astype(np.float32), as_node=False)
    (s,) = b.node("Add", [c1, c2])
    (m,) = b.node("Mul", [s, c3])
    (z,) = b.node(draw(st.sampled_from(["Add", "Mul", "Sub"])), [x.name, m])
    b.add(z, x.shape)
    return 3


def step_dropout(draw, b: Builder) -> int:
    x = _pick(draw, b)
    inputs = [x.name]
    form = draw(st.sampled_from(["plain", "ratio", "ratio+mode"]))
    if form != "plain":
        inputs.append(b.const(np.array(0.3, np.float32), as_node=False))
    if form == "ratio+mode":
        inputs.append(b.const(np.array(False), as_node=False))
    with_mask = draw(st.booleans())
    outs = b.node("Dropout", inputs, n_out=2 if with_mask else 1, dup=False)
    b.add(outs[0], x.shape)
    return 1


def step_duplicate(draw, b: Builder) -> int:
    """Re-emit an earlier node with the same inputs and attributes (a CSE target)."""
    cands = [n for n in b.simple if n.op_type != "Constant"]
    if not cands:
        return 0
    orig = cands[draw(st.integers(0, len(cands) - 1))]
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


STEPS = {
    "unary": (step_unary, 2), "binary_var": (step_binary_var, 1), "div_var": (step_div_var, 3),
    "binary_const": (step_binary_const, 2), "cast_roundtrip": (step_cast_roundtrip, 2),
    "transpose": (step_transpose, 2), "reshape": (step_reshape, 3), "unsqueeze": (step_unsqueeze, 2),
    "concat_slice": (step_concat_slice, 2), "slice": (step_slice, 1), "shape_chain": (step_shape_chain, 5),
    "const_fold": (step_const_fold, 5), "dropout": (step_dropout, 1), "duplicate": (step_duplicate, 1),
}  # name -> (builder, most nodes it adds)


@st.composite
def models(draw) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A random small model and a feed for it."""
    b = Builder()
    rank = draw(st.integers(2, 3))
    # distinct sizes make a wrong Transpose/Reshape/Concat axis visible; 1 is last
    # so that shrinking goes to 2, not to the size where layouts coincide
    shape = tuple(draw(st.lists(st.sampled_from([2, 3, 4, 5, 1]), min_size=rank, max_size=rank)))
    symbolic = draw(st.booleans())
    n_inputs = draw(st.integers(1, 2))
    graph_inputs = []
    for i in range(n_inputs):
        name = f"x{i}"
        dims = ["N" if symbolic else shape[0], *shape[1:]]
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        b.add(name, shape)
    input_names = [v.name for v in b.pool]

    for name in draw(st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=10)):
        fn, most = STEPS[name]
        if len(b.nodes) + most > MAX_NODES:
            continue
        fn(draw, b)
    if len(b.nodes) < 2:
        for _ in range(2 - len(b.nodes)):
            step_unary(draw, b)

    # outputs: the last value, plus either the other leaves (values nothing reads,
    # so that most of the graph is live) or up to two computed values picked at
    # random (the rest is dead code)
    computed = [v for v in b.pool if v.name not in input_names]
    chosen = [computed[-1]]
    if draw(st.booleans()):
        read = {name for n in b.nodes for name in n.input}
        chosen += [v for v in computed[:-1] if v.name not in read][-3:]
    else:
        extra = draw(st.lists(st.integers(0, len(computed) - 1), max_size=2, unique=True))
        chosen += [computed[i] for i in extra if computed[i] is not chosen[0]]
    outputs = [helper.make_tensor_value_info(v.name, TensorProto.FLOAT, None) for v in chosen]

    graph = helper.make_graph(b.nodes, "prop", graph_inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    # declare the output shapes that shape inference finds (symbolic dims included)
    inferred = onnx.shape_inference.infer_shapes(model)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        if inf.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inf.type)
            for d in out.type.tensor_type.shape.dim:
                if d.dim_param.startswith("unk__"):  # names onnx invents for unknown dims
                    d.Clear()
    onnx.checker.check_model(model, full_check=True)

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    feed = {name: rng.standard_normal(shape).astype(np.float32) for name in input_names}
    return model, feed


def _count_nodes(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(_count_nodes(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
               for n in graph.node)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models())
def test_o1_preserves_outputs(case: tuple[onnx.ModelProto, dict[str, np.ndarray]]):
    model, feed = case
    optimized = graphopt.optimize(graphopt.ir.from_proto(model), PIPELINE)
    out = graphopt.ir.to_proto(optimized)

    assert signature_differences(model, out) == []
    assert _count_nodes(out.graph) <= _count_nodes(model.graph)
    onnx.checker.check_model(out, full_check=True)
    ref = run_model(model, feed, optimization_level="disable")
    got = run_model(out, feed, optimization_level="disable")
    report = compare_outputs(ref, got, rtol=RTOL, atol=ATOL)
    assert report.ok, report.summary() + "\n" + onnx.printer.to_text(model.graph)

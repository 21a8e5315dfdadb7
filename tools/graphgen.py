"""Random small ONNX graphs for property tests and fuzzing: one generator that
``tests/passes/test_o1_property.py`` (hypothesis, CI) and ``tools/fuzz.py``
(seeded, 1,000+ graphs) both use.

A graph is grown from steps; each step reads float32 values from a pool (their
concrete shapes are tracked) and appends nodes and new pool values. The steps
cover what graphopt rewrites: elementwise ops with variable and constant
operands (0 and 1 included; constants as initializers or Constant nodes;
broadcasting ones), Cast round trips (exact and lossy), Transpose/Reshape/
Unsqueeze/Squeeze/Concat/Slice and Shape->Gather->Reshape chains, constant
subgraphs that fold, inference-mode Dropout, duplicated nodes (CSE),
reductions, MatMul/Gemm (with bias and activation), Conv (+BatchNormalization,
+Relu), decomposed LayerNorm and Gelu (fusion targets), Softmax, Expand/Tile/
Pad/Split/Flatten/Gather/ConstantOfShape, sibling MatMuls and Convs, ops on
run-time int64 index and bool mask inputs, and control flow: If (on a
data-dependent condition or on a shape guard that shapes decide) and Loop,
with subgraphs that read outer-scope values. Opsets 13-23 are supported (each
step writes the form its opset wants).

Choices go through a :class:`Draw`; :class:`RandomDraw` makes a graph a pure
function of an integer seed, and the property test wraps hypothesis's ``draw``
in the same interface (so hypothesis can shrink a failing graph).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Draw", "RandomDraw", "Builder", "Val", "STEPS", "CI_STEPS", "build_model", "count_nodes", "ir_version_for"]

T = TypeVar("T")
MAX_ELEMENTS = 2048
MAX_RANK = 5


class Draw(Protocol):
    """The choices a generator makes; both implementations return the same kinds."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]`` (both included)."""

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options``; earlier options are the ones shrinking goes to."""

    def boolean(self) -> bool:
        """True or False."""

    def permutation(self, n: int) -> list[int]:
        """A permutation of ``range(n)``."""


class RandomDraw:
    """:class:`Draw` from ``random.Random(seed)``: the same seed gives the same graph."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options``, uniformly."""
        return options[self.rng.randrange(len(options))]

    def boolean(self) -> bool:
        """A fair coin."""
        return self.rng.random() < 0.5

    def permutation(self, n: int) -> list[int]:
        """A uniform permutation of ``range(n)``."""
        return self.rng.sample(range(n), n)


@dataclass
class Val:
    """A float32 value of the graph and its concrete (runtime) shape."""

    name: str
    shape: tuple[int, ...]


@dataclass
class Builder:
    """Accumulates nodes and initializers; ``pool`` holds the float32 values
    (with their concrete shapes) that later steps may read."""

    opset: int = 17
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    pool: list[Val] = field(default_factory=list)
    simple: list[onnx.NodeProto] = field(default_factory=list)  # candidates for duplication
    counter: int = 0
    # graph inputs that are not float32 pool values: (value info, the array fed to it)
    extra_inputs: list[tuple[onnx.ValueInfoProto, np.ndarray]] = field(default_factory=list)

    def fresh(self, stem: str) -> str:
        """A new unique name starting with ``stem``."""
        self.counter += 1
        return f"{stem}_{self.counter}"

    def node(self, op: str, inputs: list[str], n_out: int = 1, dup: bool = True, **attrs) -> list[str]:
        """Append a node; return its output names."""
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
        """Put a new value in the pool."""
        v = Val(name, tuple(int(d) for d in shape))
        self.pool.append(v)
        return v


def size_of(shape: tuple[int, ...]) -> int:
    """Number of elements of a shape."""
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def ok_shape(shape: tuple[int, ...]) -> bool:
    """Whether a shape stays within the generator's rank and size limits."""
    return len(shape) <= MAX_RANK and size_of(shape) <= MAX_ELEMENTS


def pick(d: Draw, b: Builder, pred: Callable[[Val], bool] | None = None) -> Val | None:
    """A pool value (satisfying ``pred``), biased toward recent ones so chains get deep."""
    cands = [v for v in b.pool if pred is None or pred(v)]
    if not cands:
        return None
    return cands[len(cands) - 1 - d.integer(0, len(cands) - 1)]


def rand_array(d: Draw, shape: tuple[int, ...], lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """A float32 array with values in ``[lo, hi)`` from a seed the draw picks."""
    rng = np.random.default_rng(d.integer(0, 2**16))
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def reduce_node(b: Builder, op: str, x: str, axes: list[int] | None, keepdims: int) -> str:
    """A Reduce* node in the form the builder's opset wants (axes as an input
    from opset 13 for ReduceSum and 18 for the others, an attribute before)."""
    as_input = op == "ReduceSum" or b.opset >= 18
    if axes is None:
        (y,) = b.node(op, [x], keepdims=keepdims)
    elif as_input:
        (y,) = b.node(op, [x, b.const(np.array(axes, np.int64), as_node=False)], keepdims=keepdims)
    else:
        (y,) = b.node(op, [x], axes=axes, keepdims=keepdims)
    return y


# ---------------------------------------------------------------------------
# steps: each appends nodes and pool values (the budget check uses the most
# nodes a step can add, from STEPS)

from graphgen_steps import (  # noqa: E402 - the steps need the helpers above
    step_binary_const, step_binary_var, step_cast_roundtrip, step_concat_slice, step_const_fold, step_conv,
    step_div_var, step_dropout, step_duplicate, step_elementwise, step_gelu, step_if, step_layernorm, step_loop,
    step_matmul, step_reduce, step_reshape, step_shape_chain, step_shape_ops, step_siblings, step_slice, step_softmax,
    step_transpose, step_unary, step_unsqueeze, step_dynamic,
)

STEPS: dict[str, tuple[Callable[[Draw, Builder], int], int]] = {
    "unary": (step_unary, 2), "binary_var": (step_binary_var, 1), "div_var": (step_div_var, 3),
    "binary_const": (step_binary_const, 2), "cast_roundtrip": (step_cast_roundtrip, 2),
    "transpose": (step_transpose, 2), "reshape": (step_reshape, 3), "unsqueeze": (step_unsqueeze, 2),
    "concat_slice": (step_concat_slice, 2), "slice": (step_slice, 1), "shape_chain": (step_shape_chain, 5),
    "const_fold": (step_const_fold, 5), "dropout": (step_dropout, 1), "duplicate": (step_duplicate, 1),
    # beyond the original property test
    "elementwise": (step_elementwise, 3), "reduce": (step_reduce, 2), "matmul": (step_matmul, 4),
    "conv": (step_conv, 4), "softmax": (step_softmax, 1), "layernorm": (step_layernorm, 12),
    "gelu": (step_gelu, 6), "if": (step_if, 5), "loop": (step_loop, 2),
    "shape_ops": (step_shape_ops, 4), "siblings": (step_siblings, 3), "dynamic": (step_dynamic, 3),
}  # name -> (builder, most nodes it adds to the main graph, Constant nodes included)

CI_STEPS = tuple(sorted(STEPS))
"""The steps the CI property test draws from (all of them)."""


def ir_version_for(opset: int) -> int:
    """The IR version a model of ``opset`` is written with (what onnx pairs
    with it, and at most 11, which the pinned onnxruntime accepts)."""
    return 11 if opset >= 23 else 10 if opset >= 21 else 9 if opset >= 19 else 8


def build_model(d: Draw, *, opsets: Sequence[int] = (17,), steps: Sequence[str] = CI_STEPS,
                max_nodes: int = 12, max_steps: int = 10,
                symbolic_all: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A random model and a float32 feed for it.

    Args:
        d: where the choices come from.
        opsets: default-domain opsets to choose from.
        steps: names of :data:`STEPS` to draw from.
        max_nodes: most nodes of the main graph (a step that could exceed it is skipped).
        max_steps: most steps drawn.
        symbolic_all: declare each non-batch input dim symbolic with
            probability 1/4 (the batch dim is symbolic on half the graphs
            either way); constants in the graph are still built for the
            concrete sizes the feed has.

    Returns:
        ``(model, feed)``: the model passes ``onnx.checker`` (full check) and
        declares the output shapes onnx's inference finds (symbolic dims
        included, invented ``unk__`` names dropped).
    """
    b = Builder(opset=d.choice(list(opsets)))
    rank = d.integer(2, 4 if "conv" in steps else 3)
    # distinct sizes make a wrong Transpose/Reshape/Concat axis visible; 1 is last
    # so that shrinking goes to 2, not to the size where layouts coincide
    shape = tuple(d.choice([2, 3, 4, 5, 1]) for _ in range(rank))
    # the batch dim symbolic or not; with symbolic_all, every other dim too, by chance
    symbolic = [d.boolean()] + [symbolic_all and d.integer(0, 3) == 0 for _ in shape[1:]]
    n_inputs = d.integer(1, 2)
    graph_inputs = []
    for i in range(n_inputs):
        name = f"x{i}"
        dims = [("N" if k == 0 else f"S{k}") if sym else n for k, (n, sym) in enumerate(zip(shape, symbolic))]
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        b.add(name, shape)
    input_names = [v.name for v in b.pool]

    names = sorted(steps)
    for _ in range(d.integer(1, max_steps)):
        fn, most = STEPS[d.choice(names)]
        if len(b.nodes) + most > max_nodes:
            continue
        fn(d, b)
    while len(b.nodes) < 2:
        step_unary(d, b)

    # outputs: the last value, plus either the other leaves (values nothing reads,
    # so that most of the graph is live) or up to two computed values picked at
    # random (the rest is dead code)
    computed = [v for v in b.pool if v.name not in input_names]
    chosen = [computed[-1]]
    if d.boolean():
        read = {name for n in b.nodes for name in n.input}
        chosen += [v for v in computed[:-1] if v.name not in read][-3:]
    else:
        for _ in range(d.integer(0, 2)):
            extra = computed[d.integer(0, len(computed) - 1)]
            if extra not in chosen:
                chosen.append(extra)
    outputs = [helper.make_tensor_value_info(v.name, TensorProto.FLOAT, [None] * len(v.shape)) for v in chosen]

    graph_inputs += [vi for vi, _ in b.extra_inputs]
    graph = helper.make_graph(b.nodes, "prop", graph_inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", b.opset)],
                              ir_version=ir_version_for(b.opset))
    # declare the output shapes that shape inference finds (symbolic dims included)
    inferred = onnx.shape_inference.infer_shapes(model)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        if inf.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inf.type)
            for dim in out.type.tensor_type.shape.dim:
                if dim.dim_param.startswith("unk__"):  # names onnx invents for unknown dims
                    dim.Clear()
    onnx.checker.check_model(model, full_check=True)

    rng = np.random.default_rng(d.integer(0, 2**32 - 1))
    feed = {name: rng.standard_normal(shape).astype(np.float32) for name in input_names}
    feed.update({vi.name: array for vi, array in b.extra_inputs})
    return model, feed


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes of a graph, those of its subgraphs included."""
    return sum(1 + sum(count_nodes(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
               for n in graph.node)

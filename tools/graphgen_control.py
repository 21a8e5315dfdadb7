"""Control-flow steps of :mod:`graphgen`: If and Loop whose subgraphs read
outer-scope values (import :mod:`graphgen`, not this module)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from graphgen import Builder, Draw, Val, ok_shape, pick, reduce_node


def _readable(v: Val) -> bool:
    """Whether a subgraph may read ``v`` from the outer scope: not a Cast's
    output (onnxruntime's always-on Cast-pair removal leaves a subgraph's
    implicit input dangling: 'Missing Input: cast_5', even with graph
    optimizations disabled)."""
    return not v.name.startswith("cast_")


def _sub(b: Builder, outer: list[Val]) -> Builder:
    """A builder for a subgraph: names continue the outer counter, the pool is
    the outer values it may read."""
    return Builder(opset=b.opset, pool=list(outer), counter=b.counter)


def _branch(d: Draw, b: Builder, x: Val, depth: int):
    """A branch graph computing a value of x's shape from outer-scope x (and
    other outer values) through 1-3 ops; may hold a nested guard If."""
    sub = _sub(b, [v for v in b.pool if v.shape == x.shape and _readable(v)])
    cur = x.name
    for _ in range(d.integer(1, 3)):
        kind = d.choice(["Relu", "Neg", "Sigmoid", "Tanh", "Identity", "addc", "mulc", "outer"]
                        + (["guard"] if depth == 0 else []))
        if kind == "addc" or kind == "mulc":
            shape = d.choice([(), x.shape[-1:]])
            c = sub.const(np.full(shape, d.choice([0.0, 1.0, 0.5, -2.0]), np.float32), as_node=True)
            (cur,) = sub.node("Add" if kind == "addc" else "Mul", [cur, c])
        elif kind == "outer":
            other = pick(d, sub)
            (cur,) = sub.node(d.choice(["Add", "Sub", "Mul"]), [cur, other.name])
        elif kind == "guard":
            cur = _if_node(d, sub, Val(cur, x.shape), "guard", depth + 1)
        else:
            (cur,) = sub.node(kind, [cur])
    b.counter = sub.counter
    graph = helper.make_graph(sub.nodes, b.fresh("branch"), [],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [None] * len(x.shape))], initializer=sub.inits)
    return graph


def _condition(d: Draw, b: Builder, x: Val, kind: str) -> str:
    """A bool scalar: data-dependent (ReduceSum(first graph input) > 0) or a
    guard that x's shape decides (Size(Shape(x)) == rank, or the last dim == a
    number)."""
    if kind == "data":
        # on a graph input, exact in every model: a computed value may sum to 0
        # up to rounding (a LayerNorm's output does), so that any pass's 1-ulp
        # change flips the branch (fuzz seed 20023 at --max-nodes 48)
        s = reduce_node(b, "ReduceSum", b.pool[0].name, None, 0)
        (c,) = b.node("Greater", [s, b.const(np.array(0.0, np.float32), as_node=False)], dup=False)
        return c
    (sh,) = b.node("Shape", [x.name], dup=False)
    if d.boolean():
        (r,) = b.node("Size", [sh], dup=False)
        k = len(x.shape) + d.choice([0, 0, 1])
    else:
        (r,) = b.node("Gather", [sh, b.const(np.array(-1, np.int64), as_node=False)], axis=0, dup=False)
        k = x.shape[-1] + d.choice([0, 0, 1])
    (c,) = b.node("Equal", [r, b.const(np.array(k, np.int64), as_node=False)], dup=False)
    return c


def _if_node(d: Draw, b: Builder, x: Val, kind: str, depth: int) -> str:
    """An If on a condition of ``kind`` whose branches compute x's shape."""
    cond = _condition(d, b, x, kind)
    then_g = _branch(d, b, x, depth)
    else_g = _branch(d, b, x, depth)
    (y,) = b.node("If", [cond], dup=False, then_branch=then_g, else_branch=else_g)
    return y


def step_if(d: Draw, b: Builder) -> int:
    """An If on a data-dependent condition or on a shape guard, with branches
    that read outer-scope values (one may nest a guard If)."""
    x = pick(d, b, _readable)
    if x is None:
        return 0
    y = _if_node(d, b, x, d.choice(["data", "guard"]), 0)
    b.add(y, x.shape)
    return 4


def step_loop(d: Draw, b: Builder) -> int:
    """A Loop of 1-3 iterations carrying v (initially x): v = v * 0.5 + an
    outer-scope value (+ the iteration number), maybe with a scan output of every v."""
    x = pick(d, b)
    trips = d.integer(1, 3)
    scan = d.boolean() and ok_shape((trips, *x.shape))
    sub = _sub(b, [])
    it, cond_in, v_in = sub.fresh("iter"), sub.fresh("cond"), sub.fresh("v")
    (h,) = sub.node("Mul", [v_in, sub.const(np.array(0.5, np.float32), as_node=True)])
    # an outer-scope value other than x (onnxruntime cannot read the Loop's own
    # explicit input as an implicit one too: 'Missing Input'), else a constant
    outer = pick(d, b, lambda v: v.shape == x.shape and v.name != x.name and _readable(v))
    term = outer.name if outer else sub.const(np.full(x.shape[-1:], 0.25, np.float32), as_node=True)
    (v,) = sub.node(d.choice(["Add", "Sub"]), [h, term])
    if d.boolean():
        (f,) = sub.node("Cast", [it], to=TensorProto.FLOAT)
        (v,) = sub.node("Add", [v, f])
    (cond_out,) = sub.node("Identity", [cond_in])
    outs = [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
            helper.make_tensor_value_info(v, TensorProto.FLOAT, [None] * len(x.shape))]
    if scan:
        (s,) = sub.node("Identity", [v])
        outs.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, [None] * len(x.shape)))
    b.counter = sub.counter
    body = helper.make_graph(sub.nodes, b.fresh("body"),
                             [helper.make_tensor_value_info(it, TensorProto.INT64, []),
                              helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
                              helper.make_tensor_value_info(v_in, TensorProto.FLOAT, [None] * len(x.shape))], outs)
    m = b.const(np.array(trips, np.int64), as_node=False)
    cond = b.const(np.array(True), as_node=False) if d.boolean() else ""
    results = b.node("Loop", [m, cond, x.name], n_out=2 if scan else 1, dup=False, body=body)
    b.add(results[0], x.shape)
    if scan:
        b.add(results[1], (trips, *x.shape))
    return 1

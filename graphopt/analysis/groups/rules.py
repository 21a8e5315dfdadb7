"""Per-op channel rules: how a node couples the units on its inputs and outputs.

One handler per op family, registered in :data:`RULES` (Torch-Pruning's
per-op ``DependencyGraph`` handlers, here on ONNX ops): pass-through
elementwise and normalization ops, index maps (Transpose, Squeeze,
Unsqueeze, Slice, Gather, Flatten, Reduce*, pools), producers and consumers
with constant weights (MatMul, Gemm, Conv, ConvTranspose), batched MatMul
between activations (attention scores and context), Split and Concat
(sections). Reshape, Shape and the fused attention ops live in
:mod:`.rules_shape` and :mod:`.rules_attention`. A rule refuses
(:class:`~.propagate.Refuse`) whenever it cannot prove the group safe.
"""

from __future__ import annotations

import math
from typing import Callable

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse, Regranulate, Site

__all__ = ["RULES", "rule_of", "attr_int", "attr_ints", "const_ints", "const_target", "norm"]

Rule = Callable[[Builder, ir.Node], None]


def attr_int(node: ir.Node, name: str, default: int | None = None) -> int | None:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else [int(v) for v in attr.value]


def const_ints(value: ir.Value | None) -> list[int] | None:
    """A small constant int tensor as a list (None when absent or not constant)."""
    arr = ir.const_array(value, max_elements=4096) if value is not None else None
    return None if arr is None else [int(v) for v in arr.reshape(-1)]


def const_target(value: ir.Value) -> tuple[str, str | None]:
    """``(target, attribute)`` naming a constant for a :class:`ShapeEdit`:
    an initializer by name, a ``Constant`` node by node name and ``"value"``."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant":
        return producer.name or "", "value"
    return value.name or "", None


def norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _rank(b: Builder, value: ir.Value) -> int:
    r = b.dims.rank(value)
    if r is None:
        raise Refuse(f"the rank of {value.name} is unknown")
    return r


def _dim(b: Builder, value: ir.Value, axis: int) -> int:
    dims = b.dims.of(value)
    if dims is None or axis >= len(dims) or dims[axis] is None:
        raise Refuse(f"dim {axis} of {value.name} is unknown (cannot prove it broadcasts or carries the units)")
    return int(dims[axis])


def _unused_extra_outputs(node: ir.Node) -> None:
    for out in node.outputs[1:]:
        if out is not None and (out.uses() or out.is_graph_output()):
            raise Refuse(f"output {out.name} of {node.op_type} {node.name} is used")


# pass-through --------------------------------------------------------------
def unary(b: Builder, node: ir.Node) -> None:
    """Elementwise with one data input: input and output share the site."""
    _unused_extra_outputs(node)
    x, y = node.inputs[0], node.outputs[0]
    s = b.site(x) or b.site(y)
    if s is not None:
        b.put_or_slice(node, x, s)
        b.put(y, s)


def elementwise(b: Builder, node: ir.Node) -> None:
    """Broadcasting elementwise ops (Add, Mul, Where, Clip, PRelu, ...): an
    input whose dim on the output's channel axis is 1 (or that lacks the
    axis) broadcasts; a constant that carries the axis is sliced (``param``);
    an activation that carries it joins the group."""
    _unused_extra_outputs(node)
    out = node.outputs[0]
    r = _rank(b, out)
    s = b.site(out)
    if s is None:
        for v in node.inputs:
            sv = b.site(v)
            if sv is not None:
                s = Site(sv.axis + r - _rank(b, v), sv.unit, sv.starts)
                break
    if s is None:
        return
    b.put(out, s)
    for v in node.inputs:
        if v is None:
            continue
        a = s.axis - (r - _rank(b, v))
        if a < 0 or _dim(b, v, a) == 1:
            if b.site(v) is not None:
                raise Refuse(f"{v.name} carries the units but broadcasts in {node.op_type} {node.name}")
            continue
        if ir.is_constant(v):
            b.slice_const(node, v, a, s, "param")
        else:
            b.put(v, Site(a, s.unit, s.starts))


def softmax(b: Builder, node: ir.Node) -> None:
    """Softmax/LogSoftmax/Hardmax: pass-through unless it normalizes over the channel axis."""
    s = b.site(node.inputs[0]) or b.site(node.outputs[0])
    if s is None:
        return
    r = _rank(b, node.inputs[0])
    opset = _opset(node)
    axis = norm(attr_int(node, "axis", -1 if opset >= 13 else 1), r)
    if s.axis == axis or (opset < 13 and s.axis > axis):
        raise Refuse(f"{node.op_type} {node.name} normalizes over the channel axis")
    unary(b, node)


def _opset(node: ir.Node) -> int:
    graph = node.graph
    imports = getattr(graph, "opset_imports", None) or {}
    return int(imports.get("", imports.get("ai.onnx", 17)))


def layer_norm(b: Builder, node: ir.Node) -> None:
    """LayerNormalization (and com.microsoft's Skip/Simplified forms): pass-through over
    leading axes; refused over the normalized ones (hidden-size pruning)."""
    x = node.inputs[0]
    s = b.site(x) or b.site(node.outputs[0])
    if s is None:
        return
    r = _rank(b, x)
    axis = norm(attr_int(node, "axis", -1), r) if node.op_type in ("LayerNormalization",) else r - 1
    if s.axis >= axis:
        raise Refuse(f"{node.op_type} {node.name} normalizes over the channel axis "
                     "(hidden-size pruning is not supported)")
    if node.op_type.startswith("Skip"):
        raise Refuse(f"{node.op_type} {node.name}: a site on a leading axis is not supported")
    unary(b, node)


def batch_norm(b: Builder, node: ir.Node) -> None:
    """BatchNormalization / InstanceNormalization: channel axis 1; scale,
    bias (and running mean, variance) sliced on axis 0."""
    _unused_extra_outputs(node)
    x, y = node.inputs[0], node.outputs[0]
    s = b.site(x) or b.site(y)
    if s is None:
        return
    if s.axis != 1:
        raise Refuse(f"{node.op_type} {node.name}: the units are not on the channel axis")
    b.put(x, s)
    b.put(y, s)
    for v in node.inputs[1:]:
        if v is None:
            continue
        if not ir.is_constant(v):
            raise Refuse(f"{node.op_type} {node.name}: parameter {v.name} is not constant")
        b.slice_const(node, v, 0, s, "param")


# index maps ------------------------------------------------------------------
def mapped(forward: Callable[[Builder, ir.Node, int], int]) -> Rule:
    """A rule for ops that move axes without mixing them: ``forward`` maps an
    input axis to the output axis (raising :class:`Refuse` for an axis
    it removes or mixes); the inverse is found by search."""

    def rule(b: Builder, node: ir.Node) -> None:
        _unused_extra_outputs(node)
        x, y = node.inputs[0], node.outputs[0]
        for v in node.inputs[1:]:
            if b.site(v) is not None:
                raise Refuse(f"the units reach input {v.name} of {node.op_type} {node.name}, which is not data")
        sx = b.site(x)
        if sx is not None:
            b.put(y, Site(forward(b, node, sx.axis), sx.unit, sx.starts))
        sy = b.site(y)
        if sy is not None:
            r = _rank(b, x)
            for a in range(r):
                try:
                    if forward(b, node, a) == sy.axis:
                        b.put_or_slice(node, x, Site(a, sy.unit, sy.starts))
                        return
                except Refuse:
                    continue
            raise Refuse(f"{node.op_type} {node.name}: no input axis maps to the output's channel axis")

    return rule


def _transpose(b: Builder, node: ir.Node, a: int) -> int:
    r = _rank(b, node.inputs[0])
    perm = attr_ints(node, "perm") or list(range(r))[::-1]
    return perm.index(a)


def _axes(node: ir.Node, r: int) -> list[int] | None:
    axes = attr_ints(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_ints(node.inputs[1])
        if axes is None:
            raise Refuse(f"{node.op_type} {node.name}: the axes are not constant")
    return None if axes is None else [norm(v, r) for v in axes]


def _unsqueeze(b: Builder, node: ir.Node, a: int) -> int:
    r = _rank(b, node.inputs[0])
    axes = _axes(node, r + len(const_ints(node.inputs[1]) or attr_ints(node, "axes") or []))
    if axes is None:
        raise Refuse(f"Unsqueeze {node.name}: no axes")
    kept = [i for i in range(r + len(axes)) if i not in axes]
    return kept[a]


def _squeeze(b: Builder, node: ir.Node, a: int) -> int:
    x = node.inputs[0]
    r = _rank(b, x)
    axes = _axes(node, r)
    if axes is None:
        dims = b.dims.of(x)
        if dims is None or None in dims:
            raise Refuse(f"Squeeze {node.name}: unknown dims")
        axes = [i for i, d in enumerate(dims) if d == 1]
    if a in axes:
        raise Refuse(f"Squeeze {node.name} removes the channel axis")
    return a - sum(1 for v in axes if v < a)


def _reduce(b: Builder, node: ir.Node, a: int) -> int:
    r = _rank(b, node.inputs[0])
    axes = _axes(node, r)
    if not axes:
        if attr_int(node, "noop_with_empty_axes", 0):
            return a
        raise Refuse(f"{node.op_type} {node.name} reduces over every axis, the channel axis too")
    if a in axes:
        raise Refuse(f"{node.op_type} {node.name} reduces over the channel axis")
    return a if attr_int(node, "keepdims", 1) else a - sum(1 for v in axes if v < a)


def _slice(b: Builder, node: ir.Node, a: int) -> int:
    r = _rank(b, node.inputs[0])
    starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
    if starts is None or ends is None:
        if attr_ints(node, "starts") is not None:
            starts, ends = attr_ints(node, "starts"), attr_ints(node, "ends")
        else:
            raise Refuse(f"Slice {node.name}: starts/ends are not constant")
    axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else attr_ints(node, "axes")
    axes = [norm(v, r) for v in (axes if axes is not None else range(len(starts)))]
    steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(axes)
    if a in axes:
        i = axes.index(a)
        dim = _dim(b, node.inputs[0], a)
        if not (starts[i] in (0, -dim) or starts[i] <= -dim) or ends[i] < dim or steps[i] != 1:
            raise Refuse(f"Slice {node.name} slices the channel axis")
    return a


def _gather(b: Builder, node: ir.Node, a: int) -> int:
    r = _rank(b, node.inputs[0])
    g = norm(attr_int(node, "axis", 0), r)
    if a == g:
        raise Refuse(f"Gather {node.name} indexes the channel axis")
    q = _rank(b, node.inputs[1])
    return a if a < g else a + q - 1


def _spatial(b: Builder, node: ir.Node, a: int) -> int:
    if a != 1:
        raise Refuse(f"{node.op_type} {node.name}: the units are not on the channel axis")
    if node.op_type == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None:
        sizes = const_ints(node.inputs[3])
        if sizes is None or sizes:
            raise Refuse(f"Resize {node.name} states output sizes")
    if node.op_type == "Pad":
        pads = const_ints(node.inputs[1]) if len(node.inputs) > 1 else attr_ints(node, "pads")
        r = _rank(b, node.inputs[0])
        if pads is None or pads[1] != 0 or pads[1 + r] != 0:
            raise Refuse(f"Pad {node.name} pads the channel axis (or its pads are not constant)")
    return a


def flatten(b: Builder, node: ir.Node) -> None:
    """Flatten: the channel axis becomes output axis 1 (unit times the trailing
    elements) when the axes between the flatten axis and it are all 1."""
    x, y = node.inputs[0], node.outputs[0]
    dims = b.dims.of(x)
    if dims is None or None in dims:
        raise Refuse(f"Flatten {node.name}: unknown dims")
    f = norm(attr_int(node, "axis", 1), len(dims))
    sx, sy = b.site(x), b.site(y)
    if sx is None and sy is not None:
        if sy.axis != 1:
            raise Refuse(f"Flatten {node.name}: the units are on the flattened batch axis")
        a = next((i for i in range(f, len(dims)) if dims[i] != 1), None)
        if a is None:
            raise Refuse(f"Flatten {node.name}: no channel axis")
        tail = math.prod(dims[a + 1:])
        if sy.unit % tail:
            raise Regranulate(sy.unit, tail)
        if any(s % tail for s in sy.starts):
            raise Refuse(f"Flatten {node.name}: a section starts inside a channel")
        b.put(x, Site(a, sy.unit // tail, tuple(s // tail for s in sy.starts)))
        sx = b.site(x)
    if sx is not None:
        if sx.axis < f or math.prod(dims[f:sx.axis]) != 1:
            raise Refuse(f"Flatten {node.name} mixes the channel axis with others")
        tail = math.prod(dims[sx.axis + 1:])
        b.put(y, Site(1, sx.unit * tail, tuple(s * tail for s in sx.starts)))


# producers and consumers ---------------------------------------------------
def matmul(b: Builder, node: ir.Node) -> None:
    """MatMul: by a constant 2-D weight ``[K, N]``, its output's last axis makes
    it a producer (weight columns, ``out``) and its input's last axis a
    consumer (weight rows, ``in``); leading axes pass through. Between two
    activations (attention): batch axes couple A, B and the output, A's rows
    the output's rows, B's columns the output's columns, and the contracted
    axes of A and B each other."""
    a_in, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if ir.is_constant(a_in):
        raise Refuse(f"MatMul {node.name}: constant left operand")
    ra, r = _rank(b, a_in), _rank(b, y)
    if ir.is_constant(w):
        wd = b.dims.of(w)
        if wd is None or len(wd) != 2 or ra < 2:
            raise Refuse(f"MatMul {node.name}: the weight is not 2-D")
        sa, sy = b.site(a_in), b.site(y)
        if sa is not None:
            if sa.axis == ra - 1:
                b.slice_const(node, w, 0, sa, "in")
                b.consumer(node, a_in)
            else:
                b.put(y, Site(sa.axis + r - ra, sa.unit, sa.starts))
        sy = b.site(y)
        if sy is not None:
            if sy.axis == r - 1:
                b.slice_const(node, w, 1, sy, "out")
                b.producer(node)
            else:
                b.put(a_in, Site(sy.axis - (r - ra), sy.unit, sy.starts))
        return
    rb = _rank(b, w)
    if ra < 2 or rb < 2:
        raise Refuse(f"MatMul {node.name}: 1-D operand")
    # coordinates: ("a", axis), ("b", axis), ("y", axis)
    def links(which: str, axis: int) -> list[tuple[ir.Value, int]]:
        o = {"a": axis + r - ra, "b": axis + r - rb, "y": axis}[which]
        if which == "a" and axis == ra - 1:
            return [(w, rb - 2)]
        if which == "b" and axis == rb - 2:
            return [(a_in, ra - 1)]
        if o == r - 2:
            return [(a_in, ra - 2), (y, r - 2)]
        if o == r - 1:
            return [(w, rb - 1), (y, r - 1)]
        out = [(y, o)]
        for v, rv in ((a_in, ra), (w, rb)):
            av = o - (r - rv)
            if av >= 0 and _dim(b, v, av) != 1:
                out.append((v, av))
        if len(out) > 1:
            b.tags.add("batched")
        return out

    for which, v in (("a", a_in), ("b", w), ("y", y)):
        s = b.site(v)
        if s is None:
            continue
        for target, axis in links(which, s.axis):
            if target is not v:
                b.put(target, Site(axis, s.unit, s.starts))


def gemm(b: Builder, node: ir.Node) -> None:
    """Gemm ``alpha*A'B' + beta*C`` with a constant B: a consumer on A's axis 1
    (B's rows, or columns under ``transB``), a producer on the output's axis 1
    (C sliced as ``param`` when it carries the axis). ``transA`` is refused."""
    a_in, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not ir.is_constant(w) or ir.is_constant(a_in):
        raise Refuse(f"Gemm {node.name}: B is not a constant weight")
    if attr_int(node, "transA", 0):
        raise Refuse(f"Gemm {node.name}: transA is not supported")
    trans_b = attr_int(node, "transB", 0)
    sa, sy = b.site(a_in), b.site(y)
    if sa is not None:
        if sa.axis != 1:
            raise Refuse(f"Gemm {node.name}: the units are on the batch axis")
        b.slice_const(node, w, 1 if trans_b else 0, sa, "in")
        b.consumer(node, a_in)
    if sy is not None:
        if sy.axis != 1:
            raise Refuse(f"Gemm {node.name}: the units are on the batch axis")
        b.slice_const(node, w, 0 if trans_b else 1, sy, "out")
        b.producer(node)
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            cd = b.dims.of(c)
            if not ir.is_constant(c) or cd is None:
                raise Refuse(f"Gemm {node.name}: C is not constant")
            if cd and cd[-1] != 1:
                b.slice_const(node, c, len(cd) - 1, sy, "param")


def conv(b: Builder, node: ir.Node) -> None:
    """Conv / ConvTranspose with a constant weight, channels on axis 1.

    Conv (weight ``[Cout, Cin/group, k...]``): a producer on its output
    (weight axis 0, bias), a consumer on its input (weight axis 1) when
    ``group == 1``; a depthwise Conv (``group == Cin == Cout``) couples its
    input and output channels, slicing weight axis 0 and bias and
    decreasing ``group``. ConvTranspose (``[Cin, Cout/group, k...]``): the
    axes swapped, ``group == 1`` only. Other grouped convolutions are refused.
    com.microsoft.FusedConv (Conv + activation, optional sum input Z, as
    onnxruntime's transformer writes it) is a Conv whose Z shares the output's site.
    """
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if not ir.is_constant(w) or (bias is not None and not ir.is_constant(bias)):
        raise Refuse(f"{node.op_type} {node.name}: the weight is not constant")
    b.tags.add("conv")
    group = attr_int(node, "group", 1)
    wd = b.dims.of(w)
    sx, sy = b.site(x), b.site(y)
    for s in (sx, sy):
        if s is not None and s.axis != 1:
            raise Refuse(f"{node.op_type} {node.name}: the units are not on the channel axis")
    transpose = node.op_type == "ConvTranspose"
    z = node.inputs[3] if node.op_type == "FusedConv" and len(node.inputs) > 3 else None
    if z is not None and (sy is not None or b.site(z) is not None):  # FusedConv's sum input: a residual Add
        b.put(y, sy or b.site(z))
        b.put(z, b.site(y))
        sy = b.site(y)
    if group != 1:
        depthwise = not transpose and wd is not None and wd[1] == 1 and wd[0] == group
        if not depthwise:
            raise Refuse(f"{node.op_type} {node.name}: grouped convolution (group={group}) is not supported")
        s = sx or sy
        b.put(x, s)
        b.put(y, s)
        s = b.site(y)
        b.slice_const(node, w, 0, s, "out")
        if bias is not None:
            b.slice_const(node, bias, 0, s, "param")
        b.edit(node, ShapeEdit(node.name or "", "group", 0, s.unit * len(s.starts)))
        b.tags.add("depthwise")
        return
    if sx is not None:
        b.slice_const(node, w, 0 if transpose else 1, sx, "in")
        b.consumer(node, x)
    if sy is not None:
        b.slice_const(node, w, 1 if transpose else 0, sy, "out")
        if bias is not None:
            b.slice_const(node, bias, 0, sy, "param")
        b.producer(node)


# sections ----------------------------------------------------------------------
def _sizes(b: Builder, node: ir.Node, axis: int) -> tuple[list[int], tuple[str, str | None] | None]:
    """Split sizes and where they are stated: ``(target, attribute)`` or None (equal split)."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = const_ints(node.inputs[1])
        if sizes is None:
            raise Refuse(f"Split {node.name}: the sizes are not constant")
        return sizes, const_target(node.inputs[1])
    if attr_ints(node, "split") is not None:
        return attr_ints(node, "split"), (node.name or "", "split")
    n = len(node.outputs)
    total = _dim(b, node.inputs[0], axis)
    return [total // n] * n, None


def split(b: Builder, node: ir.Node) -> None:
    """Split: along another axis every output shares the site; along the
    channel axis each section goes to the output holding it (offsets), and
    that output's size decreases per removed unit (the sizes tensor, shared
    across layers after O1's sibling merge, is copied on write)."""
    x = node.inputs[0]
    r = _rank(b, x)
    axis = norm(attr_int(node, "axis", 0), r)
    sites = [(v, b.site(v)) for v in (x, *node.outputs)]
    known = [s for _, s in sites if s is not None]
    if not known:
        return
    if known[0].axis != axis:
        for v in (x, *node.outputs):
            if v is x or v.uses() or v.is_graph_output():
                b.put(v, known[0])
        return
    sizes, where = _sizes(b, node, axis)
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    for k, out in enumerate(node.outputs):
        s = b.site(out)
        if s is not None:
            b.put(x, Site(axis, s.unit, tuple(v + offsets[k] for v in s.starts)))
    sx = b.site(x)
    counts = [0] * len(sizes)
    for start in sx.starts:
        end = start + b.size * sx.unit
        k = next((k for k in range(len(sizes)) if offsets[k] <= start and end <= offsets[k] + sizes[k]), None)
        if k is None:
            raise Refuse(f"Split {node.name}: a section of the units straddles two outputs")
        counts[k] += 1
        b.put(node.outputs[k], Site(axis, sx.unit, (start - offsets[k],)))
    if where is None:
        if len(set(counts)) != 1:
            b.pending[node] = f"Split {node.name} splits evenly and the units are not in every output"
        return
    for k, count in enumerate(counts):
        if count:
            b.edit(node, ShapeEdit(where[0], where[1], k, sx.unit * count,
                                   (node.name or "",) if where[1] != "split" else ()))


def concat(b: Builder, node: ir.Node) -> None:
    """Concat: along another axis every input and the output share the site
    (a constant input is sliced); along the channel axis each input's
    sections move by its offset."""
    y = node.outputs[0]
    r = _rank(b, y)
    axis = norm(attr_int(node, "axis", 0), r)
    known = [b.site(v) for v in (*node.inputs, y) if b.site(v) is not None]
    if not known:
        return
    if known[0].axis != axis:
        s = known[0]
        b.put(y, s)
        for v in node.inputs:
            if ir.is_constant(v):
                b.slice_const(node, v, s.axis, s, "param")
            else:
                b.put(v, s)
        return
    lengths = [_dim(b, v, axis) for v in node.inputs]
    offsets = [sum(lengths[:k]) for k in range(len(lengths))]
    for k, v in enumerate(node.inputs):
        s = b.site(v)
        if s is not None:
            b.put(y, Site(axis, s.unit, tuple(t + offsets[k] for t in s.starts)))
    sy = b.site(y)
    for start in sy.starts:
        end = start + b.size * sy.unit
        k = next((k for k in range(len(lengths)) if offsets[k] <= start and end <= offsets[k] + lengths[k]), None)
        if k is None:
            raise Refuse(f"Concat {node.name}: a section of the units straddles two inputs")
        v = node.inputs[k]
        if ir.is_constant(v):
            b.slice_const(node, v, axis, sy, "param", (start - offsets[k],))
        else:
            b.put(v, Site(axis, sy.unit, (start - offsets[k],)))


UNARY = ("Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu",
         "Softplus", "Softsign", "Neg", "Abs", "Sqrt", "Exp", "Log", "Identity", "Cast", "Dropout", "Sin", "Cos",
         "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Mish", "Celu", "ThresholdedRelu", "Not", "IsNaN",
         "CastLike")
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Clip", "PRelu",
               "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod")
SPATIAL = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Resize",
           "Upsample", "Pad", "LRN")
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")

RULES: dict[tuple[str, str], Rule] = {}
"""(domain, op_type) -> rule; ``""`` is the default ONNX domain."""
for _op in UNARY:
    RULES["", _op] = unary
for _op in ELEMENTWISE:
    RULES["", _op] = elementwise
for _op in SPATIAL:
    RULES["", _op] = mapped(_spatial)
for _op in REDUCE:
    RULES["", _op] = mapped(_reduce)
for _op in ("Softmax", "LogSoftmax", "Hardmax"):
    RULES["", _op] = softmax
for _op in ("Gelu", "QuickGelu", "FastGelu", "BiasGelu", "BiasAdd"):
    RULES["com.microsoft", _op] = elementwise
RULES["", "LayerNormalization"] = layer_norm
for _op in ("SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"):
    RULES["com.microsoft", _op] = layer_norm
RULES["", "SimplifiedLayerNormalization"] = layer_norm
RULES["", "RMSNormalization"] = layer_norm
RULES["", "BatchNormalization"] = batch_norm
RULES["", "InstanceNormalization"] = batch_norm
RULES["", "Transpose"] = mapped(_transpose)
RULES["", "Unsqueeze"] = mapped(_unsqueeze)
RULES["", "Squeeze"] = mapped(_squeeze)
RULES["", "Slice"] = mapped(_slice)
RULES["", "Gather"] = mapped(_gather)
RULES["", "Flatten"] = flatten
RULES["", "MatMul"] = matmul
RULES["", "Gemm"] = gemm
RULES["", "Conv"] = conv
RULES["", "ConvTranspose"] = conv
RULES["com.microsoft", "FusedConv"] = conv
RULES["", "Split"] = split
RULES["", "Concat"] = concat


def rule_of(node: ir.Node) -> Rule | None:
    """The rule for ``node`` (None: no channel rule, the group is refused)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return RULES.get((domain, node.op_type))

"""Channel rules for the ops with weights: MatMul, Gemm, Conv, ConvTranspose,
com.microsoft.FusedConv, and MatMul between two activations (attention's
scores and context), after Torch-Pruning's linear/conv handlers."""

from __future__ import annotations

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse, Site
from graphopt.analysis.groups.rules import RULES, attr_int, dim_of, rank_of

__all__ = ["matmul", "gemm", "conv"]


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
    ra, r = rank_of(b, a_in), rank_of(b, y)
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
    rb = rank_of(b, w)
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
            if av >= 0 and dim_of(b, v, av) != 1:
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


RULES["", "MatMul"] = matmul
RULES["", "Gemm"] = gemm
RULES["", "Conv"] = conv
RULES["", "ConvTranspose"] = conv
RULES["com.microsoft", "FusedConv"] = conv

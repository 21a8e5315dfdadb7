"""Per-op channel rules: how a node couples the units on its inputs and outputs.

One handler per op family, registered in :data:`RULES` (Torch-Pruning's
per-op ``DependencyGraph`` handlers, here on ONNX ops): pass-through
elementwise and normalization ops, index maps (Transpose, Squeeze,
Unsqueeze, Slice, Gather, Flatten, Reduce*, pools), producers and consumers
with constant weights and batched MatMul between activations, Split and
Concat (sections). MatMul, Gemm and Conv live in :mod:`.rules_weights`; Reshape,
Shape and the fused attention ops in :mod:`.rules_shape` and :mod:`.rules_attention`. A rule refuses
(:class:`~.propagate.Refuse`) whenever it cannot prove the group safe.
"""

from __future__ import annotations

import math
from typing import Callable

from graphopt import ir
from graphopt.analysis.groups.model import ShapeEdit
from graphopt.analysis.groups.propagate import Builder, Refuse, Regranulate, Site, make_site

__all__ = ["RULES", "rule_of", "attr_int", "attr_ints", "const_ints", "const_target", "norm", "rank_of", "dim_of",
           "unused_extra_outputs"]

Rule = Callable[[Builder, ir.Node], None]


def attr_int(node: ir.Node, name: str, default: int | None = None) -> int | None:
    """An INT attribute of ``node`` (``default`` when absent)."""
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.value)


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    """An INTS attribute of ``node`` as a list (None when absent)."""
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
    """``axis`` made non-negative for a tensor of ``rank``."""
    return axis + rank if axis < 0 else axis


def rank_of(b: Builder, value: ir.Value) -> int:
    """The rank of ``value`` (Refuse when unknown)."""
    r = b.dims.rank(value)
    if r is None:
        raise Refuse(f"the rank of {value.name} is unknown")
    return r


def dim_of(b: Builder, value: ir.Value, axis: int) -> int:
    """The concrete dim ``axis`` of ``value`` (Refuse when unknown)."""
    dims = b.dims.of(value)
    if dims is None or axis >= len(dims) or dims[axis] is None:
        raise Refuse(f"dim {axis} of {value.name} is unknown (cannot prove it broadcasts or carries the units)")
    return int(dims[axis])


def unused_extra_outputs(node: ir.Node) -> None:
    """Refuse when an output other than the first is read (Dropout's mask, BN's running stats)."""
    for out in node.outputs[1:]:
        if out is not None and (out.uses() or out.is_graph_output()):
            raise Refuse(f"output {out.name} of {node.op_type} {node.name} is used")


# pass-through --------------------------------------------------------------
def unary(b: Builder, node: ir.Node) -> None:
    """Elementwise with one data input: input and output share the site."""
    unused_extra_outputs(node)
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
    unused_extra_outputs(node)
    out = node.outputs[0]
    r = rank_of(b, out)
    s = b.site(out)
    if s is None:
        for v in node.inputs:
            sv = b.site(v)
            if sv is not None:
                s = Site(sv.axis + r - rank_of(b, v), sv.unit, sv.starts)
                break
    if s is None:
        return
    b.put(out, s)
    for v in node.inputs:
        if v is None:
            continue
        a = s.axis - (r - rank_of(b, v))
        if a < 0 or dim_of(b, v, a) == 1:
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
    r = rank_of(b, node.inputs[0])
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
    r = rank_of(b, x)
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
    unused_extra_outputs(node)
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
        unused_extra_outputs(node)
        x, y = node.inputs[0], node.outputs[0]
        for v in node.inputs[1:]:
            if b.site(v) is not None:
                raise Refuse(f"the units reach input {v.name} of {node.op_type} {node.name}, which is not data")
        sx = b.site(x)
        if sx is not None:
            b.put(y, Site(forward(b, node, sx.axis), sx.unit, sx.starts))
        sy = b.site(y)
        if sy is not None:
            r = rank_of(b, x)
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
    r = rank_of(b, node.inputs[0])
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
    r = rank_of(b, node.inputs[0])
    axes = _axes(node, r + len(const_ints(node.inputs[1]) or attr_ints(node, "axes") or []))
    if axes is None:
        raise Refuse(f"Unsqueeze {node.name}: no axes")
    kept = [i for i in range(r + len(axes)) if i not in axes]
    return kept[a]


def _squeeze(b: Builder, node: ir.Node, a: int) -> int:
    x = node.inputs[0]
    r = rank_of(b, x)
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
    r = rank_of(b, node.inputs[0])
    axes = _axes(node, r)
    if not axes:
        if attr_int(node, "noop_with_empty_axes", 0):
            return a
        raise Refuse(f"{node.op_type} {node.name} reduces over every axis, the channel axis too")
    if a in axes:
        raise Refuse(f"{node.op_type} {node.name} reduces over the channel axis")
    return a if attr_int(node, "keepdims", 1) else a - sum(1 for v in axes if v < a)


def _slice(b: Builder, node: ir.Node, a: int) -> int:
    r = rank_of(b, node.inputs[0])
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        axes = const_ints(node.inputs[3])
        if axes is not None and a not in [norm(v, r) for v in axes]:
            return a  # another axis is sliced, by bounds known or computed (TorchScript's rotate_half)
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
        dim = dim_of(b, node.inputs[0], a)
        if not (starts[i] in (0, -dim) or starts[i] <= -dim) or ends[i] < dim or steps[i] != 1:
            raise Refuse(f"Slice {node.name} slices the channel axis")
    return a


def _gather(b: Builder, node: ir.Node, a: int) -> int:
    r = rank_of(b, node.inputs[0])
    g = norm(attr_int(node, "axis", 0), r)
    if a == g:
        raise Refuse(f"Gather {node.name} indexes the channel axis")
    q = rank_of(b, node.inputs[1])
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
        r = rank_of(b, node.inputs[0])
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
    total = dim_of(b, node.inputs[0], axis)
    return [total // n] * n, None


def split(b: Builder, node: ir.Node) -> None:
    """Split: along another axis every output shares the site; along the
    channel axis each section goes to the output holding it (offsets), and
    that output's size decreases per removed unit (the sizes tensor, shared
    across layers after O1's sibling merge, is copied on write)."""
    x = node.inputs[0]
    r = rank_of(b, x)
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
            b.put(x, make_site(axis, {v + offsets[k]: u for v, u in s.sections().items()}))
    sx = b.site(x)
    counts = [0] * len(sizes)
    for start, unit in sx.sections().items():
        end = start + b.size * unit
        k = next((k for k in range(len(sizes)) if offsets[k] <= start and end <= offsets[k] + sizes[k]), None)
        if k is None:
            raise Refuse(f"Split {node.name}: a section of the units straddles two outputs")
        counts[k] += unit
        b.put(node.outputs[k], Site(axis, unit, (start - offsets[k],)))
    if where is None:
        if len(set(counts)) != 1:
            b.pending[node] = f"Split {node.name} splits evenly and the units are not in every output"
        return
    for k, count in enumerate(counts):
        if count:
            b.edit(node, ShapeEdit(where[0], where[1], k, count,
                                   (node.name or "",) if where[1] != "split" else ()))


def concat(b: Builder, node: ir.Node) -> None:
    """Concat: along another axis every input and the output share the site
    (a constant input is sliced); along the channel axis each input's
    sections move by its offset."""
    y = node.outputs[0]
    r = rank_of(b, y)
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
    lengths = [dim_of(b, v, axis) for v in node.inputs]
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
RULES["", "Split"] = split
RULES["", "Concat"] = concat


def rule_of(node: ir.Node) -> Rule | None:
    """The rule for ``node`` (None: no channel rule, the group is refused)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return RULES.get((domain, node.op_type))

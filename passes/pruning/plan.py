"""What structured pruning knows about a model before it removes anything.

For each coupled group of :func:`graphopt.analysis.groups.find_groups` this
module gathers (:func:`build_plan`):

- the *sites*: the group's consumers that read a constant weight whose input
  rows shrink (MatMul ``x @ W``, Gemm with ``transA=0``, Conv with
  ``group=1``), with their data input (whose activation statistics score and
  refit them), the weight's input-channel axis, and the bias that follows
  (a Gemm's ``C``, a Conv's ``B``, or the constant of the one ``Add`` after a
  MatMul);
- the cost of one unit in MatMul/Conv FLOPs per sample position (a token, or
  one sample of a Conv's output grid): ``2 x`` the weight elements of the
  group's ``out``/``in`` slices per unit, times the output positions of a
  Conv; an attention head also costs ``4 * tokens * head_dim`` FLOPs per
  token in its ``QK^T`` and ``AV`` products (``tokens``, the sequence
  length assumed);
- the removable channel rows of each site per unit.

Nothing here reads activations; :mod:`.scoring` and :mod:`.allocation` do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.analysis.groups import CoupledGroup, GroupAnalysis

__all__ = ["Site", "GroupPlan", "build_plan", "conv_positions", "weight_rows", "rows_to_weight"]


@dataclass
class Site:
    """A consumer whose constant weight loses input rows.

    Attributes:
        node: the consumer node's name.
        op: ``MatMul`` | ``Gemm`` | ``Conv`` | ``ConvTranspose``.
        weight: the weight value's name (as in the original model).
        weight_index: the node input slot of the weight.
        in_axis: the weight's input-channel axis (0 for MatMul / Gemm ``transB=0`` and ConvTranspose
            ``[C_in, C_out/group, k...]``, 1 for ``transB=1`` and Conv).
        data: the data input's name (the activation whose channels are the weight's input rows).
        data_axis: its channel axis (-1 for MatMul / Gemm, 1 for Conv / ConvTranspose).
        bias: the bias value's name (``[N]``), or None when there is none the refit may change.
        pointwise: every output value is a product of one input position's channels with weight rows, so the
            channel Gram gives the output error exactly and least squares applies: MatMul, Gemm, a 1x1 Conv, and a
            ConvTranspose whose strides equal its kernel (no overlapping taps: each tap is a 1x1 map, DB-style
            upsampling heads); a ``k x k`` Conv only takes bias compensation.
        channels: the weight's input channel count.
        array: the original weight (as stored).
        bias_array: the original bias, or None.
        intercept: the least-squares refit fits an intercept into ``bias`` (its Gram is the centered one). False
            for a ConvTranspose, whose one bias per output channel is shared by all its kernel taps (the refit
            keeps the bias and fits the weight to the uncentered Gram, which is optimal for that bias).
    """

    node: str
    op: str
    weight: str
    weight_index: int
    in_axis: int
    data: str
    data_axis: int
    bias: str | None
    pointwise: bool
    channels: int
    array: np.ndarray
    bias_array: np.ndarray | None = None
    intercept: bool = True


@dataclass
class GroupPlan:
    """One group with what pruning needs.

    Attributes:
        group: the :class:`~graphopt.analysis.groups.CoupledGroup`.
        unit_flops: MatMul/Conv FLOPs per sample position removed with each unit.
        step: units kept come in multiples of this (``align`` neurons/channels; 1 head).
        rows: ``{site node: [size, unit] int array}``: the site weight's input rows of each unit.
        scores: ``[size]`` importance (higher = more important), filled by :mod:`.scoring`.
    """

    group: CoupledGroup
    unit_flops: float
    step: int
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    scores: np.ndarray | None = None

    @property
    def name(self) -> str:
        """The group's name."""
        return self.group.name

    @property
    def size(self) -> int:
        """Units in the group."""
        return self.group.size


def weight_rows(array: np.ndarray, in_axis: int) -> np.ndarray:
    """A weight as ``[C_in, N]`` float64: input channels first, every other axis flattened in order."""
    moved = np.moveaxis(np.asarray(array, dtype=np.float64), in_axis, 0)
    return moved.reshape(moved.shape[0], -1)


def rows_to_weight(rows: np.ndarray, like: np.ndarray, in_axis: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`weight_rows` for ``rows`` ``[K, N]``: the weight with ``K`` input channels, in ``like``'s
    layout (``like`` is the original weight, ``C_in`` on ``in_axis``), cast to ``dtype``."""
    moved = np.moveaxis(like, in_axis, 0)
    out = rows.reshape((rows.shape[0],) + moved.shape[1:])
    return np.ascontiguousarray(np.moveaxis(out, 0, in_axis).astype(dtype))


def _bias_after(node: ir.Node, n: int) -> ir.Value | None:
    """The constant ``[n]`` of the one Add reading a MatMul's output, read by nothing else."""
    uses = list(node.outputs[0].uses())
    if len(uses) != 1:
        return None
    add, slot = uses[0][0], uses[0][1]
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - slot]
    if other is None or not ir.is_constant(other) or len(list(other.uses())) != 1:
        return None
    arr = ir.const_array(other)
    return other if arr is not None and arr.shape == (n,) else None


def _site(node: ir.Node, weight_name: str) -> Site | None:
    """A :class:`Site` for ``node`` reading ``weight_name``, or None when its shape is not one the refit knows."""
    ins = list(node.inputs)
    if node.domain not in ("", "ai.onnx") or len(ins) < 2 or ins[0] is None or ins[1] is None:
        return None
    if ins[1].name != weight_name or not ir.is_constant(ins[1]):
        return None
    w = ir.const_array(ins[1])
    if w is None or not np.issubdtype(w.dtype, np.floating):
        return None
    bias: ir.Value | None = None
    if node.op_type == "MatMul" and w.ndim == 2:
        in_axis, data_axis = 0, -1
        bias = _bias_after(node, w.shape[1])
        pointwise = True
    elif node.op_type == "Gemm" and w.ndim == 2:
        attrs = node.attributes
        if attrs.get("transA") is not None and int(attrs["transA"].value):
            return None
        trans_b = attrs.get("transB") is not None and int(attrs["transB"].value)
        in_axis, data_axis = (1 if trans_b else 0), -1
        for key in ("alpha", "beta"):
            if attrs.get(key) is not None and float(attrs[key].value) != 1.0:
                return None
        n = w.shape[0] if trans_b else w.shape[1]
        if len(ins) > 2 and ins[2] is not None:
            c = ir.const_array(ins[2]) if ir.is_constant(ins[2]) else None
            if c is not None and c.shape == (n,) and len(list(ins[2].uses())) == 1:
                bias = ins[2]
        pointwise = True
    elif node.op_type == "Conv" and w.ndim >= 3:
        group = node.attributes.get("group")
        if group is not None and int(group.value) != 1:
            return None
        in_axis, data_axis = 1, 1
        if len(ins) > 2 and ins[2] is not None and ir.is_constant(ins[2]) and len(list(ins[2].uses())) == 1:
            bias = ins[2]
        pointwise = all(int(k) == 1 for k in w.shape[2:])
    elif node.op_type == "ConvTranspose" and w.ndim >= 3:
        attrs = node.attributes
        if attrs.get("group") is not None and int(attrs["group"].value) != 1:
            return None
        in_axis, data_axis = 0, 1
        if len(ins) > 2 and ins[2] is not None and ir.is_constant(ins[2]) and len(list(ins[2].uses())) == 1:
            bias = ins[2]
        kernel = [int(k) for k in w.shape[2:]]
        strides = list(attrs["strides"].value) if attrs.get("strides") is not None else [1] * len(kernel)
        dilations = list(attrs["dilations"].value) if attrs.get("dilations") is not None else [1] * len(kernel)
        pointwise = [int(x) for x in strides] == kernel and all(int(d) == 1 for d in dilations)
    else:
        return None
    bias_arr = None if bias is None else ir.const_array(bias)
    return Site(node.name, node.op_type, weight_name, 1, in_axis, ins[0].name, data_axis,
                None if bias_arr is None else bias.name, pointwise, int(w.shape[in_axis]), np.array(w),
                None if bias_arr is None else np.array(bias_arr), intercept=node.op_type != "ConvTranspose")


def conv_positions(node: ir.Node, dims: Callable[[str], tuple[int | None, ...] | None] | None = None) -> int:
    """Positions per sample at which each weight element of a Conv or ConvTranspose is applied: a Conv's output
    grid (``H_out * W_out``), a ConvTranspose's input grid (every input position is scattered through the kernel);
    from the static shape, else from the analysis's concrete dims at its sample binding (``dims``; the input size
    of the calibration data when prune has it), else 1."""
    if node.op_type not in ("Conv", "ConvTranspose"):
        return 1
    grid = node.inputs[0] if node.op_type == "ConvTranspose" else node.outputs[0]
    if grid is None:
        return 1
    shape = grid.shape
    spatial = list(shape)[2:] if shape is not None and len(shape) >= 3 else None
    if spatial is None or not all(isinstance(d, int) for d in spatial):
        known = dims(grid.name or "") if dims is not None else None
        spatial = list(known)[2:] if known is not None and len(known) >= 3 else None
        if spatial is None or not all(isinstance(d, int) for d in spatial):
            return 1
    return int(np.prod(spatial)) if spatial else 1


def build_plan(model: ir.Model, analysis: GroupAnalysis, kinds: tuple[str, ...], *, align: int = 8,
               tokens: int = 128) -> tuple[list[GroupPlan], dict[str, Site]]:
    """The :class:`GroupPlan` of every group of ``kinds`` and the sites their consumers make.

    Args:
        model: the IR model ``analysis`` was found on (weights read, not modified).
        analysis: :func:`~graphopt.analysis.groups.find_groups`'s result.
        kinds: group kinds to plan (``heads``, ``query-heads``, ``ffn``, ``channels``).
        align: kept neurons/channels are multiples of this; heads stay whole (step 1 head).
        tokens: sequence length assumed for an attention head's ``QK^T`` / ``AV`` FLOPs.

    Returns:
        ``(plans, sites)``: plans in the analysis's order; sites by consumer node name.
    """
    graph = model.graph
    nodes = {n.name: n for n in graph if n.name}
    values: dict[str, ir.Value] = dict(graph.initializers)
    for n in graph:
        for o in n.outputs:
            values.setdefault(o.name, o)
    sites: dict[str, Site] = {}
    plans: list[GroupPlan] = []
    for g in analysis.groups:
        if g.kind not in kinds:
            continue
        flops = 0.0
        for s in g.slices:
            if s.role not in ("out", "in"):
                continue
            arr_v = values.get(s.tensor)
            arr = ir.const_array(arr_v) if arr_v is not None else None
            if arr is None:
                continue
            shape = arr.shape
            per_unit = float(np.prod(shape)) / shape[s.axis] * s.unit
            readers = [nodes[r] for r in s.readers if r in nodes] or \
                [u[0] for u in (arr_v.uses() if arr_v is not None else [])]
            pos = max((conv_positions(r, analysis.dims) for r in readers), default=1)
            flops += 2.0 * per_unit * pos
        unit = max((s.unit for s in g.slices), default=1)
        if g.kind == "heads":
            flops += 4.0 * tokens * unit
        elif g.kind == "query-heads":  # one query head of every KV group: its o_proj rows sum to n_kv x head_dim
            flops += 4.0 * tokens * sum(s.unit for s in g.slices if s.role == "in")
        step = 1 if g.kind in ("heads", "kv-heads", "query-heads") else max(1, int(align))
        plan = GroupPlan(g, flops, step)
        for consumer in g.consumers:
            node = nodes.get(consumer)
            if node is None:
                continue
            for s in g.slices:
                if s.role != "in" or (s.readers and consumer not in s.readers):
                    continue
                if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].name != s.tensor:
                    continue
                site = sites.get(consumer) or _site(node, s.tensor)
                if site is None or site.in_axis != s.axis:
                    continue
                sites[consumer] = site
                idx = s.start + np.arange(g.size)[:, None] * s.unit + np.arange(s.unit)[None, :]
                prev = plan.rows.get(consumer)
                plan.rows[consumer] = idx if prev is None else np.concatenate([prev, idx], axis=1)
        plans.append(plan)
    return plans, sites

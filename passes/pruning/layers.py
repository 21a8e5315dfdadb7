"""Whole-layer removal for ``prune --kinds layers``, ranked by ShortGPT's Block Influence.

ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect")
scores each Transformer block by its Block Influence, ``BI = 1 - mean_t cos(h_in_t, h_out_t)`` over the tokens
``t`` of calibration data, where ``h_in`` / ``h_out`` are the hidden states entering and leaving the block, and
removes the blocks of lowest BI. Here:

- a *layer* is every residual branch (:func:`graphopt.analysis.groups.find_groups`' kind ``layer``) of one
  layer number (``layer3.attn`` + ``layer3.mlp`` make ``layer3``); a branch without a layer number (a CNN
  residual block, ``residual:<Add>``) is a layer of its own. A layer with a refused branch is refused whole.
- the layer's input is the residual operand of its first branch's Add; its output is the next layer's input
  when that has the same shape and is computed from the last branch's Add output by no weighted op (the hidden
  state between blocks, as ShortGPT reads it: after a post-LN block's LayerNorm), else the last branch's Add
  output, taken after a LayerNormalization that reads only it when the first branch's Add is followed the same
  way (post-LN BERT's last layer; a decomposed LayerNorm after the last layer is not followed, so that layer's
  output is its Add's); every BI comes from one onnxruntime run of the ORIGINAL model
  (:func:`graphopt.calibrate.stats.collect_cosines`, then
  :func:`graphopt.calibrate.importance.block_influence`).
- a layer's cost is the MatMul/Gemm/Conv FLOPs per sample position of its branches: ``2 x`` the constant
  weight's elements (times the output positions of a Conv), and ``2 * tokens * width`` for each MatMul of two
  activations (attention's ``QK^T`` and ``AV``: ``4 * tokens * head_dim`` per head, as :mod:`.plan` counts).
- removing a layer makes each of its residual Adds read only the residual stream
  (:func:`graphopt.analysis.groups.apply_pruning` with ``keep=[]``); the branches become dead and are removed. A
  post-LN block's LayerNorms stay (they follow the Adds, outside the branches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.analysis.groups import CoupledGroup, GroupAnalysis
from graphopt.analysis.groups.dims import Dims
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import conv_positions

__all__ = ["LayerPlan", "branch_flops", "build_layers", "score_layers", "choose_layers"]

_BRANCH = re.compile(r"^layer(\d+)\.(attn|mlp)$")
_WEIGHTED = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "MultiHeadAttention"}
_NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"}


@dataclass
class LayerPlan:
    """One removable layer.

    Attributes:
        name: ``layer3``, or the branch's group name (``residual:<Add>``) for an unnumbered branch.
        branches: its ``layer`` groups, in node order of their residual Adds.
        block_in: the value entering the layer (the first branch's residual operand).
        block_out: the value leaving it (see the module doc).
        axis: the feature axis of ``block_in`` / ``block_out`` (-1; 1 for a Conv block).
        flops: MatMul/Gemm/Conv FLOPs per sample position of its branches.
        weights: constant elements only its branches read.
        influence: the Block Influence on the calibration data (None until scored).
    """

    name: str
    branches: list[CoupledGroup]
    block_in: str
    block_out: str
    axis: int
    flops: float
    weights: int
    influence: float | None = field(default=None)


def _last(dims: Dims, value: ir.Value | None) -> int:
    d = dims.of(value)
    return int(d[-1]) if d and d[-1] is not None else 0


def _positions(node: ir.Node, dims: Dims | None) -> int:
    """:func:`~graphopt.passes.pruning.plan.conv_positions` with ``dims`` read per value."""
    grids = {v.name: v for v in (*node.inputs[:1], *node.outputs[:1]) if v is not None}
    return conv_positions(node, None if dims is None else lambda name: dims.of(grids.get(name)))


def branch_flops(nodes: list[ir.Node], width: int, tokens: int, dims: Dims | None = None) -> float:
    """MatMul/Gemm/Conv FLOPs of a residual branch's ``nodes`` (see the module doc): per token for a
    Transformer, per sample for a Conv branch (the output grid at ``dims``' sample sizes; 1 when unknown).

    Args:
        nodes: the branch's nodes.
        width: the residual stream's feature count (attention's ``QK^T`` / ``AV`` cost ``2 * tokens * width``).
        tokens: the sequence length assumed for attention.
        dims: concrete dims (:class:`~graphopt.analysis.groups.dims.Dims`) for Conv output grids.

    Returns:
        FLOPs (float).
    """
    total = 0.0
    for node in nodes:
        op = node.op_type
        consts = [ir.const_tensor(v) for v in node.inputs[:2] if v is not None]
        weights = [t for t in consts if t is not None]
        if op in ("MatMul", "Gemm", "Conv", "ConvTranspose", "Attention"):
            for t in weights[:1]:
                total += 2.0 * float(np.prod([int(d) for d in t.shape])) * _positions(node, dims)
        if (op == "MatMul" and not weights) or op in ("Attention", "MultiHeadAttention"):
            total += (2.0 if op == "MatMul" else 4.0) * tokens * width
    return total


def _only_through(out: ir.Value, target: ir.Value, limit: int = 64) -> bool:
    """Whether ``target`` is computed from ``out`` (and constants) alone, by no weighted op (a LayerNorm, decomposed
    or not, a Cast or an activation between two blocks; not a block that is no residual layer)."""
    if target is out:
        return True
    seen: set[ir.Node] = set()
    stack = [target.producer()]
    reached = False
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        if node is None or node.graph is not out.graph:
            return False
        seen.add(node)
        if node.op_type in _WEIGHTED or len(seen) > limit:
            return False
        for v in node.inputs:
            if v is None or ir.is_constant(v):
                continue
            if v is out:
                reached = True
                continue
            if v.producer() is None:
                return False
            stack.append(v.producer())
    return reached


def _post_norm(value: ir.Value) -> ir.Value | None:
    uses = list(value.uses())
    if len(uses) == 1 and uses[0].node.op_type in _NORMS and uses[0].idx == 0:
        return uses[0].node.outputs[0]
    return None


def build_layers(model: ir.Model, analysis: GroupAnalysis, tokens: int = 128
                 ) -> tuple[list[LayerPlan], list[dict[str, str]], float]:
    """The removable layers of ``model`` (node order) and the refused ones.

    Args:
        model: the IR model ``analysis`` was found on (not modified).
        analysis: :func:`graphopt.analysis.groups.find_groups` with kind ``layer``.
        tokens: sequence length assumed for attention's FLOPs.

    Returns:
        ``(layers, refused, total)``: refused as ``{"site", "kind": "layers", "reason"}`` for a layer one of
        whose branches the analysis refused (the branch's reason quoted); ``total`` the block FLOPs, of every
        ``layer`` group found (a refused layer's branches that are groups count, and stay; a refused branch is
        no group and is not counted).
    """
    from graphopt.calibrate.activations import values_by_name

    graph = model.graph
    nodes = {n.name: n for n in graph if n.name}
    values = values_by_name(graph)
    dims = Dims(model)
    order = {n: i for i, n in enumerate(graph)}
    by_layer: dict[str, list[CoupledGroup]] = {}
    for g in analysis.groups:
        if g.kind != "layer":
            continue
        m = _BRANCH.match(g.name)
        by_layer.setdefault(f"layer{m.group(1)}" if m else g.name, []).append(g)
    refused_layers: dict[str, str] = {}
    for r in analysis.refused:
        if r.kind != "layer":
            continue
        m = _BRANCH.match(r.site)
        key = f"layer{m.group(1)}" if m else r.site
        refused_layers.setdefault(key, f"its branch {r.site} is refused: {r.reason}")
    # a numbered layer gets its own entry; an unnumbered branch is the layer, its refusal is already listed
    refused = [{"site": k, "kind": "layers", "reason": v} for k, v in refused_layers.items() if _BRANCH.match(
        k + ".attn")]

    def add_of(g: CoupledGroup) -> ir.Node:
        return nodes[g.residual_add or ""]

    layers: list[LayerPlan] = []
    total = 0.0
    for name, groups in by_layer.items():
        groups.sort(key=lambda g: order[add_of(g)])
        first = add_of(groups[0])
        y0 = values[groups[0].consumer_input]
        x = first.inputs[1] if first.inputs[0] is y0 else first.inputs[0]
        branch = [nodes[n] for g in groups for n in g.branch_nodes if n in nodes]
        axis = 1 if any(n.op_type in ("Conv", "ConvTranspose") for n in branch) else -1
        width = _last(dims, x) or _last(dims, y0)
        flops = branch_flops(branch, width, tokens, dims)
        total += flops
        if name not in refused_layers:
            layers.append(LayerPlan(name, groups, x.name, "", axis, flops,
                                    sum(g.weights_per_unit for g in groups)))
    layers.sort(key=lambda lp: order[add_of(lp.branches[0])])
    for i, lp in enumerate(layers):
        last = add_of(lp.branches[-1])
        out = last.outputs[0]
        if _post_norm(add_of(lp.branches[0]).outputs[0]) is not None and _post_norm(out) is not None:
            out = _post_norm(out)
        nxt = values[layers[i + 1].block_in] if i + 1 < len(layers) else None
        x = values[lp.block_in]
        if nxt is not None and dims.of(nxt) is not None and dims.of(nxt) == dims.of(x) \
                and _only_through(last.outputs[0], nxt):
            out = nxt
        lp.block_out = out.name
    return layers, refused, total


def score_layers(model: ir.Model, layers: list[LayerPlan], calibration: Any, *, mask: str = "",
                 progress: bool = False) -> None:
    """Fill each layer's :attr:`LayerPlan.influence` (ShortGPT's Block Influence) from one onnxruntime run of
    ``model`` per feature axis over ``calibration`` (one run for a Transformer), through
    :func:`graphopt.calibrate.stats.collect_cosines`.

    Args:
        model: the ORIGINAL model (scores are never measured on a partly pruned one).
        layers: from :func:`build_layers`.
        calibration: batches of model inputs.
        mask: a graph input whose zeros drop padded tokens ("" = every token counts).
        progress: a progress bar over batches.

    Raises:
        InputError: no calibration data, names or shapes the run cannot compare, a bad mask.
    """
    from graphopt.calibrate.importance import block_influence
    from graphopt.calibrate.stats import collect_cosines

    if calibration is None:
        raise InputError("whole-layer removal ranks layers by Block Influence measured on calibration data; give "
                         "it (graphopt prune --calib PATH, or PassContext(calibration=...))")
    for axis in sorted({lp.axis for lp in layers}):
        chosen = [lp for lp in layers if lp.axis == axis]
        pairs = list(dict.fromkeys((lp.block_in, lp.block_out) for lp in chosen))
        cos = collect_cosines(model, pairs, calibration, axis=axis, mask=mask or None, progress=progress)
        for lp in chosen:
            lp.influence = block_influence(cos[(lp.block_in, lp.block_out)].mean_cosine)


def choose_layers(layers: list[LayerPlan], *, count: int = 0, ratio: float = 1.0, total: float = 0.0
                  ) -> list[LayerPlan]:
    """The layers to remove: the ``count`` of lowest Block Influence, or (``count`` 0) the lowest-BI layers
    removed one by one until the kept FLOPs are at most ``ratio * total`` (layers are whole, so the kept share
    usually lands below ``ratio``). Ties go to the earlier layer.

    Args:
        layers: scored :class:`LayerPlan` s.
        count: layers to remove (0: use ``ratio``).
        ratio: kept share of ``total`` in (0, 1].
        total: block FLOPs (every layer group's, removable or not).

    Returns:
        The chosen layers, lowest BI first.

    Raises:
        InputError: ``count`` above the removable layers, or a ratio that removing every removable layer
            cannot reach.
    """
    ranked = sorted(layers, key=lambda lp: (lp.influence if lp.influence is not None else np.inf,
                                            layers.index(lp)))
    if count:
        if count > len(ranked):
            raise InputError(f"cannot remove {count} layers: the model has {len(ranked)} removable layer(s) "
                             f"({', '.join(lp.name for lp in layers) or 'none'}); lower --layers")
        return ranked[:count]
    kept = total
    chosen: list[LayerPlan] = []
    for lp in ranked:
        if kept <= ratio * total + 1e-9 * total:
            break
        chosen.append(lp)
        kept -= lp.flops
    if kept > ratio * total + 1e-9 * total:
        raise InputError(f"removing whole layers cannot keep as little as {ratio:g} of the block FLOPs (every "
                         f"removable layer gone keeps {kept / total:.3f}); raise the ratio")
    return chosen

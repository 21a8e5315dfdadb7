"""``find_groups``: every coupled-channel group of a model, or why not.

Seeds are the values that carry prunable units: the outputs of a Split
along the last axis of an activation (O1's merged Q/K/V and gate/up
projections; seeded first, so a packed projection is split by section),
then the outputs of MatMul/Gemm by a constant weight, Conv/ConvTranspose and
com.microsoft.Attention. From each seed not yet covered, :class:`.Builder`
propagates the units to a fixpoint with the rules of :mod:`.rules`
(DepGraph, Fang et al., CVPR 2023; Torch-Pruning's ``DependencyGraph``);
a group that needs coarser units (a Reshape into heads) restarts with them.
A grouped-query attention group (a KV head with its query group) is
followed by the other form, query heads within every group, grown from
its output projection's input (:mod:`.rules_gqa`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Collection

from graphopt import ir
from graphopt.analysis.groups import rules_attention, rules_gqa, rules_shape, rules_weights  # noqa: F401 - rules
from graphopt.analysis.groups.dims import Dims
from graphopt.analysis.groups.layers import find_layers
from graphopt.analysis.groups.model import KINDS, CoupledGroup, GroupAnalysis, Refusal
from graphopt.analysis.groups.naming import layer_index, unique
from graphopt.analysis.groups.propagate import MAX_RESTARTS, Builder, Refuse, Regranulate, Site
from graphopt.analysis.groups.rules import attr_int, norm, rule_of
from graphopt.errors import InputError

__all__ = ["find_groups", "DEFAULT_KINDS"]

DEFAULT_KINDS = ("heads", "ffn", "channels", "layer")


def _seeds(graph: ir.Graph, dims: Dims) -> list[tuple[ir.Node, ir.Value, int]]:
    """(node, value, axis) of each seed, Split outputs first (see the module doc)."""
    splits, producers = [], []
    for node in graph:
        op = node.op_type
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        if domain == "" and op == "Split" and not ir.is_constant(node.inputs[0]):
            r = dims.rank(node.inputs[0])
            if r is not None and r >= 2 and norm(attr_int(node, "axis", 0), r) == r - 1:
                splits.extend((node, out, r - 1) for out in node.outputs)
            continue
        out = node.outputs[0] if node.outputs else None
        if out is None:
            continue
        if domain == "" and op == "MatMul" and len(node.inputs) == 2 and ir.is_constant(node.inputs[1]) \
                and not ir.is_constant(node.inputs[0]):
            r = dims.rank(out)
            if r is not None and r >= 2:
                producers.append((node, out, r - 1))
        elif domain == "" and op == "Gemm" and ir.is_constant(node.inputs[1]):
            producers.append((node, out, 1))
        elif (domain, op) in (("", "Conv"), ("", "ConvTranspose"), ("com.microsoft", "FusedConv")) \
                and attr_int(node, "group", 1) == 1:
            producers.append((node, out, 1))
        elif domain == "com.microsoft" and op == "Attention":
            producers.append((node, out, 2))
    return splits + producers


def _grow(dims: Dims, value: ir.Value, axis: int) -> tuple[Builder, str | None]:
    """Propagate from one seed; the builder and the refusal reason (None: a group)."""
    full = dims.of(value)
    if full is None or axis >= len(full) or full[axis] is None:
        return Builder(dims, 0), f"the dims of {value.name} are unknown"
    unit = 1
    for _ in range(MAX_RESTARTS):
        if full[axis] % unit:
            return Builder(dims, 0), f"{value.name}: {full[axis]} elements do not divide into units of {unit}"
        b = Builder(dims, full[axis] // unit)
        try:
            b.put(value, Site(axis, unit, (0,)))
            b.run(rule_of)
        except Regranulate as r:
            unit *= r.factor
            continue
        except Refuse as e:
            return b, str(e)
        if not b.producers:
            return b, "no producer with a constant weight carries the units"
        if not b.consumers:
            return b, "no consumer with a constant weight reads the units"
        return b, None
    return b, "the unit size did not settle"


def _kind(b: Builder) -> str:
    if "conv" in b.tags:
        return "channels"
    if "heads" in b.tags:
        return "heads"
    return "ffn"


def _name(kind: str, b: Builder, seed: ir.Node, ordinals: Counter, order: dict[ir.Node, int]) -> str:
    nodes = sorted(set(b.producers) | set(b.consumers), key=order.get) or [seed]
    if kind == "channels":
        first = sorted(b.producers, key=order.get)[0] if b.producers else seed
        return f"conv:{first.name}"
    index = layer_index(nodes)
    if index is None:
        index = ordinals[kind]
    ordinals[kind] += 1
    if kind == "heads":
        return f"layer{index}.attn.kv-heads" if b.repeats else f"layer{index}.attn.heads"
    return f"layer{index}.{kind}"


def _group(name: str, kind: str, b: Builder, order: dict[ir.Node, int]) -> CoupledGroup:
    slices = tuple(s for node in sorted(b.slices, key=order.get) for s in b.slices[node])
    edits = tuple(e for node in sorted(b.edits, key=order.get) for e in b.edits[node])
    weights = 0
    for s in slices:
        t = b.dims.of(_value(b, s.tensor))
        if t is not None:
            weights += math.prod(t) // t[s.axis] * s.unit
    producers = tuple(n.name or "" for n in sorted(b.producers, key=order.get))
    consumers = sorted(b.consumers, key=order.get)
    return CoupledGroup(name, kind, b.size, slices, edits, producers, tuple(n.name or "" for n in consumers),
                        b.consumer_inputs[consumers[0]].name or "", weights)


def _grow_within(dims: Dims, kv_builder: Builder) -> tuple[Builder, str | None]:
    """Query heads within their KV groups, seeded at the input of the
    attention output projection of a KV-head group (:mod:`.rules_gqa`):
    unit ``j`` is query head ``j`` of every KV group, ``n_rep`` units."""
    consumer = next(iter(kv_builder.consumers))
    value = kv_builder.consumer_inputs[consumer]
    reps = set(kv_builder.repeats.values())
    full = dims.of(value)
    kv = kv_builder.size
    if len(reps) != 1 or full is None or full[-1] is None:
        return Builder(dims, 0), "the repeat counts of the KV heads differ or the dims are unknown"
    n_rep = reps.pop()
    if full[-1] % (kv * n_rep):
        return Builder(dims, 0), f"{value.name}: {full[-1]} elements are not {kv} KV groups of {n_rep} heads"
    hd = full[-1] // (kv * n_rep)
    b = Builder(dims, n_rep, within=True)
    try:
        b.put(value, Site(len(full) - 1, hd, tuple(g * n_rep * hd for g in range(kv))))
        b.run(rule_of)
    except Regranulate:
        return b, "the units would need to be coarser than one query head"
    except Refuse as e:
        return b, str(e)
    if not b.producers or not b.consumers:
        return b, "no projection with a constant weight carries the query heads"
    return b, None


def _within_group(groups: list[CoupledGroup], refused: list[Refusal], kv_builder: Builder,
                  order: dict[ir.Node, int], taken: set[str]) -> None:
    """Add the ``query-heads`` group of the ``kv-heads`` group just added
    (``groups[-1]``), the two marked exclusive, or its refusal."""
    kv_group = groups[-1]
    name = unique(kv_group.name.replace(".kv-heads", ".query-heads"), taken)
    b, reason = _grow_within(kv_builder.dims, kv_builder)
    if reason is not None:
        refused.append(Refusal(name, "query-heads", f"query heads within their KV group: {reason}"))
        return
    g = _group(name, "query-heads", b, order)
    g.exclusive = (kv_group.name,)
    kv_group.exclusive = (name,)
    groups.append(g)


def _value(b: Builder, name: str) -> ir.Value | None:
    graph = b.dims.model.graph
    value = graph.initializers.get(name)
    if value is not None:
        return value
    for node in graph:
        for out in node.outputs:
            if out.name == name:
                return out
    return None


def name_nodes(graph: ir.Graph) -> int:
    """Give every unnamed node, and every node whose name an earlier node
    holds, a unique name ``<op_type>_<n>`` (groups name nodes). Returns how
    many were renamed. Exporters name every node; hand-built graphs often do not."""
    taken = {node.name for node in graph if node.name}
    seen: set[str] = set()
    renamed = 0
    for i, node in enumerate(graph):
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        name = unique(f"{node.op_type}_{i}", taken)
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed


def find_groups(model: ir.Model, kinds: Collection[str] = DEFAULT_KINDS, *,
                images: Mapping[str, tuple[int, int]] | None = None) -> GroupAnalysis:
    """Every coupled-channel group of ``model``'s main graph, and the refused sites.

    Args:
        model: an IR model, not modified except that unnamed (or
            duplicate-named) nodes get names (:func:`name_nodes`). Weights must be constants
            (initializers or Constant nodes); dims are taken at a sample
            binding of the symbolic input dims (:mod:`.dims`).
        kinds: which of ``heads``, ``kv-heads``, ``ffn``, ``channels``,
            ``layer`` to report (groups and refusals alike). Refusals of the
            residual stream's width (normalized by LayerNorm/RMSNorm) have
            kind ``hidden`` and come with ``ffn``. Grouped-query attention
            gives kind ``heads`` groups named ``layerN.attn.kv-heads`` whose
            unit is a KV head with its whole query group, and with
            ``query-heads`` asked, the other form ``layerN.attn.query-heads``
            (query head ``j`` of every group; the two are exclusive) or its
            refusal (:mod:`.rules_gqa`); no rule yields ``kv-heads``.
        images: image input name -> (height, width) for its free spatial dims in the sample binding, instead
            of 224 x 160 (take them from calibration data for models that run only at their trained size).

    Returns:
        A :class:`GroupAnalysis`; groups in the order of their first
        producer (layers after unit groups), names unique.

    Raises:
        InputError: an unknown kind.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InputError(f"unknown group kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    graph = model.graph
    name_nodes(graph)
    order = {node: i for i, node in enumerate(graph)}
    dims = Dims(model, images)
    covered: set[ir.Value] = set()
    groups: list[CoupledGroup] = []
    refused: list[Refusal] = []
    reasons: set[str] = set()
    ordinals: Counter = Counter()
    taken: set[str] = set()
    for seed, value, axis in _seeds(graph, dims):
        if value in covered or not value.uses():
            continue
        b, reason = _grow(dims, value, axis)
        covered.update(b.sites)
        covered.add(value)
        kind = _kind(b)
        if reason is not None and ("hidden-size" in reason or (
                "reduces over the channel axis" in reason and kind != "channels")):
            kind = "hidden"  # the residual stream's width (LayerNorm, RMSNorm's ReduceMean): reported with ffn
        if reason is None:
            name = unique(_name(kind, b, seed, ordinals, order), taken)
            if kind in kinds:
                groups.append(_group(name, kind, b, order))
                if b.repeats and "query-heads" in kinds:
                    _within_group(groups, refused, b, order, taken)
        elif (kind in kinds or (kind == "hidden" and "ffn" in kinds)) and reason not in reasons:
            reasons.add(reason)
            refused.append(Refusal(f"{seed.op_type}:{seed.name}", kind, reason))
    if "layer" in kinds:
        layer_groups, layer_refused = find_layers(model, dims, order)
        for g in layer_groups:
            g.name = unique(g.name, taken)
        groups.extend(layer_groups)
        refused.extend(layer_refused)
    by_name: dict[str, ir.Value] = {v.name: v for v in graph.inputs if v.name}
    by_name.update({o.name: o for n in graph for o in n.outputs if o.name})
    return GroupAnalysis(groups, refused, dims=lambda name: dims.of(by_name.get(name)))

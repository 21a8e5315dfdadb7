"""prune: structured pruning of attention heads, FFN neurons and conv channels, scored on calibration data,
with least-squares reconstruction; the result is a dense, smaller model.

Steps (:func:`prune`): the coupled groups (:func:`graphopt.analysis.groups.find_groups`, DepGraph on ONNX);
the sites and unit costs (:mod:`.plan`); one :func:`~graphopt.calibrate.stats.collect_stats` call for every
consumer input (per-channel norms and variances, Grams where least squares, the ``error`` allocation or the
sensitivity scores read them; cached in the context); unit scores (:mod:`.scoring`: magnitude, Wanda, FLAP,
output sensitivity, ablation, structured OBS); kept counts per group for the target ratio of block FLOPs
(:mod:`.allocation`: uniform, FLAP's standardized global, or by measured output error per FLOP);
:func:`~graphopt.analysis.groups.apply_pruning`; the consumers refitted (:mod:`.refit`: least squares, bias
compensation, none). With an accuracy budget the ratio is searched on the evaluation data
(:mod:`.budget`). The report is stored as JSON in the model's metadata under :data:`METADATA_KEY`.

Whole layers (``kinds=("layers",)``, :mod:`.layers`): the layers of lowest ShortGPT Block Influence (Men et al.
2024), measured in one onnxruntime run of the original model on the calibration data, are removed (``layers``
of them, or as many as bring the layers' FLOPs to at most ``ratio``); each residual Add then reads only the
residual stream and the dead branches are removed. No reconstruction applies to a removed layer. Layers are
not mixed with heads, FFN or channels in one call (an InputError): prune twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.errors import InputError
from graphopt.passes.pruning.allocation import ALLOCATIONS, CURVED, allocate, keep_sets, kept_ratio, ladder
from graphopt.passes.pruning.plan import GroupPlan, Site, build_plan
from graphopt.passes.pruning.gains import output_gains
from graphopt.passes.pruning.refit import RECONSTRUCTIONS, SiteRefit, error_curve, refit_sites
from graphopt.passes.pruning.scoring import METHODS, score_groups
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["Prune", "PruneOptions", "PruneReport", "GroupReport", "LayerReport", "prune", "METADATA_KEY", "QUERY_HEADS",
           "PRUNABLE_KINDS", "LAYER_KIND"]

log = logging.getLogger(__name__)

METADATA_KEY = "graphopt.pruning"
"""Model metadata key holding the JSON :class:`PruneReport`."""

PRUNABLE_KINDS = ("heads", "ffn", "channels")
"""Group kinds ``prune`` removes units of (the default kinds; whole layers are :data:`LAYER_KIND`)."""

QUERY_HEADS = "query-heads"
"""The opt-in kind that prunes grouped-query attention's query heads within their KV groups (the same query head
of every group, n_rep shrinking; every KV head kept) instead of the ``heads`` kind's KV heads with their groups;
the two forms of one layer cannot be mixed, so ``query-heads`` replaces ``heads`` in a call."""

LAYER_KIND = "layers"
"""The ``kinds`` entry that removes whole layers (the analysis's ``layer`` groups) by Block Influence."""

_ALIASES = {"head": "heads", "neurons": "ffn", "mlp": "ffn", "channel": "channels", "layer": "layers"}


@dataclass(frozen=True)
class PruneOptions:
    """Options of :class:`Prune` (``ratio`` or the context's accuracy budget)."""

    ratio: float = field(default=0.0, metadata={"doc": "block FLOPs kept, in (0, 1): MatMul/Conv FLOPs of every "
                                                       "prunable group (heads, FFN, channels; kinds left out stay "
                                                       "whole and still count) after / before; 0 or 1 prunes "
                                                       "nothing; with kinds=layers, the layers' FLOPs kept (whole "
                                                       "layers go until at most this much is left)"})
    kinds: tuple[str, ...] = field(default=(), metadata={"doc": "group kinds to prune: heads, ffn, channels "
                                                                "(default: every one the model has), query-heads "
                                                                "(GQA's query heads within their groups, instead "
                                                                "of heads), or layers alone (whole layers by "
                                                                "Block Influence)"})
    layers: int = field(default=0, metadata={"doc": "whole layers to remove, lowest Block Influence first "
                                                    "(implies kinds=layers; 0: use ratio)"})
    flops: float = field(default=0.0, metadata={"doc": "whole-model MatMul/Gemm/Conv FLOPs kept, in (0, 1), "
                                                       "instead of ratio: the largest block ratio whose pruned "
                                                       "model keeps at most this share of the original's FLOPs, "
                                                       "counted at dims/shapes (:mod:`.flops_target`); 0: use "
                                                       "ratio"})
    dims: tuple[str, ...] = field(default=(), metadata={"doc": "NAME=SIZE bindings of symbolic input dims for the "
                                                               "flops count (default: graphopt verify's)"})
    shapes: tuple[str, ...] = field(default=(), metadata={"doc": "INPUT=AxB whole input shapes for the flops "
                                                                 "count (dims the model leaves unnamed)"})
    method: str = field(default="wanda", metadata={"doc": "unit importance: magnitude, wanda, flap, sensitivity "
                                                          "(the block output's change with the unit removed, "
                                                          "from the consumer's Gram) or ablation (the model "
                                                          "outputs' change with each head masked) or obs "
                                                          "(structured OBS: the error left after least squares "
                                                          "compensates, greedy)"})
    allocation: str = field(default="uniform", metadata={"doc": "uniform, global (FLAP's standardized), error "
                                                                "(consumer output error per FLOP saved), relative "
                                                                "(that error relative to the consumers' output "
                                                                "energy: CNNs) or output (that error times each "
                                                                "group's measured gain to the model output, "
                                                                ":mod:`.gains`)"})
    align: int = field(default=8, metadata={"doc": "kept neurons/channels are multiples of this; heads stay whole"})
    reconstruction: str = field(default="least-squares", metadata={"doc": "least-squares, bias or none"})
    ridge: float = field(default=1e-4, metadata={"doc": "relative ridge of the least squares"})
    tokens: int = field(default=128, metadata={"doc": "sequence length assumed for attention's QK/AV FLOPs"})
    levels: int = field(default=24, metadata={"doc": "kept counts per group on the error allocation's curves"})
    mask: str = field(default="", metadata={"doc": "graph input whose zeros drop padded rows from the "
                                                   "statistics (e.g. attention_mask); empty: every row"})


@dataclass
class GroupReport:
    """One group: ``name``, ``kind``, units ``kept``/``size``, unit FLOPs per position, and the score method."""

    name: str
    kind: str
    size: int
    kept: int
    unit_flops: float


@dataclass
class LayerReport:
    """One whole layer (``kinds=layers``): ``name``, its residual ``branches`` (group names), its Block
    Influence ``influence`` on the calibration data (ShortGPT), its MatMul/Conv ``flops`` per position, and
    whether it was ``removed``."""

    name: str
    branches: list[str]
    influence: float
    flops: float
    removed: bool


@dataclass
class PruneReport:
    """What :func:`prune` did.

    Attributes:
        options: the options as a dict.
        groups: per group kept/total.
        whole_layers: with ``kinds=layers``: every removable layer with its Block Influence, lowest first.
        refused: ``[{"site", "kind", "reason"}]``: sites left whole, as ``graphopt explain`` gives them.
        refits: per consumer: how it was reconstructed, input channels before/after.
        ratio: the kept block-FLOP ratio asked (or found by the budget); achieved: after rounding.
        block_flops_before/after: MatMul/Conv FLOPs per sample position in the groups' layers.
        budget: the search's result, or None.
        flops: with ``options.flops``: ``{"target", "ratio", "kept", "flops_before", "flops_after", "trials"}``
            (:func:`~graphopt.passes.pruning.flops_target.ratio_for_flops`), or None.
        nothing: why nothing was pruned ('' when something was).
        seconds: wall time.
    """

    options: dict[str, Any]
    groups: list[GroupReport] = field(default_factory=list)
    whole_layers: list[LayerReport] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    refits: list[SiteRefit] = field(default_factory=list)
    ratio: float = 1.0
    achieved: float = 1.0
    block_flops_before: float = 0.0
    block_flops_after: float = 0.0
    budget: dict[str, Any] | None = None
    flops: dict[str, Any] | None = None
    nothing: str = ""
    seconds: float = 0.0

    @property
    def pruned(self) -> int:
        """Groups that lost units, and whole layers removed."""
        return sum(1 for g in self.groups if g.kept < g.size) + sum(1 for lay in self.whole_layers if lay.removed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        doc = asdict(self)
        doc["pruned"] = self.pruned
        return doc


def _check(opts: PruneOptions, has_budget: bool) -> tuple[str, ...]:
    if opts.method not in METHODS:
        raise InputError(f"unknown pruning method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.allocation not in ALLOCATIONS:
        raise InputError(f"unknown allocation {opts.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
    if opts.reconstruction not in RECONSTRUCTIONS:
        raise InputError(f"unknown reconstruction {opts.reconstruction!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
    if not 0 <= opts.ratio <= 1:
        raise InputError(f"ratio must be in (0, 1) (block FLOPs kept; 0 or 1 prunes nothing), got {opts.ratio}")
    if has_budget and opts.ratio not in (0, 1):
        raise InputError("give a ratio or an accuracy budget, not both")
    if not 0 <= opts.flops < 1:
        raise InputError(f"flops must be in (0, 1) (the model's MatMul/Gemm/Conv FLOPs kept, e.g. 0.6; 0: use "
                         f"ratio), got {opts.flops}")
    if opts.flops and (has_budget or opts.ratio not in (0, 1) or opts.layers):
        raise InputError("give one of a ratio, a FLOPs share (flops), a number of layers or an accuracy budget")
    if opts.flops:
        _flops_inputs(opts)  # bad dims or shapes fail before any statistics are collected
    if opts.align < 1 or opts.tokens < 1 or opts.levels < 1 or not opts.ridge >= 0:
        raise InputError("align, tokens and levels must be positive integers and ridge >= 0")
    kinds = tuple(dict.fromkeys(_ALIASES.get(k.strip(), k.strip()) for k in opts.kinds if k.strip()))
    for k in kinds:
        if k not in PRUNABLE_KINDS and k not in (LAYER_KIND, QUERY_HEADS):
            raise InputError(f"unknown group kind {k!r}; choose from {', '.join(PRUNABLE_KINDS)}, {QUERY_HEADS}, "
                             f"{LAYER_KIND}")
    if QUERY_HEADS in kinds and "heads" in kinds:
        raise InputError("heads (GQA: a KV head with its query group) and query-heads (query heads within their "
                         "groups) are two forms of the same attention; choose one of them")
    if int(opts.layers) != opts.layers or opts.layers < 0:
        raise InputError(f"layers must be a non-negative integer (whole layers to remove), got {opts.layers!r}")
    if opts.layers and not kinds:
        kinds = (LAYER_KIND,)
    if LAYER_KIND in kinds and len(kinds) > 1:
        others = ", ".join(k for k in kinds if k != LAYER_KIND)
        raise InputError(f"whole layers cannot be removed together with {others} in one prune; prune layers first "
                         "(--kinds layers), then the other kinds on the result")
    if opts.layers and LAYER_KIND not in kinds:
        raise InputError(f"layers={opts.layers} removes whole layers; it goes with kinds=layers, not "
                         f"{', '.join(kinds)}")
    if opts.layers and (has_budget or opts.ratio not in (0, 1)):
        raise InputError("give the number of layers to remove, a ratio or an accuracy budget, only one of them")
    return kinds


def _image_sizes(model: ir.Model, calibration: Any) -> dict[str, tuple[int, int]]:
    """(height, width) of each rank-4 float graph input in the first calibration batch, for the group analysis's
    sample binding (:func:`~graphopt.analysis.groups.find_groups` ``images``); empty without calibration data."""
    import numpy as np

    first = next(iter(calibration), None) if calibration is not None else None
    if not first:
        return {}
    sizes = {}
    for value in model.graph.inputs:
        array = first.get(value.name)
        if array is not None and np.ndim(array) == 4 and np.issubdtype(np.asarray(array).dtype, np.floating):
            sizes[value.name] = (int(array.shape[2]), int(array.shape[3]))
    return sizes


def _flops_inputs(opts: PruneOptions) -> dict[str, Any]:
    """``dims``/``shapes`` keyword arguments of :func:`~.flops_target.ratio_for_flops` from the options' text.

    Raises:
        InputError: an entry not of the form NAME=SIZE or INPUT=AxB.
    """
    from graphopt.verify.feed import parse_dims, parse_shape_options

    return {"dims": parse_dims(list(opts.dims)), "shapes": parse_shape_options(list(opts.shapes))}


def _stats(model: ir.Model, sites: dict[str, Site], plans: list[GroupPlan], gram: bool, calibration: Any,
           cache: Any, mask: str, progress: bool) -> dict[str, Any]:
    from graphopt.calibrate.stats import StatRequest, collect_stats

    used = {node for p in plans for node in p.rows}
    requests: dict[str, StatRequest] = {}
    for node in sorted(used):
        s = sites[node]
        if s.data in requests:
            continue
        requests[s.data] = StatRequest(s.data, s.data_axis, gram=gram)
    if not requests:
        return {}
    return collect_stats(model, list(requests.values()), calibration, cache=cache, mask=mask or None,
                         progress=progress)


def prune(model: ir.Model, options: PruneOptions | None = None, calibration: Any = None, *, evaluation: Any = None,
          budget: dict[str, Any] | None = None, cache: Any = None, progress: bool = False) -> PruneReport:
    """Prune ``model`` in place.

    Args:
        model: the IR model (constant weights).
        options: :class:`PruneOptions` (a ``ratio`` in (0, 1), or ``budget``; with ``kinds=("layers",)`` also
            ``layers=N``).
        calibration: batches of model inputs (a :class:`~graphopt.calibrate.data.CalibrationData`); needed by
            every method but magnitude, least squares, bias compensation, the error-curve allocations and whole layers
            (Block Influence).
        evaluation: held-out batches the budget is searched on (default: the calibration data).
        budget: ``{"cosine" | "argmax" | "rank-fidelity": threshold}`` or ``{"metric": fn, "threshold": t}``.
        cache: a :class:`~graphopt.calibrate.stats.StatsCache`.
        progress: progress bars over calibration batches.

    Returns:
        :class:`PruneReport` (also stored in ``model.metadata_props[METADATA_KEY]`` when something was pruned).
        The model is untouched when the ratio is 0 or 1, when nothing is prunable, or when the allocation keeps
        every unit.

    Raises:
        InputError: bad options, a kind the model has no group of, missing or mismatched calibration data,
            a bad budget; layers mixed with other kinds, no removable layer, ``layers`` above the removable
            layers, a ratio whole layers cannot reach.
    """
    from graphopt.analysis.groups import KINDS, find_groups, apply_pruning

    opts = options or PruneOptions()
    kinds = _check(opts, bool(budget))
    start = time.perf_counter()
    report = PruneReport(asdict(opts), ratio=opts.ratio or 1.0)
    if kinds == (LAYER_KIND,):
        return _prune_layers(model, opts, report, calibration, evaluation, budget, progress, start)
    if not budget and not opts.flops and opts.ratio in (0, 1):
        report.nothing = f"ratio {opts.ratio:g} keeps every unit"
        return report
    images = _image_sizes(model, calibration)
    analysis = find_groups(model, KINDS, images=images)
    found = {g.kind for g in analysis.groups}
    present = sorted(found & set(PRUNABLE_KINDS))
    if QUERY_HEADS in kinds and QUERY_HEADS in found:  # replaces the KV-head form in the plan and the FLOP total
        present = sorted([k for k in present if k != "heads"] + [QUERY_HEADS])
    report.refused = [{"site": r.site, "kind": r.kind, "reason": r.reason} for r in analysis.refused]
    if not present:
        report.nothing = "nothing prunable: the model has no head, FFN or channel group" + (
            f" ({len(analysis.refused)} site(s) refused)" if analysis.refused else "")
        return report
    missing = [k for k in kinds if k not in present]
    if missing:
        raise InputError(f"the model has no {', '.join(missing)} group(s) to prune; it has: {', '.join(present)} "
                         f"(choose --kinds among them)")
    all_plans, sites = build_plan(model, analysis, tuple(present), align=opts.align, tokens=opts.tokens)
    selected = kinds or tuple(present)
    plans = [p for p in all_plans if p.group.kind in selected and p.size > p.step]
    total = sum(p.size * p.unit_flops for p in all_plans)
    fixed = total - sum(p.size * p.unit_flops for p in plans)
    if not plans:
        report.nothing = f"nothing prunable: every group is at most {opts.align} units (align)"
        return report
    needs_data = opts.method != "magnitude" or opts.reconstruction != "none" or opts.allocation in CURVED
    if needs_data and calibration is None:
        raise InputError(f"method {opts.method} with reconstruction {opts.reconstruction} and allocation "
                         f"{opts.allocation} needs calibration data (graphopt prune --calib PATH, or "
                         "PassContext(calibration=...)); only magnitude without reconstruction runs without")
    gram = opts.reconstruction == "least-squares" or opts.allocation in CURVED or \
        opts.method in ("sensitivity", "ablation", "obs")
    stats = _stats(model, sites, plans, gram, calibration, cache, opts.mask, progress) if needs_data else {}
    score_groups(plans, sites, stats, opts.method, model, calibration=calibration, mask=opts.mask or None,
                 progress=progress, ridge=opts.ridge,
                 centered=opts.reconstruction != "none")
    memo: dict[str, tuple[list[int], list[float]]] = {}

    def curves() -> dict[str, tuple[list[int], list[float]]]:
        if not memo:
            gains = output_gains(model, plans, sites, stats, calibration, mask=opts.mask or None,
                                 progress=progress) if opts.allocation == "output" else {}
            fallback = float(np.median(list(gains.values()))) if gains else 1.0
            for p in plans:
                counts = ladder(p.size, p.step, opts.levels)
                curve = error_curve(p, sites, stats, counts, opts.reconstruction, opts.ridge,
                                    relative=opts.allocation == "relative")
                gain = gains.get(p.name, fallback) if opts.allocation == "output" else 1.0
                memo[p.name] = (counts, [gain * e for e in curve])
        return memo

    def counts_at(ratio: float) -> dict[str, int]:
        # the ratio is of every prunable group's FLOPs (the blocks); kinds left out stay whole
        share = (ratio * total - fixed) / (total - fixed)
        if share <= 0:
            raise InputError(f"pruning only {', '.join(selected)} cannot keep as little as {ratio:g} of the block "
                             f"FLOPs (the other kinds hold {fixed / total:.3f} of them); raise the ratio or add kinds")
        return allocate(plans, min(share, 1.0), opts.allocation, curves)

    def prune_at(target: ir.Model, ratio: float) -> tuple[dict[str, int], dict[str, list[int]], list[SiteRefit]]:
        counts = counts_at(ratio)
        keeps = keep_sets(plans, counts)
        if not keeps:
            return counts, keeps, []
        apply_pruning(target, keeps, analysis if target is model else None, images=images)
        return counts, keeps, refit_sites(target, sites, plans, keeps, stats, opts.reconstruction, opts.ridge)

    ratio = opts.ratio
    if budget:
        from graphopt.passes.pruning.budget import search

        report.budget = search(model, lambda m, r: prune_at(m, r), budget,
                               evaluation if evaluation is not None else calibration)
        ratio = report.budget["ratio"]
    if opts.flops:
        from graphopt.passes.pruning.flops_target import ratio_for_flops

        def structure(target: ir.Model, r: float) -> None:
            keeps = keep_sets(plans, counts_at(r))
            if keeps:
                apply_pruning(target, keeps, images=images)

        report.flops = ratio_for_flops(model, opts.flops, fixed / total + 1e-9,
                                       lambda r: tuple(sorted(counts_at(r).items())), structure,
                                       **_flops_inputs(opts))
        ratio = report.flops["ratio"]
    report.ratio = ratio
    report.block_flops_before = total
    if ratio >= 1:
        counts: dict[str, int] = {}
        report.nothing = "the budget holds at no pruning ratio"
        keeps: dict[str, list[int]] = {}
    else:
        counts, keeps, report.refits = prune_at(model, ratio)
    report.groups = [GroupReport(p.name, p.group.kind, p.size, counts.get(p.name, p.size), p.unit_flops)
                     for p in plans]
    report.achieved = (fixed + kept_ratio(plans, counts) * (total - fixed)) / total if total else 1.0
    report.block_flops_after = report.achieved * report.block_flops_before
    if not keeps and not report.nothing:
        report.nothing = f"the allocation at ratio {ratio:g} keeps every unit (align {opts.align})"
    report.seconds = time.perf_counter() - start
    if keeps:
        model.metadata_props[METADATA_KEY] = json.dumps(report.to_dict(), default=str)
    return report


def _prune_layers(model: ir.Model, opts: PruneOptions, report: PruneReport, calibration: Any, evaluation: Any,
                  budget: dict[str, Any] | None, progress: bool, start: float) -> PruneReport:
    """Whole-layer removal by Block Influence (see :mod:`.layers`); fills and returns ``report``."""
    from graphopt.analysis.groups import KINDS, apply_pruning, find_groups
    from graphopt.passes.pruning.layers import build_layers, choose_layers, score_layers

    if not budget and not opts.layers and not opts.flops and opts.ratio in (0, 1):
        report.nothing = f"ratio {opts.ratio:g} keeps every layer (give layers=N or a ratio in (0, 1))"
        return report
    images = _image_sizes(model, calibration)
    analysis = find_groups(model, KINDS, images=images)
    layers, refused, total = build_layers(model, analysis, opts.tokens)
    report.refused = [{"site": r.site, "kind": r.kind, "reason": r.reason} for r in analysis.refused
                      if r.kind == "layer"] + refused
    if not layers:
        why = "; ".join(f"{r['site']}: {r['reason']}" for r in refused)
        raise InputError("the model has no whole layer to remove: no residual branch (Add(branch(x), x) through a "
                         "MatMul/Gemm/Conv) was found" + (f", or each was refused ({why})" if why else "")
                         + "; choose --kinds among heads, ffn, channels")
    if opts.layers > len(layers):
        raise InputError(f"cannot remove {opts.layers} layers: the model has {len(layers)} removable layer(s) "
                         f"({', '.join(lp.name for lp in layers)}); lower --layers")
    score_layers(model, layers, calibration, mask=opts.mask, progress=progress)

    def remove(target: ir.Model, ratio: float) -> list:
        chosen = choose_layers(layers, count=opts.layers, ratio=ratio, total=total)
        keep = {g.name: [] for lp in chosen for g in lp.branches}
        if keep:
            apply_pruning(target, keep, analysis if target is model else None, images=images)
        return chosen

    ratio = opts.ratio
    if budget:
        from graphopt.passes.pruning.budget import search

        report.budget = search(model, remove, budget, evaluation if evaluation is not None else calibration)
        ratio = report.budget["ratio"]
    if opts.flops:
        from graphopt.passes.pruning.flops_target import ratio_for_flops

        lowest = (total - sum(lp.flops for lp in layers)) / total + 1e-9
        report.flops = ratio_for_flops(
            model, opts.flops, lowest, lambda r: tuple(lp.name for lp in choose_layers(layers, ratio=r, total=total)),
            remove, **_flops_inputs(opts))
        ratio = report.flops["ratio"]
    chosen = [] if not opts.layers and ratio >= 1 else remove(model, ratio)
    gone = {lp.name for lp in chosen}
    ranked = sorted(layers, key=lambda lp: (lp.influence, layers.index(lp)))
    report.whole_layers = [LayerReport(lp.name, [g.name for g in lp.branches], float(lp.influence), lp.flops,
                                       lp.name in gone) for lp in ranked]
    removed_flops = sum(lp.flops for lp in chosen)
    report.block_flops_before = total
    report.block_flops_after = total - removed_flops
    report.achieved = report.block_flops_after / total if total else 1.0
    report.ratio = report.achieved if opts.layers else ratio
    report.refits = [SiteRefit(g.residual_add or g.name, "not applicable: the whole layer is removed (least "
                               "squares refits only consumers that stay)", 1, 0)
                     for lp in chosen for g in lp.branches]
    if not chosen:
        report.nothing = "the budget holds at no layer removal" if budget else "no layer removed"
    report.seconds = time.perf_counter() - start
    if chosen:
        model.metadata_props[METADATA_KEY] = json.dumps(report.to_dict(), default=str)
    return report


@register_pass("prune")
class Prune(Pass):
    """Structured pruning of attention heads, FFN neurons and conv channels (magnitude, Wanda, FLAP, output
    sensitivity, ablation or structured OBS scores; uniform, global or error-driven allocation: absolute, relative
    or output-gain weighted), with least-squares reconstruction of the consumers; or of whole layers
    (``kinds=layers``), lowest ShortGPT Block Influence first.

    Reads ``ctx.calibration`` (needed by every method but magnitude, and by reconstruction),
    ``ctx.accuracy_budget`` and ``ctx.evaluation``; writes the report to the model's ``graphopt.pruning``
    metadata (JSON). Not part of ``O1``/``O2``.

    Raises:
        InputError: bad options, a kind the model lacks, calibration data that is missing or does not fit.
    """

    Options = PruneOptions
    requires = frozenset({"topo-sorted", "shapes-inferred"})
    lossy = True

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001 - PassContext
        from graphopt.calibrate.stats import StatsCache

        cache = StatsCache.for_context(ctx, model) if ctx.calibration is not None else None
        report = prune(model, self.options, ctx.calibration, evaluation=ctx.evaluation,
                       budget=ctx.accuracy_budget or None, cache=cache)
        if report.nothing:
            log.info("prune: %s", report.nothing)
        stats = {"groups pruned": report.pruned, "groups": len(report.groups), "kept ratio": round(report.achieved, 4)}
        if report.whole_layers:
            stats["layers removed"] = sum(1 for lay in report.whole_layers if lay.removed)
            stats["layers"] = len(report.whole_layers)
        return PassResult(report.pruned > 0, stats)

"""``compress``: the fastest model that keeps an accuracy budget (or the most accurate one at a speedup), searched
over structured pruning, low-rank factorization and INT8 together, latency measured on this machine.

:func:`compress` wires the pieces: the original's outputs on the search split, the
:class:`~graphopt.compress.candidates.CandidateBuilder`, a warm :class:`~graphopt.bench.probe.LatencyProbe`
against the original, :func:`~graphopt.compress.search.search`, and the chosen point measured again on a
held-out split no search saw (the figure reported; when it misses the budget there, the next more accurate
frontier point is taken and the report says so).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.compress.candidates import TECHNIQUES, Built, CandidateBuilder, failure, spec_of
from graphopt.compress.search import Knob, Measure, SearchResult, best, pareto, search
from graphopt.deadline import limit
from graphopt.errors import GraphoptError, InputError

__all__ = ["CompressOptions", "CompressResult", "check_options", "compress", "frontier_doc", "PRUNE_LEVELS",
           "LOWRANK_LEVELS", "FUSION_TOLERANCE", "FINISH_RESERVE", "SAVE_RATE", "OBS_MAX_WIDTH", "prune_method",
           "prune_allocation"]

log = logging.getLogger(__name__)

FINISH_RESERVE = 8.0
"""Under a time limit the search ends this many times the original's run on the search batches, plus 5 s, plus
the time to write the model at :data:`SAVE_RATE`, before the limit: the finish runs the chosen model and the
original on the held-out batches twice (the held-out check, then the written file's accuracy report) and saves
it (LLaMA-600M with 4: 311 s against a 300 s limit)."""

SAVE_RATE = 100e6
"""Bytes per second assumed for writing the chosen model (the reserve of :data:`FINISH_RESERVE`)."""

FUSION_TOLERANCE = 1e-3
"""How much lower than the default fusion's quality an INT8 fusion variant may score and still be taken for its
speed (the variants quantize the same products; their quality differs by the ops left float around them)."""

PRUNE_LEVELS = (1.0, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
"""Kept block-FLOP ratios the pruning knob walks (1.0 = off)."""

LOWRANK_LEVELS = (1.0, 0.9, 0.8, 0.7, 0.6)
"""Kept parameter ratios of the factorizable layers the low-rank knob walks (1.0 = off)."""

OBS_MAX_WIDTH = 2048
"""The pruning scores are ``obs`` (:mod:`graphopt.passes.pruning.obs`) when no MatMul / Gemm / Conv of the model
reads more than this many input channels, else ``wanda``: obs ranks best with least squares (all-MiniLM-L6-v2
at 0.6 of the block FLOPs: rank fidelity 0.921 against 0.911; PaddleOCR rec at 0.75: char acc 0.934 against
0.895) but its greedy ordering costs ~C^3 per group (~1.6 s for C = 1536 on 2 cores, ~8x that at 3072), which
a time-limited search on a full-size model cannot spare."""


def _weighted_ops(source: str | Path) -> list[tuple[str, list[int], bool]]:
    """``(op, weight dims, transB)`` of every MatMul / Gemm / Conv of ``source`` whose weight (input 1) is a constant:
    an initializer or a Constant node (PaddleOCR's exports); external data not read.

    Raises:
        LoadError: the file is not a readable ONNX model.
    """
    from graphopt import ir

    proto = ir.load_proto(source)
    dims = {t.name: list(t.dims) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                dims[node.output[0]] = list(value.dims)
    out = []
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        w = dims.get(node.input[1])
        if w is not None and len(w) >= 2:
            out.append((node.op_type, w, any(a.name == "transB" and a.i for a in node.attribute)))
    return out


def prune_method(source: str | Path) -> str:
    """``obs`` or ``wanda`` for ``source`` (an .onnx path; external data not read): :data:`OBS_MAX_WIDTH` against
    the widest input of a MatMul / Gemm (``B`` constant: an initializer or a Constant node; ``K`` = its rows, its
    columns under ``transB``) or Conv (the weight's input channels), read from the constants' dims.

    Raises:
        LoadError: the file is not a readable ONNX model.
    """
    widest = 0
    for op, w, trans in _weighted_ops(source):
        if op == "MatMul" and len(w) == 2:
            widest = max(widest, w[0])
        elif op == "Gemm":
            widest = max(widest, w[1] if trans else w[0])
        elif op == "Conv":
            widest = max(widest, w[1])
    return "obs" if widest <= OBS_MAX_WIDTH else "wanda"


def prune_allocation(source: str | Path) -> str:
    """``relative`` for a model with a Conv whose weight is a constant (a CNN: its consumers write feature maps of
    different scales, where absolute consumer errors mislead the walk), else ``error`` (a Transformer's consumers
    all write into one residual stream, where the absolute error is the better walk): the pruning allocation of
    :mod:`graphopt.passes.pruning.allocation`, as measured on PaddleOCR det and rec against all-MiniLM-L6-v2
    (``tools/benchmarks/pruning.md``).

    Raises:
        LoadError: the file is not a readable ONNX model.
    """
    return "relative" if any(op == "Conv" for op, _, _ in _weighted_ops(source)) else "error"


@dataclass
class CompressOptions:
    """Options of :func:`compress`.

    Attributes:
        techniques: which of ``prune``, ``lowrank``, ``int8`` the search may use.
        target: ``ort``, ``onnx`` or ``tensorrt``.
        threshold: the budget: the chosen model's metric on the search split is at least this (or ``speedup``,
            or ``max_drop``).
        speedup: the chosen model is at least this many times faster than the original.
        max_drop: the budget as the most the metric may fall below the original's own score on the same inputs:
            the search split's threshold is the original's score there minus this, the held-out split's the
            original's score there minus this (Intel Neural Compressor's absolute accuracy criterion; for a task
            metric with labels, whose baseline differs between splits).
        time_limit: seconds for the search (None: until it ends by itself).
        latency_seconds: timed seconds per candidate against the warm original.
        threads: onnxruntime intra-op threads of the latency measurements.
        prune_levels, lowrank_levels: the knobs' ladders.
        prune, lowrank: base pass options (None: :func:`prune_method`'s scores, obs or wanda, with
            :func:`prune_allocation`'s allocation, relative or error, and least squares; svd-llm with the refit).
        mask: graph input whose zeros drop padded rows from the statistics.
        int8_method: INT8 activation range calibration (minmax, percentile, entropy, mse).
    """

    techniques: tuple[str, ...] = TECHNIQUES
    target: str = "ort"
    threshold: float | None = None
    speedup: float | None = None
    max_drop: float | None = None
    time_limit: float | None = None
    latency_seconds: float = 2.0
    threads: int = 2
    prune_levels: tuple[float, ...] = PRUNE_LEVELS
    lowrank_levels: tuple[float, ...] = LOWRANK_LEVELS
    prune: Any = None
    lowrank: Any = None
    mask: str = ""
    int8_method: str = "minmax"


@dataclass
class CompressResult:
    """What :func:`compress` found.

    Attributes:
        search: the :class:`~graphopt.compress.search.SearchResult` (every point, frontier, chosen, why it stopped).
        built: the chosen candidate (its file in the work folder), or None when no point meets the goal.
        chosen: index of the chosen point in ``search.points`` (after the held-out check), or None.
        held_out: the chosen point's metric on the held-out split (None without one).
        stepped_back: frontier points passed over because they missed the budget on the held-out split.
        original_held_out: the original's own metric on the held-out split (1.0 for a metric against the
            original; its accuracy for a task metric with labels).
        points: per measured point ``{"label", "latency_ratio", "latency_ms", "quality", "techniques", levels,
            "seconds", "error"}``.
        original_ms: the original's median latency (milliseconds) in the probe.
        int8_fusions: the INT8 fusion variants measured at the first INT8 point: ``{"fusion", "latency_ratio",
            "latency_ms", "quality", "seconds", "chosen"}`` each (empty without INT8).
        threshold: the budget the search kept on the search split (``max_drop``: the original's score there minus
            it); None in speedup mode.
        held_threshold: the budget checked on the held-out split (differs from ``threshold`` with ``max_drop``).
        seconds: wall time.
    """

    search: SearchResult
    built: Built | None
    chosen: int | None
    held_out: float | None
    stepped_back: list[int] = field(default_factory=list)
    original_held_out: float | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    original_ms: float = 0.0
    int8_fusions: list[dict[str, Any]] = field(default_factory=list)
    threshold: float | None = None
    held_threshold: float | None = None
    seconds: float = 0.0


def check_options(opts: CompressOptions) -> tuple[str, ...]:
    """The techniques of ``opts``, checked.

    Raises:
        InputError: an unknown technique, neither or both goals, a speedup <= 1, a time limit <= 0, bad levels.
    """
    techniques = tuple(dict.fromkeys(t.strip() for t in opts.techniques if t.strip()))
    unknown = [t for t in techniques if t not in TECHNIQUES]
    if unknown or not techniques:
        raise InputError(f"unknown technique(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(TECHNIQUES)} (e.g. --techniques prune,int8)")
    if sum(x is not None for x in (opts.threshold, opts.speedup, opts.max_drop)) != 1:
        raise InputError("give exactly one goal: an accuracy budget (--budget METRIC=VALUE, or --max-drop D below "
                         "the original's own score) or a speedup (--speedup X)")
    if opts.max_drop is not None and not 0 <= opts.max_drop < 1:
        raise InputError(f"--max-drop must be in [0, 1) (the most the metric may fall below the original's), got "
                         f"{opts.max_drop}")
    if opts.speedup is not None and not opts.speedup > 1.0:
        raise InputError(f"--speedup must be above 1 (times faster than the original), got {opts.speedup}")
    if opts.int8_method not in ("minmax", "percentile", "entropy", "mse"):
        raise InputError(f"unknown INT8 calibration method {opts.int8_method!r}; choose minmax, percentile, entropy "
                         "or mse")
    if opts.time_limit is not None and not opts.time_limit > 0:
        raise InputError(f"--time-limit must be positive, got {opts.time_limit}")
    for name, levels in (("prune", opts.prune_levels), ("lowrank", opts.lowrank_levels)):
        if not levels or levels[0] != 1.0 or any(not 0 < v <= 1 for v in levels) or list(levels) != sorted(
                levels, reverse=True):
            raise InputError(f"the {name} levels must start at 1.0 and fall within (0, 1], got {levels}")
    return techniques


def _label(levels: Mapping[str, Any]) -> str:
    parts = []
    if levels.get("prune", 1.0) < 1.0:
        parts.append(f"prune {levels['prune']:g}")
    if levels.get("lowrank", 1.0) < 1.0:
        parts.append(f"lowrank {levels['lowrank']:g}")
    if levels.get("int8"):
        parts.append("int8 (float fallbacks)" if levels["int8"] == "fallback" else "int8")
    return " + ".join(parts) or "fp32 (O2)"


def compress(source: str | Path, work: Path, calibration: Sequence[dict], search_batches: Sequence[dict],
             metric: Callable[..., float], options: CompressOptions, *, held_out: Sequence[dict] | None = None,
             latency_inputs: dict[str, np.ndarray] | None = None, progress: Callable[[str], None] | None = None,
             evaluate: Callable[[dict[str, Any]], Measure] | None = None,
             held_out_metric: Callable[..., float] | None = None) -> CompressResult:
    """Search ``source``'s compressed variants and build the chosen one into ``work``.

    Args:
        source: the original .onnx path (never modified).
        work: a folder for intermediate and candidate models (the caller removes it).
        calibration: calibration batches (input dicts): statistics, reconstruction, INT8 ranges.
        search_batches: evaluation batches the search scores candidates on (never calibration samples).
        metric: ``metric(outputs, reference) -> float`` (higher is better), e.g. a value of
            :data:`graphopt.calibrate.metrics.METRICS` or a user's task metric.
        options: :class:`CompressOptions` (the goal: ``threshold`` or ``speedup``).
        held_out: batches no search saw; the chosen point's reported metric is measured on them.
        latency_inputs: the inputs latency is timed on (default the first search batch).
        progress: called with a one-line status after each measured point.
        evaluate: replaces building and measuring (tests): ``evaluate(levels) -> Measure``.
        held_out_metric: the metric on ``held_out`` (default ``metric``; a task metric with ground-truth labels
            needs the held-out samples' labels).

    Returns:
        :class:`CompressResult` (``built`` None when no point meets the goal).

    Raises:
        InputError: bad options, no calibration or search batches.
    """
    from graphopt.bench.probe import LatencyProbe
    from graphopt.calibrate.evaluate import run_outputs
    from graphopt.passes.lowrank.factorize import FactorizeOptions
    from graphopt.passes.pruning.prune import PruneOptions

    start = time.perf_counter()
    techniques = check_options(options)
    began = time.monotonic()
    if not calibration or not search_batches:
        raise InputError("compress needs calibration batches (--calib) and evaluation batches (--eval) the search "
                         "scores candidates on")
    # INT8 first: each round measures its proposals in knob order, and INT8 costs seconds where a first pruning
    # or low-rank level costs its statistics pass (minutes on a full-size model), so under a time limit the
    # cheap, large step is never the one left unmeasured
    knobs = []
    if "int8" in techniques:
        # "fallback": INT8 with the most sensitive layers kept float, measured once after the walk (budget mode)
        knobs.append(Knob("int8", (False, True, "fallback"), searched=2))
    if "prune" in techniques:
        knobs.append(Knob("prune", tuple(options.prune_levels)))
    if "lowrank" in techniques:
        knobs.append(Knob("lowrank", tuple(options.lowrank_levels)))
    prune_opts = options.prune or PruneOptions(method=prune_method(source), allocation=prune_allocation(source))
    lowrank_opts = options.lowrank or FactorizeOptions(threads=options.threads)
    reference = run_outputs(str(source), list(search_batches))
    # the deadline every candidate's long loops check (graphopt.deadline), so that a candidate still running when
    # the limit passes fails instead of overrunning it by minutes; it leaves FINISH_RESERVE times the original's
    # run on the search batches (plus 5 s) for the finish: the held-out scoring, the save, the report
    search_limit = deadline_at = None
    if options.time_limit is not None:
        reserve = FINISH_RESERVE * (time.monotonic() - began) + 5.0 + _weight_bytes(source) / SAVE_RATE
        deadline_at = began + max(options.time_limit - reserve, 1.0)
        search_limit = max(deadline_at - time.monotonic(), 1.0)
    if options.max_drop is not None:  # the budget below the original's own score on the search split
        options = replace(options, threshold=float(metric(reference, reference)) - options.max_drop)
    builder = probe = None
    if evaluate is None:
        builder = CandidateBuilder(source, work, target=options.target, calibration=list(calibration),
                                   search=list(search_batches), reference=reference, metric=metric,
                                   threshold=options.threshold, prune=prune_opts, lowrank=lowrank_opts,
                                   mask=options.mask, int8_method=options.int8_method)
        probe = LatencyProbe(source, latency_inputs or dict(search_batches[0]), threads=options.threads,
                             seconds=options.latency_seconds)
    built: dict[tuple, Built] = {}
    details: list[dict[str, Any]] = []
    measures: list[Measure] = []

    fusions: list[dict[str, Any]] | None = None

    def choose_fusion(levels: dict[str, Any]) -> tuple[Built, float, Any]:
        # The first INT8 point is built with every fusion variant that changes the graph; the fastest whose
        # quality is within FUSION_TOLERANCE of the default's is used for every later INT8 candidate. Under a
        # time limit a variant is only tried while the limit leaves room for three more builds like the first.
        nonlocal fusions
        fusions = []
        taken = None
        for name in builder.fusion_variants():
            began = time.perf_counter()
            if fusions and deadline_at is not None and time.monotonic() + 3 * fusions[0]["seconds"] > deadline_at:
                break
            try:
                b = builder.build({**levels, "int8": True}, fallback=levels.get("int8") == "fallback", fusion=name)
                quality, timing = builder.quality(b.path), probe.measure(b.path)
            except GraphoptError as e:
                if not fusions:  # the default itself failed: the point fails
                    raise
                log.info("compress: INT8 fusion variant %s failed: %s", name, failure(e))
                fusions.append({"fusion": name, "error": failure(e), "chosen": False})
                continue
            fusions.append({"fusion": name, "latency_ratio": timing.ratio, "latency_ms": timing.median_ms,
                            "quality": quality, "seconds": round(time.perf_counter() - began, 2)})
            if taken is None or (timing.ratio < taken[2].ratio
                                 and quality >= fusions[0]["quality"] - FUSION_TOLERANCE):
                taken = (b, quality, timing)
        builder.int8_fusion = taken[0].docs["int8_fusion"]
        for f in fusions:
            f["chosen"] = f["fusion"] == builder.int8_fusion
        return taken

    def levels_of(point: tuple[int, ...]) -> dict[str, Any]:
        return {k.name: k.levels[i] for k, i in zip(knobs, point)}

    def measure(point: tuple[int, ...]) -> Measure:
        levels = levels_of(point)
        began = time.perf_counter()
        detail = {"label": _label(levels), **{k: levels.get(k) for k in ("prune", "lowrank", "int8")},
                  "techniques": ",".join(k for k in ("prune", "lowrank", "int8")
                                         if levels.get(k) is not None and levels[k] is not False
                                         and not (k != "int8" and levels[k] >= 1.0)) or "-"}
        if evaluate is not None:
            m = evaluate(levels)
            detail.update(latency_ratio=m.latency, quality=m.quality, latency_ms=m.latency, error=m.error)
        else:
            try:
                with limit(deadline_at):
                    if levels.get("int8") and fusions is None:
                        b, quality, timing = choose_fusion(levels)
                    else:
                        b = builder.build({**levels, "int8": bool(levels.get("int8"))},
                                          fallback=levels.get("int8") == "fallback")
                        quality = builder.quality(b.path)
                        timing = probe.measure(b.path)
            except GraphoptError as e:
                log.info("compress: %s failed: %s", detail["label"], failure(e))
                m = Measure(math.inf, -math.inf, failure(e))
                detail.update(latency_ratio=None, quality=None, latency_ms=None, error=m.error)
            else:
                built[point] = b
                m = Measure(timing.ratio, quality)
                detail.update(latency_ratio=timing.ratio, latency_ms=timing.median_ms, quality=quality, error="",
                              original_ms=timing.original_ms, load=round(timing.load, 2),
                              kept_float=len(b.docs.get("quantize", {}).get("kept_float", [])),
                              int8_fusion=b.docs.get("int8_fusion"))
        detail["seconds"] = round(time.perf_counter() - began, 2)
        details.append(detail)
        measures.append(m)
        if progress is not None:
            i = best(measures, threshold=options.threshold, speedup=options.speedup)
            top = "none meets the goal yet" if i is None else (
                f"best {details[i]['label']} (latency {_fmt(details[i]['latency_ratio'])}, quality "
                f"{_fmt(details[i]['quality'])})")
            progress(f"{len(details)} points; last {detail['label']}: latency {_fmt(detail['latency_ratio'])}, "
                     f"quality {_fmt(detail['quality'])}; {top}")
        return m

    result = search(knobs, measure, threshold=options.threshold, speedup=options.speedup,
                    time_limit=search_limit)
    if options.threshold is not None and "int8" in techniques and result.chosen is not None:
        _try_fallback(result, knobs, measure, options, deadline_at)
    originals = [d["original_ms"] for d in details if d.get("original_ms")]
    out = CompressResult(result, None, result.chosen, None, points=details,
                         original_ms=float(np.median(originals)) if originals else 0.0, int8_fusions=fusions or [],
                         threshold=options.threshold, held_threshold=options.threshold)
    chosen = result.chosen
    if chosen is not None and held_out is not None and evaluate is None:
        ref_held = run_outputs(str(source), list(held_out))
        out.original_held_out = float((held_out_metric or metric)(ref_held, ref_held))
        if options.max_drop is not None:
            out.held_threshold = out.original_held_out - options.max_drop
        # Walk from the chosen point towards more accurate frontier points until the held-out split holds too.
        order = [chosen] + [i for i in sorted(result.frontier, key=lambda i: result.points[i][1].latency)
                            if result.points[i][1].latency > result.points[chosen][1].latency]
        for i in order:
            score = builder.quality(built[result.points[i][0]].path, list(held_out), ref_held, held_out_metric)
            if out.held_threshold is None or score >= out.held_threshold:
                chosen, out.held_out = i, score
                break
            out.stepped_back.append(i)
        else:
            chosen = None
    out.chosen = chosen
    if chosen is not None and evaluate is None:
        levels = levels_of(result.points[chosen][0])
        point = result.points[chosen][0]
        left = None if deadline_at is None else deadline_at - time.monotonic()
        if levels.get("int8") is True and (left is None or left > 2 * details[chosen]["seconds"]):
            out.built = builder.build(levels, sqnr=True, name="chosen")  # rebuilt with the per-layer SQNR
        else:  # fp32 (nothing to add), INT8 with fallbacks (its sensitivity runs are not repeated), or no time
            out.built = built[point]
            if levels.get("int8") is True:
                out.built.docs["sqnr"] = "not measured: the time limit left no room to rebuild with it"
        fusion = out.built.docs.get("int8_fusion", "default")
        out.built.docs["spec"] = spec_of(levels, options.target, prune_opts, lowrank_opts, fusion)
    out.seconds = time.perf_counter() - start
    return out


def _try_fallback(result: SearchResult, knobs: list[Knob], measure: Callable[[tuple[int, ...]], Measure],
                  options: CompressOptions, deadline_at: float | None, tries: int = 2) -> None:
    """Budget mode: INT8 with the most sensitive layers kept float (a sensitivity run per layer, so only a few
    points): at the chosen point when it has no INT8 (every layer quantized broke the budget), else at the INT8
    points faster than the chosen one that missed the budget, closest to it first (their float layers may
    recover it). A variant is taken when it keeps the budget and is faster."""
    k = [knob.name for knob in knobs].index("int8")
    here = result.points[result.chosen]
    if here[0][k] == 0:
        bases = [here[0]]
    else:
        missed = [(p, m) for p, m in result.points if p[k] == 1 and not m.error and m.latency < here[1].latency
                  and m.quality < (options.threshold or 0.0)]
        bases = [p for p, _ in sorted(missed, key=lambda pm: -pm[1].quality)]
    seen = {p for p, _ in result.points}
    for base in bases[:tries]:
        if deadline_at is not None and time.monotonic() > deadline_at:
            return
        extra = base[:k] + (2,) + base[k + 1:]
        if extra in seen:
            continue
        result.points.append((extra, measure(extra)))
        measures = [x for _, x in result.points]
        result.frontier = pareto(measures)
        result.chosen = best(measures, threshold=options.threshold)


def _weight_bytes(source: str | Path) -> int:
    """Bytes of the model file and the external-data files beside it (0 when it cannot be read)."""
    path = Path(source)
    try:
        return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data*"))
    except OSError:
        return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def frontier_doc(result: CompressResult, ylabel: str, budget: float | None) -> dict[str, Any]:
    """The ``frontier`` entry of the compress document (see :mod:`graphopt.report.document`): every measured
    point with its latency (ms) and quality, the chosen index, the frontier flags."""
    frontier = set(result.search.frontier)
    points = []
    for i, d in enumerate(result.points):
        if d.get("error"):
            continue
        points.append({**d, "frontier": i in frontier, "index": i})
    index = {p["index"]: n for n, p in enumerate(points)}
    return {"points": points, "chosen": index.get(result.chosen) if result.chosen is not None else None,
            "x": "latency_ratio", "y": "quality",
            "xlabel": "latency ratio to the original (interleaved)",
            "ylabel": ylabel, "budget": budget,
            "columns": [["techniques", "techniques", ""], ["latency (ms)", "latency_ms", ""],
                        ["INT8 layers kept float", "kept_float", ""], ["seconds", "seconds", "s"]]}


def asdict_levels(result: CompressResult) -> list[dict[str, Any]]:
    """Every measured point as ``{levels..., latency, quality, error}`` (for JSON)."""
    return [{**result.search.levels(i), **asdict(m)} for i, (_, m) in enumerate(result.search.points)]

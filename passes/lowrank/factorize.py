"""factorize: low-rank factorization of constant-weight MatMul, Gemm and 1x1
Conv layers, ``x W -> (x A) B``, activation-aware, with each rank chosen for
accuracy and measured speed.

Steps (:func:`factorize`): find the layers (:mod:`.layers`); collect the
Gram ``X^T X`` and mean ``|x|`` of each layer's input on the calibration data
(:func:`graphopt.calibrate.stats.collect_stats`, cached in the context); the
spectrum of each layer for the method (:mod:`.decompose`: ``svd``, ``asvd``
of Yuan et al. 2023, ``svd-llm`` of Wang et al. 2024); the candidate ranks
each layer may take (aligned, fewer parameters by a margin, measured faster
by the speed guard, :mod:`.speed`); the ranks (:mod:`.ranks`: fixed,
energy, global parameter or FLOPs budget, or the accuracy budget searched on the
evaluation data, :mod:`.budget`); factors (optionally refit by least
squares) and the rewrite. The per-layer report is stored as JSON in the
model's metadata under :data:`METADATA_KEY`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.deadline import check
from graphopt.errors import InputError
from graphopt.passes.lowrank import ranks as _ranks
from graphopt.passes.lowrank.decompose import METHODS, Spectrum, factors, relative_output_error, spectrum
from graphopt.passes.lowrank.layers import Layer, find_layers, rewrite
from graphopt.passes.lowrank.speed import SpeedGuard, Timing
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["Factorize", "FactorizeOptions", "FactorizeReport", "LayerReport", "factorize", "METADATA_KEY", "Plan",
           "plan_layers", "apply_plan"]

log = logging.getLogger(__name__)

METADATA_KEY = "graphopt.lowrank"
"""Model metadata key holding the JSON :class:`FactorizeReport`."""

REFITS = ("least-squares", "none")


@dataclass(frozen=True)
class FactorizeOptions:
    """Options of :class:`Factorize` (one of ``params``, ``energy``, ``rank``, or the context's accuracy budget)."""

    method: str = field(default="svd-llm", metadata={"doc": "svd, asvd (activation-scaled) or svd-llm (whitened)"})
    refit: str = field(default="least-squares", metadata={"doc": "least-squares refit of B given A, or none"})
    params: float = field(default=0.0, metadata={"doc": "global budget: parameters of the factorizable layers "
                                                        "after / before, in (0, 1]"})
    flops: float = field(default=0.0, metadata={"doc": "global budget: FLOPs of the factorizable layers after / "
                                                       "before at each layer's token count, in (0, 1]"})
    energy: float = field(default=0.0, metadata={"doc": "per layer: keep this share of the spectrum's energy "
                                                        "(svd-llm: 1 - relative output error)"})
    rank: int = field(default=0, metadata={"doc": "one fixed rank for every layer (rounded up to align)"})
    align: int = field(default=8, metadata={"doc": "ranks are multiples of this"})
    alpha: float = field(default=0.5, metadata={"doc": "asvd's exponent on mean |x|"})
    refit_ridge: float = field(default=1e-6, metadata={"doc": "relative ridge of the refit's r x r system "
                                                              "(small: A^T G A is well conditioned)"})
    max_param_ratio: float = field(default=0.9, metadata={"doc": "a layer is factorized only when r(K+N) <= "
                                                                 "this * K*N"})
    speed_guard: bool = field(default=True, metadata={"doc": "factorize only layers measured faster "
                                                             "(onnxruntime micro-benchmark, cached on disk)"})
    tokens: int = field(default=128, metadata={"doc": "M, rows of the products in the speed benchmark "
                                                      "(batch x sequence) where a layer's output shape does "
                                                      "not give them; else the layer's own rows"})
    threads: int = field(default=2, metadata={"doc": "onnxruntime threads of the speed benchmark"})
    max_speed_ratio: float = field(default=1.0, metadata={"doc": "a factored layer must measure below this "
                                                                 "latency ratio"})
    speed_cache: str = field(default="", metadata={"doc": "the speed cache JSON file (default "
                                                          "~/.cache/graphopt/lowrank_speed.json)"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"doc": "node-name glob patterns left whole"})
    blas_threads: int = field(default=1, metadata={"doc": "BLAS threads of the statistics, decompositions and "
                                                          "refits (threadpoolctl; 0: the library's default)"})


@dataclass
class LayerReport:
    """One layer's outcome.

    Attributes:
        name, kind: the node's label and op type; k, n: ``W [K, N]``.
        full_rank: ``min(K, N)``; rank: the kept rank (0: left whole).
        error: relative output error ``||X(W - AB)||^2 / ||XW||^2`` on the calibration data (None without data
            or when left whole).
        tokens: ``M``, the rows the layer multiplies: the product of its output's dims but the channel one
            when all are known (bound; a Conv's measured on the first calibration batch), else the ``tokens``
            option.
        params_before, params_after: weight elements; flops_before, flops_after: ``2 M K N`` and
            ``2 M r (K + N)``.
        speed_ratio: the measured latency ratio of the kept rank (None when not measured).
        reason: why the layer was left whole ('' when factorized).
    """

    name: str
    kind: str
    k: int
    n: int
    full_rank: int
    rank: int = 0
    tokens: int = 0
    error: float | None = None
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    speed_ratio: float | None = None
    reason: str = ""


@dataclass
class FactorizeReport:
    """What :func:`factorize` did. ``params_*`` and ``flops_*`` sum the factorizable layers only."""

    method: str
    refit: str
    layers: list[LayerReport] = field(default_factory=list)
    skipped_for_speed: list[str] = field(default_factory=list)
    not_factorizable: dict[str, str] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    budget: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def factorized(self) -> int:
        """Layers rewritten."""
        return sum(1 for r in self.layers if r.rank)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        doc = asdict(self)
        doc["factorized"] = self.factorized
        doc["param_ratio"] = self.params_after / self.params_before if self.params_before else 1.0
        doc["flop_ratio"] = self.flops_after / self.flops_before if self.flops_before else 1.0
        return doc


@dataclass
class Plan:
    """Everything rank choices need, computed once: layers, their spectra, statistics and candidate ranks."""

    layers: list[Layer]
    spectra: list[Spectrum]
    grams: list[np.ndarray | None]
    allowed: list[list[int]]
    reports: list[LayerReport]
    weights: list[np.ndarray | None]
    skipped_for_speed: list[str]
    not_factorizable: dict[str, str]
    guard: SpeedGuard | None


def _check(opts: FactorizeOptions, has_budget: bool) -> None:
    if opts.method not in METHODS:
        raise InputError(f"unknown factorization method {opts.method!r}; choose one of {', '.join(METHODS)}")
    if opts.refit not in REFITS:
        raise InputError(f"unknown refit {opts.refit!r}; choose least-squares or none")
    given = [name for name, v in (("params", opts.params), ("flops", opts.flops), ("energy", opts.energy),
                                  ("rank", opts.rank)) if v]
    if len(given) + has_budget != 1:
        raise InputError("factorize needs exactly one of params=P (0 < P <= 1), flops=F (0 < F <= 1), energy=E "
                         "(0 < E <= 1), rank=R or an accuracy budget; got "
                         f"{', '.join(given + (['budget'] if has_budget else [])) or 'none'}")
    if opts.params and not 0 < opts.params <= 1:
        raise InputError(f"params must be in (0, 1], got {opts.params}")
    if opts.flops and not 0 < opts.flops <= 1:
        raise InputError(f"flops must be in (0, 1], got {opts.flops}")
    if opts.energy and not 0 < opts.energy <= 1:
        raise InputError(f"energy must be in (0, 1], got {opts.energy}")
    if opts.rank < 0 or opts.align < 1 or opts.tokens < 1 or opts.threads < 1:
        raise InputError("rank must be >= 0 and align, tokens, threads >= 1")
    if not 0 < opts.max_param_ratio <= 1:
        raise InputError(f"max-param-ratio must be in (0, 1], got {opts.max_param_ratio}")


def _stats(model: ir.Model, layers: list[Layer], calibration: Any, cache: Any, progress: bool) -> dict[str, Any]:
    from graphopt.calibrate.stats import StatRequest, collect_stats

    requests: dict[str, StatRequest] = {}
    for layer in layers:
        name = layer.input.name
        axis = layer.axis
        if name in requests and requests[name].axis != axis:
            continue  # the same value read on another axis (a rare Gemm transA mix): the first wins
        requests[name] = StatRequest(name, axis, gram=True)
    return collect_stats(model, list(requests.values()), calibration, cache=cache, progress=progress)


def layer_tokens(layer: Layer, default: int, measured: dict[str, tuple[int, ...]] | None = None) -> int:
    """``M`` of ``layer``: the product of its output's dims but the channel axis (a 1x1 Conv's batch x height x
    width, a MatMul's batch x sequence); where a dim is symbolic, the output's shape in ``measured`` (name ->
    dims, see :func:`conv_shapes`), else ``default``."""
    shape = layer.node.outputs[0].shape
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape):
        shape = (measured or {}).get(layer.node.outputs[0].name or "", shape)
    if shape is None or len(shape) < 2:
        return default
    dims = list(shape)
    del dims[-1 if layer.kind == "MatMul" else 1]
    out = 1
    for d in dims:
        if not isinstance(d, int):
            return default
        out *= d
    return max(out, 1)


def conv_shapes(model: ir.Model, layers: list[Layer], calibration: Any) -> dict[str, tuple[int, ...]]:
    """Output shapes of the Conv layers whose spatial dims are symbolic, measured in one onnxruntime run on the
    first calibration batch (an image model runs at its calibration size: a dynamic-input CNN's 1x1 Convs then
    get their real ``M``, not ``tokens``). MatMuls keep ``tokens`` (a calibration sentence is not the sequence
    length the model is deployed at). ``{}`` without calibration data, or when the run fails (logged)."""
    from graphopt.analysis.measured import measure_shapes

    names = [layer.node.outputs[0].name for layer in layers
             if layer.kind == "Conv" and layer_tokens(layer, 0) == 0 and layer.node.outputs[0].name]
    first = next(iter(calibration), None) if calibration is not None and names else None
    if not first:
        return {}
    try:
        return measure_shapes(model, first, names=names)
    except Exception as e:  # noqa: BLE001 - the rows fall back to tokens
        log.info("factorize: measuring the Conv layers' shapes failed (%s); they count %s", str(e)[:200], "tokens")
        return {}


def plan_layers(model: ir.Model, opts: FactorizeOptions, calibration: Any = None, *, timing: Timing | None = None,
                cache: Any = None, progress: bool = False) -> Plan:
    """Find the layers, collect their statistics, compute spectra and candidate ranks (speed guard included).

    Raises:
        InputError: ``asvd``/``svd-llm``/a refit without calibration data, or data that does not fit the model.
    """
    import fnmatch

    skipped: dict[str, str] = {}
    layers = []
    for layer in find_layers(model.graph, skipped):
        if any(fnmatch.fnmatchcase(layer.node.name or "", p) for p in opts.exclude_nodes):
            skipped[layer.name] = "excluded (exclude-nodes)"
        else:
            layers.append(layer)
    needs_data = opts.method != "svd" or opts.refit != "none"
    if needs_data and calibration is None and layers:
        raise InputError(f"method {opts.method} with refit {opts.refit} needs calibration data (graphopt factorize "
                         "--calib PATH, or PassContext(calibration=...)); only method=svd with refit=none runs "
                         "without")
    stats = _stats(model, layers, calibration, cache, progress) if needs_data and layers else {}
    guard = SpeedGuard(opts.tokens, timing, opts.speed_cache or None, opts.threads, opts.max_speed_ratio) \
        if opts.speed_guard else None
    plan = Plan(layers, [], [], [], [], [], [], skipped, guard)
    measured = conv_shapes(model, layers, calibration)
    fast: dict[tuple[int, int, int], int] = {}
    kept: list[Layer] = []
    for layer in layers:
        check("low-rank decompositions")
        st = stats.get(layer.input.name)
        if st is not None and st.axis != layer.axis:
            st = None
        if needs_data and st is None:
            skipped[layer.name] = "its input is also read on another channel axis"
            continue
        w = layer.weight()
        gram = st.gram if st is not None else None
        spec = spectrum(w, opts.method, gram=gram, abs_mean=st.abs_mean if st is not None else None,
                        alpha=opts.alpha, where=layer.name)
        allowed = _ranks.candidates(layer.k, layer.n, opts.align, opts.max_param_ratio)
        tokens = layer_tokens(layer, opts.tokens, measured)
        report = LayerReport(layer.name, layer.kind, layer.k, layer.n, min(layer.k, layer.n), tokens=tokens,
                             params_before=layer.params, params_after=layer.params,
                             flops_before=2 * tokens * layer.params, flops_after=2 * tokens * layer.params)
        if not allowed:
            report.reason = f"no rank saves {1 - opts.max_param_ratio:.0%} of the parameters at align {opts.align}"
        elif guard is not None:
            key = (tokens, layer.k, layer.n)  # measured at the layer's own rows where its shape says them
            if key not in fast:
                fast[key] = guard.largest_fast_rank(layer.k, layer.n, allowed, tokens)
            allowed = [r for r in allowed if r <= fast[key]]
            if not allowed:
                report.reason = "slower at every rank that saves parameters (speed guard)"
                plan.skipped_for_speed.append(layer.name)
        top = max(allowed, default=0)
        if top < spec.s.shape[0]:
            # No rank above ``top`` can be chosen: keep only those singular vectors (``s`` stays whole for the
            # tails). The full factors of every layer at once cost ~1.3x the weights in float64 (LLaMA 600M: ~6 GB).
            spec = replace(spec, u=spec.u[:, :top].copy(), vt=spec.vt[:top].copy())
        if spec.left is not None:
            # A = left @ (U_r sqrt(s_r)) = (left @ U)_r sqrt(s_r): the [K, K] map folded into the kept vectors once,
            # so the plan does not hold it for every layer (BERT-base, svd-llm: 1.1 GB of float64)
            spec = replace(spec, u=spec.left @ spec.u, left=None)
        kept.append(layer)
        plan.spectra.append(spec)
        plan.grams.append(gram)
        plan.allowed.append(allowed)
        plan.reports.append(report)
        # The weight is read only by the refit and the output error (which needs the Gram), both in float64 from
        # this copy in the model's own float type (float64 for every layer at once doubles the weights' memory)
        keep_weight = opts.refit == "least-squares" or gram is not None
        plan.weights.append(w.astype(ir.DataType(layer.dtype).numpy()) if keep_weight else None)
    plan.layers = kept
    return plan


def choose_ranks(plan: Plan, opts: FactorizeOptions, params: float | None = None) -> list[int]:
    """The rank of each planned layer (0: whole) for ``opts`` (or a parameter ratio ``params``)."""
    tails = [s.tail for s in plan.spectra]
    shapes = [(layer.k, layer.n) for layer in plan.layers]
    if params is not None or opts.params:
        return _ranks.budget_ranks(plan.allowed, tails, shapes, params if params is not None else opts.params)
    if opts.flops:  # the same greedy, each layer's parameters weighted by its tokens: FLOPs = 2 M r (K + N)
        return _ranks.budget_ranks(plan.allowed, tails, shapes, opts.flops, costs=[r.tokens for r in plan.reports])
    if opts.energy:
        return _ranks.energy_ranks(plan.allowed, tails, opts.energy)
    return _ranks.fixed_ranks(plan.allowed, opts.rank)


def apply_plan(model: ir.Model, plan: Plan, chosen: list[int], opts: FactorizeOptions) -> FactorizeReport:
    """Rewrite ``model`` (the model ``plan`` was made on, or a structural copy: layers are matched by node
    position) with ``chosen`` ranks; returns the report."""
    report = FactorizeReport(opts.method, opts.refit, skipped_for_speed=list(plan.skipped_for_speed),
                             not_factorizable=dict(plan.not_factorizable))
    order = {id(node): i for i, node in enumerate(plan.layers[0].node.graph)} if plan.layers else {}
    nodes = list(model.graph)
    names = ir.value_names(model.graph) if plan.layers else set()
    for layer, spec, gram, w, base, rank in zip(plan.layers, plan.spectra, plan.grams, plan.weights, plan.reports,
                                                chosen):
        check("low-rank factors")
        rep = LayerReport(**asdict(base))
        report.layers.append(rep)
        if rank and plan.guard is not None and not plan.guard.faster(layer.k, layer.n, rank, base.tokens):
            # The bisection measured only some ranks: the chosen one is measured too, and a noisy or non-monotone
            # slower reading steps down to the next allowed rank measured faster (fewer parameters, never more).
            lower = [r for r in plan.allowed[plan.layers.index(layer)] if r < rank]
            rank = next((r for r in reversed(lower) if plan.guard.faster(layer.k, layer.n, r, base.tokens)), 0)
            if not rank:
                rep.reason = "slower at the allocated rank and every rank below it (speed guard)"
                report.skipped_for_speed.append(layer.name)
                continue
        if not rank:
            rep.reason = rep.reason or "the allocation kept it whole"
            continue
        a, b = factors(spec, rank, gram=gram, weight=w, refit=opts.refit == "least-squares",
                       ridge=opts.refit_ridge, where=layer.name)
        target = layer if nodes[order[id(layer.node)]] is layer.node else Layer(
            nodes[order[id(layer.node)]], layer.name, layer.kind, layer.k, layer.n, layer.axis, layer.dtype)
        rewrite(model.graph, target, a, b, names)
        rep.rank = rank
        rep.params_after = rank * (layer.k + layer.n)
        rep.flops_after = rep.flops_before * rep.params_after // layer.params
        rep.error = relative_output_error(gram, w, a @ b) if gram is not None else None
        if plan.guard is not None:
            rep.speed_ratio = plan.guard.ratio(layer.k, layer.n, rank, base.tokens)
        rep.reason = ""
    for rep in report.layers:
        report.params_before += rep.params_before
        report.params_after += rep.params_after
        report.flops_before += rep.flops_before
        report.flops_after += rep.flops_after
    return report


def factorize(model: ir.Model, options: FactorizeOptions | None = None, calibration: Any = None, *,
              evaluation: Any = None, budget: dict[str, Any] | None = None, timing: Timing | None = None,
              cache: Any = None, progress: bool = False) -> FactorizeReport:
    """Factorize ``model``'s layers in place.

    Args:
        model: the IR model (main graph's MatMul / Gemm / 1x1 Conv with constant weights).
        options: :class:`FactorizeOptions` (defaults: svd-llm with refit; needs one rank criterion).
        calibration: batches of model inputs (a :class:`~graphopt.calibrate.data.CalibrationData`).
        evaluation: held-out batches the accuracy budget is searched on (default: the calibration data).
        budget: ``{"cosine" | "argmax" | "rank-fidelity": threshold}`` or ``{"metric": fn, "threshold": t}``:
            the smallest parameter ratio whose metric holds (:func:`.budget.search`).
        timing: the speed guard's injected :data:`~.speed.Timing` (tests); None measures.
        cache: a :class:`~graphopt.calibrate.stats.StatsCache`.

    Returns:
        :class:`FactorizeReport` (also stored in ``model.metadata_props[METADATA_KEY]``).

    Raises:
        InputError: bad options, missing or mismatched calibration data, an unknown budget metric.
    """
    from graphopt.calibrate.reconstruct import blas_threads

    opts = options or FactorizeOptions()
    _check(opts, bool(budget))
    start = time.perf_counter()
    with blas_threads(opts.blas_threads):
        plan = plan_layers(model, opts, calibration, timing=timing, cache=cache, progress=progress)
        found = None
        if budget:
            from graphopt.passes.lowrank.budget import search

            found = search(model, plan, opts, budget, evaluation if evaluation is not None else calibration)
            chosen = choose_ranks(plan, opts, params=found["params"])
        else:
            chosen = choose_ranks(plan, opts)
        report = apply_plan(model, plan, chosen, opts)
    report.budget = found
    report.seconds = time.perf_counter() - start
    model.metadata_props[METADATA_KEY] = json.dumps(report.to_dict(), default=str)
    return report


@register_pass("factorize")
class Factorize(Pass):
    """Low-rank factorization of constant-weight MatMul / Gemm / 1x1 Conv into two smaller products of the same
    kind (svd, asvd or svd-llm; least-squares refit), only where measured faster.

    Reads ``ctx.calibration`` (needed by asvd, svd-llm and the refit), ``ctx.accuracy_budget`` and
    ``ctx.evaluation``; writes the report to the model's ``graphopt.lowrank`` metadata (JSON).

    Raises:
        InputError: bad options, or calibration data that is missing or does not fit the model.
    """

    Options = FactorizeOptions
    requires = frozenset({"topo-sorted", "shapes-inferred"})
    lossy = True

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001 - PassContext
        from graphopt.calibrate.stats import StatsCache

        cache = StatsCache.for_context(ctx, model) if ctx.calibration is not None else None
        before = model.metadata_props.get(METADATA_KEY)
        report = factorize(model, self.options, ctx.calibration, evaluation=ctx.evaluation,
                           budget=ctx.accuracy_budget or None, cache=cache)
        if not report.factorized:  # unchanged: metadata too (PassResult(False) promises the same model)
            if before is None:
                del model.metadata_props[METADATA_KEY]
            else:
                model.metadata_props[METADATA_KEY] = before
        return PassResult(report.factorized > 0, {"factorized": report.factorized, "kept": len(report.layers)
                                                  - report.factorized, "skipped for speed":
                                                  len(report.skipped_for_speed)})

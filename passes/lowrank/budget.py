"""The accuracy budget of ``factorize``: the smallest parameter ratio whose
metric still holds on the evaluation data.

As ``quantize --budget`` searches which layers to keep float, this searches
the global parameter ratio (:func:`~graphopt.passes.lowrank.ranks.budget_ranks`
allocates it across layers): a bisection over ratios ``0.05 .. 1.0`` in steps
of 0.05, each trial a structural copy of the model factorized and run in
onnxruntime on the evaluation batches against the original's outputs, scored
by a metric of :data:`graphopt.calibrate.metrics.METRICS` (or a callback).
The metric is assumed to fall as the ratio falls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.errors import InputError

__all__ = ["search", "metric_of", "run_outputs"]

log = logging.getLogger(__name__)

RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 21))
"""The parameter ratios the search tries (ascending)."""


def metric_of(budget: Mapping[str, Any]) -> tuple[str, Any, float]:
    """``(name, metric(outputs, reference) -> float, threshold)`` of a budget dict.

    Raises:
        InputError: not one known metric with a threshold in (0, 1], nor ``{"metric": fn, "threshold": t}``.
    """
    from graphopt.calibrate.metrics import METRICS

    if "metric" in budget:
        if not callable(budget["metric"]) or "threshold" not in budget:
            raise InputError("accuracy_budget with a metric needs {'metric': callable(outputs, reference) -> float, "
                             "'threshold': float}")
        return getattr(budget["metric"], "__name__", "metric"), budget["metric"], float(budget["threshold"])
    if len(budget) != 1 or next(iter(budget)) not in METRICS:
        raise InputError(f"unknown accuracy budget {sorted(budget)}; give one of "
                         f"{', '.join(f'{{{m!r}: value}}' for m in METRICS)} or {{'metric': callable, 'threshold': v}}")
    name, threshold = next(iter(budget.items()))
    if not 0 < float(threshold) <= 1:
        raise InputError(f"the {name} budget must be in (0, 1], got {threshold}")
    return name, METRICS[name], float(threshold)


def run_outputs(model: ir.Model | str, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run ``model`` (IR or path) on ``batches`` in onnxruntime (ORT_ENABLE_ALL); one output dict per batch."""
    from graphopt.verify.runtime import make_session, resolve_model

    session = make_session(resolve_model(model), optimization_level="all")
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name for i in session.get_inputs()}
    return [dict(zip(names, session.run(names, {k: v for k, v in b.items() if k in feeds}))) for b in batches]


def search(model: ir.Model, plan: Any, opts: Any, budget: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """The smallest ratio of :data:`RATIOS` whose factorized model scores at least the threshold.

    Args:
        model: the original (not modified here; trials run on structural copies).
        plan: the :class:`~graphopt.passes.lowrank.factorize.Plan` of ``model``.
        opts: the :class:`~graphopt.passes.lowrank.factorize.FactorizeOptions`.
        budget: see :func:`metric_of`.
        data: evaluation batches (re-iterable).

    Returns:
        ``{"metric", "threshold", "params", "score", "trials"}``; ``params`` 1.0 (nothing factorized) when even
        the mildest ratio misses, with ``score`` that trial's.

    Raises:
        InputError: a bad budget, or no evaluation data.
    """
    from graphopt.passes.lowrank.factorize import apply_plan, choose_ranks

    name, metric, threshold = metric_of(budget)
    if data is None:
        raise InputError("an accuracy budget needs evaluation data (--eval PATH, else the calibration data)")
    batches = list(data)
    if not batches:
        raise InputError("the accuracy budget's evaluation data holds no batch")
    reference = run_outputs(model, batches)
    scores: dict[float, float] = {}

    def score(ratio: float) -> float:
        if ratio not in scores:
            trial = ir.clone(model)
            apply_plan(trial, plan, choose_ranks(plan, opts, params=ratio), opts)
            scores[ratio] = float(metric(run_outputs(trial, batches), reference))
            log.info("factorize budget: params %.2f -> %s %.6f", ratio, name, scores[ratio])
        return scores[ratio]

    lo, hi = 0, len(RATIOS) - 2  # RATIOS[-1] == 1.0: nothing to factorize
    best = 1.0
    while lo <= hi:
        mid = (lo + hi) // 2
        if score(RATIOS[mid]) >= threshold:
            best, hi = RATIOS[mid], mid - 1
        else:
            lo = mid + 1
    return {"metric": name, "threshold": threshold, "params": best,
            "score": scores.get(best, 1.0) if best < 1.0 else min(scores.values(), default=1.0),
            "trials": {str(k): v for k, v in sorted(scores.items())}}

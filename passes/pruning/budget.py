"""The accuracy budget of ``prune``: the largest FLOP reduction whose metric still holds on the evaluation data.

As ``quantize --budget`` and ``factorize --budget`` do, each candidate is a
structural copy of the model pruned at that ratio and run in onnxruntime
(``ORT_ENABLE_ALL``) on the evaluation batches against the original's
outputs, scored by a metric of :data:`graphopt.calibrate.metrics.METRICS`
(``cosine``, ``argmax``, ``rank-fidelity``) or a callback. Ratios are
bisected over :data:`RATIOS` (the metric is assumed to fall as the kept
ratio falls); the statistics, scores and error curves are computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.errors import InputError

__all__ = ["RATIOS", "metric_of", "run_outputs", "search"]

log = logging.getLogger(__name__)

RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Kept block-FLOP ratios the search tries (ascending, 0.05 .. 0.95)."""


def metric_of(budget: Mapping[str, Any]) -> tuple[str, Callable[..., float], float]:
    """``(name, metric(outputs, reference) -> float, threshold)`` of ``{"rank-fidelity": 0.98}`` or
    ``{"metric": callable, "threshold": t}``.

    Raises:
        InputError: not one known metric with a threshold in (0, 1], nor a callable with a threshold.
    """
    from graphopt.calibrate.metrics import METRICS

    if "metric" in budget:
        if not callable(budget["metric"]) or "threshold" not in budget:
            raise InputError("accuracy_budget with a metric needs {'metric': callable(outputs, reference) -> float, "
                             "'threshold': float}")
        return getattr(budget["metric"], "__name__", "metric"), budget["metric"], float(budget["threshold"])
    if len(budget) != 1 or next(iter(budget)) not in METRICS:
        raise InputError(f"unknown accuracy budget {sorted(budget)}; give one of {', '.join(METRICS)} "
                         "(e.g. {'rank-fidelity': 0.98}) or {'metric': callable, 'threshold': value}")
    name, threshold = next(iter(budget.items()))
    if not 0 < float(threshold) <= 1:
        raise InputError(f"the {name} budget must be in (0, 1], got {threshold}")
    return name, METRICS[name], float(threshold)


def run_outputs(model: ir.Model | str, batches: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run ``model`` (IR or path) on ``batches`` in onnxruntime (ORT_ENABLE_ALL); one ``{output: array}`` per batch."""
    from graphopt.verify.runtime import make_session, resolve_model

    session = make_session(resolve_model(model), optimization_level="all")
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name for i in session.get_inputs()}
    return [dict(zip(names, session.run(names, {k: v for k, v in b.items() if k in feeds}))) for b in batches]


def search(model: ir.Model, prune_at: Callable[[ir.Model, float], None], budget: Mapping[str, Any], data: Any
           ) -> dict[str, Any]:
    """The smallest ratio of :data:`RATIOS` whose pruned model scores at least the threshold.

    Args:
        model: the original (not modified; each trial prunes ``ir.clone(model)``).
        prune_at: ``prune_at(copy, ratio)`` prunes a copy in place at a kept block-FLOP ratio.
        budget: see :func:`metric_of`.
        data: evaluation batches (re-iterable), never the calibration data's samples.

    Returns:
        ``{"metric", "threshold", "ratio", "score", "trials"}``; ``ratio`` is 1.0 (nothing pruned) when even
        the mildest ratio misses, with ``score`` the best trial's.

    Raises:
        InputError: a bad budget or no evaluation batch.
    """
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
            try:
                prune_at(trial, ratio)
            except InputError as e:  # a ratio the chosen kinds cannot reach
                log.info("prune budget: ratio %.2f unreachable: %s", ratio, e)
                scores[ratio] = float("-inf")
                return scores[ratio]
            scores[ratio] = float(metric(run_outputs(trial, batches), reference))
            log.info("prune budget: ratio %.2f -> %s %.6f", ratio, name, scores[ratio])
        return scores[ratio]

    lo, hi = 0, len(RATIOS) - 1
    best = 1.0
    while lo <= hi:
        mid = (lo + hi) // 2
        if score(RATIOS[mid]) >= threshold:
            best, hi = RATIOS[mid], mid - 1
        else:
            lo = mid + 1
    return {"metric": name, "threshold": threshold, "ratio": best,
            "score": scores[best] if best < 1.0 else max(scores.values(), default=1.0),
            "trials": {str(k): v for k, v in sorted(scores.items())}}

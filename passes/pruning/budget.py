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
from collections.abc import Callable, Mapping
from typing import Any

from graphopt import ir
from graphopt.calibrate.evaluate import BudgetCheck, metric_of, run_outputs, smallest_passing
from graphopt.errors import InputError

__all__ = ["RATIOS", "metric_of", "run_outputs", "search"]

log = logging.getLogger(__name__)

RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Kept block-FLOP ratios the search tries (ascending, 0.05 .. 0.95)."""


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
    check = BudgetCheck.of(model, budget, data)
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
            scores[ratio] = check.score(trial)
            log.info("prune budget: ratio %.2f -> %s %.6f", ratio, check.name, scores[ratio])
        return scores[ratio]

    best = smallest_passing(RATIOS, score, check.threshold)
    return {"metric": check.name, "threshold": check.threshold, "ratio": best,
            "score": scores[best] if best < 1.0 else max(scores.values(), default=1.0),
            "trials": {str(k): v for k, v in sorted(scores.items())}}

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
from collections.abc import Mapping
from typing import Any

from graphopt import ir
from graphopt.calibrate.evaluate import BudgetCheck, metric_of, run_outputs, smallest_passing

__all__ = ["search", "metric_of", "run_outputs"]  # metric_of, run_outputs: graphopt.calibrate.evaluate's

log = logging.getLogger(__name__)

RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 21))
"""The parameter ratios the search tries (ascending)."""


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

    check = BudgetCheck.of(model, budget, data)
    scores: dict[float, float] = {}

    def score(ratio: float) -> float:
        if ratio not in scores:
            trial = ir.clone(model)
            apply_plan(trial, plan, choose_ranks(plan, opts, params=ratio), opts)
            scores[ratio] = check.score(trial)
            log.info("factorize budget: params %.2f -> %s %.6f", ratio, check.name, scores[ratio])
        return scores[ratio]

    best = smallest_passing(RATIOS[:-1], score, check.threshold)  # RATIOS[-1] == 1.0: nothing to factorize
    return {"metric": check.name, "threshold": check.threshold, "params": best,
            "score": scores.get(best, 1.0) if best < 1.0 else min(scores.values(), default=1.0),
            "trials": {str(k): v for k, v in sorted(scores.items())}}

"""Accuracy-budget evaluation shared by the lossy passes (``prune``, ``factorize``): run a model on evaluation
batches, score a trial against the original's outputs, and bisect the ratios a budget allows.

A pass's ``budget.search`` builds one :class:`BudgetCheck` (the metric, threshold, batches and the original's
outputs, computed once), scores structural copies of the model at candidate ratios with
:meth:`BudgetCheck.score`, and lets :func:`smallest_passing` bisect the ratios (the metric is assumed to fall as
the ratio falls).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.errors import InputError

__all__ = ["BudgetCheck", "metric_of", "run_outputs", "smallest_passing"]


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


@dataclass
class BudgetCheck:
    """An accuracy budget ready to score trials: the metric, its threshold, the evaluation batches and the
    original model's outputs on them."""

    name: str
    metric: Callable[..., float]
    threshold: float
    batches: list[Mapping[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]

    @classmethod
    def of(cls, model: ir.Model, budget: Mapping[str, Any], data: Any) -> BudgetCheck:
        """The check of ``budget`` (see :func:`metric_of`) on ``data`` (evaluation batches, re-iterable), with
        ``model``'s outputs as the reference.

        Raises:
            InputError: a bad budget, no evaluation data, or data with no batch.
        """
        name, metric, threshold = metric_of(budget)
        if data is None:
            raise InputError("an accuracy budget needs evaluation data (--eval PATH, else the calibration data)")
        batches = list(data)
        if not batches:
            raise InputError("the accuracy budget's evaluation data holds no batch")
        return cls(name, metric, threshold, batches, run_outputs(model, batches))

    def score(self, trial: ir.Model | str) -> float:
        """The metric of ``trial``'s outputs on the batches against the reference."""
        return float(self.metric(run_outputs(trial, self.batches), self.reference))


def smallest_passing(ratios: Sequence[float], score: Callable[[float], float], threshold: float) -> float:
    """The smallest of ``ratios`` (ascending) whose ``score`` is at least ``threshold``, found by bisection
    (``score`` assumed to rise with the ratio); 1.0 when none passes."""
    lo, hi = 0, len(ratios) - 1
    best = 1.0
    while lo <= hi:
        mid = (lo + hi) // 2
        if score(ratios[mid]) >= threshold:
            best, hi = ratios[mid], mid - 1
        else:
            lo = mid + 1
    return best

"""Importance of each unit of each planned group (higher = keep).

Methods (:data:`METHODS`); the first three from :mod:`graphopt.calibrate.importance`:

- ``magnitude``: the L2 group norm of every weight that goes with the unit
  (producer columns and consumer rows; Torch-Pruning / DepGraph's baseline);
- ``wanda``: Wanda-sp (Sun et al. 2023): ``sum ||X_j||_2 * ||W_j,:||_1`` over
  the unit's consumer rows, with ``X`` the consumer's input on the
  calibration data;
- ``flap``: FLAP's fluctuation (An et al. 2024): ``var(X_j) * ||W_j,:||_2^2``
  summed over the unit's consumer rows;
- ``sensitivity``: how much the block output changes when the unit alone is removed (:mod:`.sensitivity`):
  the exact change of the consumer's output, ``||X_u W_u||_F^2`` from the Gram of its input, which sees the
  correlations between a unit's rows (a head's ``head_dim`` rows) that Wanda and FLAP ignore;
- ``ablation``: the model outputs' change, ``1 - cos``, with the unit masked (Michel et al. 2019, "Are
  Sixteen Heads Really Better than One?"; Kwon et al. 2022's mask variables), for groups of few units
  (attention heads first; at most 64 units a group, 512 in all), every mask in one onnxruntime session
  through switch inputs; the wider groups (FFN neurons) as ``sensitivity``. Measured worse than
  ``sensitivity`` on all-MiniLM-L6-v2 (:mod:`.sensitivity`).

A group whose consumers read no statistics (its consumer is not a
MatMul/Gemm/Conv with a constant weight) falls back to ``magnitude``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from graphopt import ir
from graphopt.calibrate.importance import fluctuation_scores, magnitude_scores, wanda_scores
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import GroupPlan, Site, weight_rows

__all__ = ["METHODS", "score_groups"]

METHODS = ("magnitude", "wanda", "flap", "sensitivity", "ablation", "obs")
"""Scoring methods by name."""


def _magnitude(plan: GroupPlan, model: ir.Model) -> np.ndarray:
    inits = model.graph.initializers
    arrays = []
    for s in plan.group.slices:
        if s.role not in ("out", "in") or s.tensor not in inits:
            continue
        arr = ir.const_array(inits[s.tensor])
        if arr is None:
            continue
        moved = np.moveaxis(np.asarray(arr, dtype=np.float64), s.axis, 0)
        arrays.append(moved[s.start:s.start + plan.size * s.unit].reshape(plan.size, -1))
    if not arrays:
        return np.zeros(plan.size)
    return magnitude_scores(arrays, unit=1, p=2)


def score_groups(plans: list[GroupPlan], sites: Mapping[str, Site], stats: Mapping[str, object], method: str,
                 model: ir.Model, *, calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
                 mask: str | None = None, progress: bool = False, ridge: float = 1e-4,
                 centered: bool = True) -> None:
    """Fill ``plan.scores`` (``[size]`` float64) of every plan.

    Args:
        plans: from :func:`~graphopt.passes.pruning.plan.build_plan`.
        sites: consumer sites by node name.
        stats: ``{data value: ChannelStats}`` of the sites' inputs (may be empty for ``magnitude``; with Grams
            for ``sensitivity`` and ``ablation``, else they read their diagonal).
        method: one of :data:`METHODS`.
        model: the model the plans were made on (weights read; ``ablation`` runs a masked copy).
        calibration: ``ablation``: the batches the masked runs use (None: every group at the consumer).
        mask: ``ablation``: a graph input whose zeros drop padded rows from the output cosine.
        progress: ``ablation``: a progress bar over the masked runs.
        ridge: ``obs``: the relative ridge of the least-squares refit it ranks for.
        centered: ``obs``: sites with a bias use the centered Gram (the refit fits an intercept).

    Raises:
        InputError: an unknown method; ``ablation`` with calibration data that has no batch.
    """
    if method not in METHODS:
        raise InputError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "obs":
        from graphopt.passes.pruning.obs import obs_scores
        from graphopt.passes.pruning.sensitivity import consumer_scores

        for plan in plans:
            scores = obs_scores(plan, sites, stats, ridge=ridge, centered=centered)
            if scores is None:
                scores = consumer_scores(plan, sites, stats)
            plan.scores = scores if scores is not None else _magnitude(plan, model)
        return
    if method in ("sensitivity", "ablation"):
        from graphopt.passes.pruning.sensitivity import sensitivity_scores

        measured = sensitivity_scores(plans, sites, stats, model, calibration, model_output=method == "ablation",
                                      mask=mask, progress=progress)
        for plan in plans:
            plan.scores = measured[plan.name][0] if plan.name in measured else _magnitude(plan, model)
        return
    for plan in plans:
        scores = None
        if method != "magnitude":
            for node, idx in plan.rows.items():
                site = sites[node]
                st = stats.get(site.data)
                if st is None or st.channels != site.channels:
                    continue
                flat = idx.reshape(-1)
                rows = weight_rows(site.array, site.in_axis)[flat]
                if method == "wanda":
                    s = wanda_scores(rows, st.sq_sum[flat], unit=idx.shape[1])
                else:
                    s = fluctuation_scores(rows, st.var[flat], unit=idx.shape[1])
                scores = s if scores is None else scores + s
        plan.scores = scores if scores is not None else _magnitude(plan, model)

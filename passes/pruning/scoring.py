"""Importance of each unit of each planned group (higher = keep).

Methods (:data:`METHODS`), all from :mod:`graphopt.calibrate.importance`:

- ``magnitude``: the L2 group norm of every weight that goes with the unit
  (producer columns and consumer rows; Torch-Pruning / DepGraph's baseline);
- ``wanda``: Wanda-sp (Sun et al. 2023): ``sum ||X_j||_2 * ||W_j,:||_1`` over
  the unit's consumer rows, with ``X`` the consumer's input on the
  calibration data;
- ``flap``: FLAP's fluctuation (An et al. 2024): ``var(X_j) * ||W_j,:||_2^2``
  summed over the unit's consumer rows.

A group whose consumers read no statistics (its consumer is not a
MatMul/Gemm/Conv with a constant weight) falls back to ``magnitude``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphopt import ir
from graphopt.calibrate.importance import fluctuation_scores, magnitude_scores, wanda_scores
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import GroupPlan, Site, weight_rows

__all__ = ["METHODS", "score_groups"]

METHODS = ("magnitude", "wanda", "flap")
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
                 model: ir.Model) -> None:
    """Fill ``plan.scores`` (``[size]`` float64) of every plan.

    Args:
        plans: from :func:`~graphopt.passes.pruning.plan.build_plan`.
        sites: consumer sites by node name.
        stats: ``{data value: ChannelStats}`` of the sites' inputs (may be empty for ``magnitude``).
        method: one of :data:`METHODS`.
        model: the model the plans were made on (weights read).

    Raises:
        InputError: an unknown method.
    """
    if method not in METHODS:
        raise InputError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
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

"""How many units each group keeps for a target FLOP ratio.

The *block FLOPs* are the MatMul/Conv FLOPs the planned groups can remove
(``sum_g size_g * unit_flops_g``, :mod:`.plan`); ``ratio`` is the share of
them kept. Allocations (:data:`ALLOCATIONS`):

- ``uniform``: every group keeps ``ratio`` of its units, rounded to its step;
- ``global``: FLAP's adaptive structure (An et al. 2024): scores
  standardized per group (:func:`graphopt.calibrate.importance.standardize`),
  one ranking over all units, units kept in that order while their FLOPs fit
  the budget, then each group's count rounded to its step;
- ``error``: trades heads against neurons by measured output error: each
  group has an error curve (the consumer's output error from the Gram
  statistics at a ladder of kept counts, after the chosen reconstruction,
  :func:`~graphopt.passes.pruning.refit.error_curve`); starting from the full
  model, the step that adds the least error per FLOP saved is taken until the
  budget holds (a greedy walk on the curves, as a knapsack's convex relaxation);
- ``relative``: the same walk on each curve divided by its consumers' output energy (``tr(W^T G W)``, the
  error relative to what the consumers compute). Absolute errors compare where every consumer writes into one
  residual stream of one scale (a Transformer's attention output and FFN down projections: ``error`` is the
  better walk there); in a CNN each consumer writes a feature map of its own scale (batch normalization,
  1/32-resolution stages, squeeze-and-excitation logits), and absolute errors mislead the walk: on PaddleOCR
  det it cut the last backbone stage to 8 of 384 channels and the detector broke (box F1 0.10 at 0.6), where
  ``relative`` keeps F1 0.99 with fewer FLOPs (``tools/benchmarks/pruning.md``);
- ``output``: the same walk on the error curves scaled per group by its gain from consumer error to the
  model output's change, measured once with masked cuts (:mod:`~graphopt.passes.pruning.gains`), so that
  groups whose consumers feed the output with different gains compare in one unit.

Kept counts are multiples of the group's step (``align`` neurons or channels,
whole heads) or the whole group, and at least one step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from graphopt.calibrate.importance import standardize
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import GroupPlan

__all__ = ["ALLOCATIONS", "CURVED", "round_keep", "ladder", "allocate", "keep_sets", "kept_ratio"]

ALLOCATIONS = ("uniform", "global", "error", "relative", "output")
"""Allocation strategies by name."""

CURVED = ("error", "relative", "output")
"""The allocations that walk the groups' error curves (they need calibration data with Gram statistics)."""


def round_keep(count: float, step: int, size: int) -> int:
    """The kept count nearest ``count`` among the multiples of ``step`` in ``[step, size]`` and ``size`` itself
    (ties go up; a group smaller than one step keeps everything)."""
    if size <= step:
        return size
    options = list(range(step, size + 1, step))
    if options[-1] != size:
        options.append(size)
    return min(options, key=lambda k: (abs(k - count), -k))


def ladder(size: int, step: int, levels: int) -> list[int]:
    """At most ``levels`` + 1 kept counts from ``size`` down to ``step``: multiples of ``step`` evenly spaced
    (descending, ``size`` first)."""
    if size <= step:
        return [size]
    options = list(range(step, size + 1, step))
    if options[-1] != size:
        options.append(size)
    options = options[::-1]
    if len(options) > levels + 1:
        picks = np.unique(np.round(np.linspace(0, len(options) - 1, levels + 1)).astype(int))
        options = [options[i] for i in picks]
    return options


def kept_ratio(plans: Sequence[GroupPlan], counts: Mapping[str, int]) -> float:
    """Kept block FLOPs / block FLOPs for ``counts`` (groups not named keep all)."""
    total = sum(p.size * p.unit_flops for p in plans)
    kept = sum(counts.get(p.name, p.size) * p.unit_flops for p in plans)
    return kept / total if total else 1.0


def _uniform(plans: Sequence[GroupPlan], ratio: float) -> dict[str, int]:
    return {p.name: round_keep(ratio * p.size, p.step, p.size) for p in plans}


def _global(plans: Sequence[GroupPlan], ratio: float) -> dict[str, int]:
    std = standardize({p.name: p.scores for p in plans})
    entries = sorted(((float(s), p.unit_flops, p.name) for p in plans for s in std[p.name]), key=lambda e: -e[0])
    budget = ratio * sum(p.size * p.unit_flops for p in plans)
    chosen = {p.name: 0 for p in plans}
    used = 0.0
    for _, cost, name in entries:
        if used + cost <= budget + 1e-9:
            chosen[name] += 1
            used += cost
    return {p.name: round_keep(chosen[p.name], p.step, p.size) for p in plans}


def _by_error(plans: Sequence[GroupPlan], ratio: float, curves: Mapping[str, tuple[list[int], list[float]]]
              ) -> dict[str, int]:
    budget = ratio * sum(p.size * p.unit_flops for p in plans)
    at = {p.name: 0 for p in plans}
    by_name = {p.name: p for p in plans}
    used = sum(p.size * p.unit_flops for p in plans)
    while used > budget + 1e-9:
        best = None
        for name, (counts, errors) in curves.items():
            i = at[name]
            if i + 1 >= len(counts):
                continue
            saved = (counts[i] - counts[i + 1]) * by_name[name].unit_flops
            cost = (errors[i + 1] - errors[i]) / saved if saved > 0 else np.inf
            if best is None or cost < best[0]:
                best = (cost, name, saved)
        if best is None:
            break
        at[best[1]] += 1
        used -= best[2]
    return {name: curves[name][0][i] if name in curves else by_name[name].size for name, i in at.items()}


def allocate(plans: Sequence[GroupPlan], ratio: float, allocation: str,
             curves: Callable[[], Mapping[str, tuple[list[int], list[float]]]] | None = None) -> dict[str, int]:
    """Kept units per group.

    Args:
        plans: scored :class:`GroupPlan` (``scores`` set for ``global``).
        ratio: block FLOPs to keep, in ``(0, 1]``.
        allocation: one of :data:`ALLOCATIONS`.
        curves: for the :data:`CURVED` allocations: returns ``{group: (kept counts descending, output error at
            each)}`` (already relative or scaled by gains where the allocation says so).

    Returns:
        ``{group name: kept count}``.

    Raises:
        InputError: an unknown allocation, a ratio outside ``(0, 1]``, ``error`` without curves.
    """
    if allocation not in ALLOCATIONS:
        raise InputError(f"unknown allocation {allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
    if not 0 < ratio <= 1:
        raise InputError(f"the kept FLOP ratio must be in (0, 1], got {ratio}")
    if allocation == "uniform":
        return _uniform(plans, ratio)
    if allocation == "global":
        return _global(plans, ratio)
    if curves is None:
        raise InputError(f"allocation {allocation!r} needs the groups' error curves (calibration data with Gram "
                         "statistics)")
    return _by_error(plans, ratio, curves())


def keep_sets(plans: Sequence[GroupPlan], counts: Mapping[str, int]) -> dict[str, list[int]]:
    """``{group: sorted indices of its top-``count`` units by score}`` for groups that lose units."""
    out = {}
    for p in plans:
        k = counts.get(p.name, p.size)
        if k >= p.size:
            continue
        order = np.argsort(-np.asarray(p.scores, dtype=np.float64), kind="stable")
        out[p.name] = sorted(int(i) for i in order[:k])
    return out

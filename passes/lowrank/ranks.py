"""Rank selection: which rank each layer keeps.

Every layer has *candidate ranks*: multiples of ``align`` whose factored
parameters ``r (K + N)`` stay at most ``max_param_ratio * K N`` and that the
speed guard measured faster than the unfactored product (the largest such
rank bounds the list). A layer with no candidate stays whole. Then:

- ``rank``: one fixed rank (rounded up to ``align``) for every layer that allows it.
- ``energy``: per layer, the smallest candidate keeping ``1 - tail >= energy``
  of its spectrum's energy (with ``svd-llm`` the tail *is* the relative
  output error on the calibration data, so this is an output-error threshold).
- ``params``: a global budget, total parameters of the factorizable layers
  ``<= params * sum K N``, allocated greedily: starting from every layer
  whole, the step (a layer from whole to its largest candidate, or one
  candidate down) with the least relative error added per parameter saved is
  taken until the budget holds (SVD-LLM's observation: with whitening the
  dropped singular values are the output error, so spectra of different
  layers compare directly).
- ``flops``: the same greedy with each layer's parameters weighted by its
  token count ``M`` (``costs``): the FLOPs ``2 M r (K + N)`` of the
  factorizable layers ``<= flops * sum 2 M K N``, error added per FLOP saved.
  When every layer sees the same tokens it allocates exactly as ``params``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from graphopt.errors import InputError

__all__ = ["candidates", "fixed_ranks", "energy_ranks", "budget_ranks"]


def candidates(k: int, n: int, align: int, max_param_ratio: float) -> list[int]:
    """Ranks ``align, 2 align, ...`` (ascending) with ``r (k + n) <= max_param_ratio * k * n`` and ``r <= min(k, n)``."""
    if align < 1:
        raise InputError(f"align must be a positive integer, got {align}")
    top = min(k, n, int(max_param_ratio * k * n // (k + n)))
    return list(range(align, top + 1, align))


def _round_up(rank: int, allowed: Sequence[int]) -> int:
    for r in allowed:
        if r >= rank:
            return r
    return 0


def fixed_ranks(allowed: Sequence[Sequence[int]], rank: int) -> list[int]:
    """``rank`` rounded up to each layer's next candidate (0: the layer stays whole)."""
    return [_round_up(rank, a) for a in allowed]


def energy_ranks(allowed: Sequence[Sequence[int]], tails: Sequence[Callable[[int], float]], energy: float) -> list[int]:
    """Per layer the smallest candidate ``r`` with ``tail(r) <= 1 - energy`` (0: none does, the layer stays whole)."""
    if not 0 < energy <= 1:
        raise InputError(f"energy must be in (0, 1], got {energy}")
    out = []
    for allow, tail in zip(allowed, tails):
        out.append(next((r for r in allow if tail(r) <= 1.0 - energy), 0))
    return out


def budget_ranks(allowed: Sequence[Sequence[int]], tails: Sequence[Callable[[int], float]],
                 shapes: Sequence[tuple[int, int]], ratio: float,
                 costs: Sequence[float] | None = None) -> list[int]:
    """Greedy global allocation of a parameter (or, with ``costs``, FLOPs) budget.

    Args:
        allowed: per layer, its candidate ranks (ascending).
        tails: per layer, ``tail(r)``: the relative error truncation to ``r`` adds.
        shapes: per layer ``(K, N)``.
        ratio: target parameters / the layers' original parameters, in (0, 1]; with ``costs``, the same
            ratio of the cost-weighted parameters.
        costs: per layer, the weight of one parameter (its tokens ``M`` for a FLOPs budget); None: all 1.

    Returns:
        Per layer the kept rank (0: whole). When every layer is at its smallest
        candidate before the budget holds, that is what is returned (the caller
        reports the ratio reached).
    """
    if not 0 < ratio <= 1:
        raise InputError(f"the parameter ratio must be in (0, 1], got {ratio}")
    weight = [1.0] * len(shapes) if costs is None else [float(c) for c in costs]
    if len(weight) != len(shapes) or any(c <= 0 for c in weight):
        raise InputError("budget costs must be one positive number per layer")
    total = sum(c * k * n for c, (k, n) in zip(weight, shapes))
    target = ratio * total
    state = [-1] * len(allowed)  # -1: whole; else an index into allowed[i] (descending moves)
    heap: list[tuple[float, int]] = []

    def params(i: int, idx: int) -> float:
        k, n = shapes[i]
        return weight[i] * (k * n if idx < 0 else allowed[i][idx] * (k + n))

    def push(i: int) -> None:
        idx = state[i]
        nxt = len(allowed[i]) - 1 if idx < 0 else idx - 1
        if nxt < 0:
            return
        saved = params(i, idx) - params(i, nxt)
        before = 0.0 if idx < 0 else tails[i](allowed[i][idx])
        added = tails[i](allowed[i][nxt]) - before
        heapq.heappush(heap, (max(added, 0.0) / max(saved, 1e-12), i))

    for i in range(len(allowed)):
        push(i)
    while total > target and heap:
        _, i = heapq.heappop(heap)
        idx = state[i]
        nxt = len(allowed[i]) - 1 if idx < 0 else idx - 1
        total -= params(i, idx) - params(i, nxt)
        state[i] = nxt
        push(i)
    return [0 if s < 0 else allowed[i][s] for i, s in enumerate(state)]

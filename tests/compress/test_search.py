"""The compress search against brute-force enumeration, with injected latency and quality functions."""

from __future__ import annotations

import itertools
import math

import pytest

from graphopt.compress.search import Knob, Measure, best, pareto, search

KNOBS = (Knob("prune", (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)), Knob("lowrank", (1.0, 0.9, 0.8, 0.7)),
         Knob("int8", (False, True)))

# Per-level latency factors and quality losses, shaped like the MiniLM measurements: INT8 is the cheapest step,
# pruning's loss grows faster than linearly, low-rank barely speeds up its first level.
PRUNE_SPEED = (1.0, 0.91, 0.83, 0.74, 0.66, 0.57)
PRUNE_LOSS = (0.0, 0.004, 0.012, 0.03, 0.07, 0.12)
LOWRANK_SPEED = (1.0, 1.01, 0.9, 0.8)
LOWRANK_LOSS = (0.0, 0.02, 0.06, 0.11)
INT8_SPEED = (1.0, 0.37)
INT8_LOSS = (0.0, 0.008)


def model(point: tuple[int, ...]) -> Measure:
    p, lr, q = point
    latency = PRUNE_SPEED[p] * LOWRANK_SPEED[lr] * INT8_SPEED[q]
    quality = 1.0 - PRUNE_LOSS[p] - LOWRANK_LOSS[lr] - INT8_LOSS[q]
    return Measure(latency, quality)


GRID = list(itertools.product(*(range(len(k.levels)) for k in KNOBS)))


def brute(threshold: float | None = None, speedup: float | None = None) -> tuple[int, ...] | None:
    measures = [model(p) for p in GRID]
    i = best(measures, threshold=threshold, speedup=speedup)
    return None if i is None else GRID[i]


@pytest.mark.parametrize("threshold", [0.999, 0.995, 0.99, 0.985, 0.98, 0.97, 0.95, 0.92, 0.9, 0.85, 0.8])
def test_budget_search_picks_the_brute_force_point(threshold: float) -> None:
    calls = []

    def evaluate(p: tuple[int, ...]) -> Measure:
        calls.append(p)
        return model(p)

    result = search(KNOBS, evaluate, threshold=threshold)
    chosen = result.points[result.chosen][0] if result.chosen is not None else None
    assert chosen == brute(threshold=threshold)
    assert len(calls) == len(set(calls)) < len(GRID)  # each point once, fewer than the grid


def test_budget_points_are_exact() -> None:
    result = search(KNOBS, model, threshold=0.97)
    chosen, m = result.points[result.chosen]
    assert chosen == (2, 0, 1)  # prune 0.8 + int8
    assert m == Measure(0.83 * 0.37, 1.0 - 0.012 - 0.008)
    assert result.levels(result.chosen) == {"prune": 0.8, "lowrank": 1.0, "int8": True}
    assert result.stopped == "no step keeps the budget"


@pytest.mark.parametrize("speedup", [1.5, 2.0, 2.7, 3.0, 3.5, 4.0, 5.0])
def test_speedup_search_picks_the_brute_force_point(speedup: float) -> None:
    result = search(KNOBS, model, speedup=speedup)
    chosen = result.points[result.chosen][0] if result.chosen is not None else None
    assert chosen == brute(speedup=speedup)


def test_unreachable_goals_choose_nothing() -> None:
    assert search(KNOBS, model, threshold=1.5).chosen is None
    result = search(KNOBS, model, speedup=100.0)
    assert result.chosen is None
    assert len(result.points) > 1  # it walked before giving up


def test_time_limit_stops_before_a_measurement_would_end_past_it() -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    def slow(p: tuple[int, ...]) -> Measure:
        now[0] += 10.0
        return model(p)

    result = search(KNOBS, slow, threshold=0.9, time_limit=35.0, clock=clock)
    assert len(result.points) == 3  # 0-10, 10-20, 20-30; a fourth would end at 40 > 35
    assert result.stopped == "time limit (35 s)"
    assert now[0] == 30.0
    assert result.chosen is not None and result.points[result.chosen][1].quality >= 0.9


def test_failed_candidates_are_never_chosen() -> None:
    def flaky(p: tuple[int, ...]) -> Measure:
        if p[1] > 0:
            return Measure(math.inf, -math.inf, "factorize: nothing to factorize")
        return model(p)

    result = search(KNOBS, flaky, threshold=0.9)
    chosen = result.points[result.chosen][0]
    assert chosen[1] == 0
    assert chosen == min((p for p in GRID if p[1] == 0 and model(p).quality >= 0.9), key=lambda p: model(p).latency)
    assert all(not result.points[i][1].error for i in result.frontier)


def test_pareto_and_best() -> None:
    ms = [Measure(1.0, 1.0), Measure(0.5, 0.9), Measure(0.6, 0.8), Measure(0.5, 0.95), Measure(0.2, 0.5),
          Measure(0.1, 0.1, "broken")]
    assert pareto(ms) == [4, 3, 0]
    assert best(ms, threshold=0.9) == 3
    assert best(ms, speedup=2.0) == 3
    assert best(ms, speedup=4.0) == 4
    assert best(ms, threshold=0.99) == 0
    with pytest.raises(ValueError, match="exactly one"):
        search(KNOBS, model)
    with pytest.raises(ValueError, match="exactly one"):
        search(KNOBS, model, threshold=0.9, speedup=2.0)

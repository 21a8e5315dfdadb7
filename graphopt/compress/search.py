"""The search of ``graphopt compress``: a greedy walk over the techniques' levels along the latency-gain /
quality-loss ratio of each next step, then a local refinement, keeping every measured point and the Pareto
frontier, within a time limit.

The space is a few knobs (:class:`Knob`), each a ladder of levels from "off" (index 0) to the strongest (e.g.
pruning's kept block-FLOP ratios 1.0, 0.9, ..., 0.5; INT8 off/on); a point is one level index per knob. The
caller's ``evaluate(point)`` builds and measures the candidate: its latency as a ratio to the original (lower
is faster) and its quality (higher is better). Each technique's own measures (pruning's per-group output-error
curves, low-rank spectra, INT8 per-layer sensitivity) decide how a level is spent inside the model; the walk only
decides how much of each technique, so it measures tens of candidates where a grid would measure every
combination. The walk is the greedy of the multiple-choice knapsack (take the step with the best gain per unit
of loss), as Intel Neural Compressor's and HAQ-style searches do for one technique, here across techniques.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Knob", "Measure", "SearchResult", "pareto", "search", "best"]

Point = tuple[int, ...]


@dataclass(frozen=True)
class Knob:
    """One technique's ladder: ``levels[0]`` is "off", later levels are stronger (faster, less accurate).
    ``searched``: how many levels the walk moves over (0: all); later ones are variants the caller measures
    itself (e.g. INT8 with float fallbacks, too costly to measure at every step)."""

    name: str
    levels: tuple[Any, ...]
    searched: int = 0

    @property
    def size(self) -> int:
        """The number of levels the walk moves over."""
        return self.searched or len(self.levels)


@dataclass(frozen=True)
class Measure:
    """A measured candidate: ``latency`` as a ratio to the original (lower is faster), ``quality`` (higher is
    better); ``error`` when the candidate could not be built or measured (then it is never chosen)."""

    latency: float
    quality: float
    error: str = ""


@dataclass
class SearchResult:
    """Every point measured, in order, with its measure; ``chosen`` (index into ``points``) or None when no point
    meets the goal; ``frontier`` (indices, by latency); ``stopped``: why the walk ended."""

    knobs: tuple[Knob, ...]
    points: list[tuple[Point, Measure]] = field(default_factory=list)
    chosen: int | None = None
    frontier: list[int] = field(default_factory=list)
    stopped: str = ""

    def levels(self, i: int) -> dict[str, Any]:
        """``{knob name: level value}`` of point ``i``."""
        return {k.name: k.levels[j] for k, j in zip(self.knobs, self.points[i][0])}


def pareto(measures: Sequence[Measure]) -> list[int]:
    """Indices of the measures no other one dominates (at most as slow and at least as accurate, one of the two
    strictly), sorted by latency; failed measures are left out."""
    ok = [i for i, m in enumerate(measures) if not m.error]
    keep = []
    for i in ok:
        a = measures[i]
        if not any(measures[j].latency <= a.latency and measures[j].quality >= a.quality
                   and (measures[j].latency < a.latency or measures[j].quality > a.quality) for j in ok):
            keep.append(i)
    return sorted(keep, key=lambda i: (measures[i].latency, -measures[i].quality))


def best(measures: Sequence[Measure], *, threshold: float | None = None, speedup: float | None = None) -> int | None:
    """The index of the goal's best measure: with ``threshold``, the fastest whose quality is at least it (ties:
    the more accurate); with ``speedup``, the most accurate whose latency ratio is at most ``1 / speedup`` (ties:
    the faster). None when none qualifies."""
    ok = [i for i, m in enumerate(measures) if not m.error]
    if threshold is not None:
        fits = [i for i in ok if measures[i].quality >= threshold]
        return min(fits, key=lambda i: (measures[i].latency, -measures[i].quality), default=None)
    if speedup is None:
        raise ValueError("best() needs a threshold or a speedup")
    fits = [i for i in ok if measures[i].latency <= 1.0 / speedup]
    return min(fits, key=lambda i: (-measures[i].quality, measures[i].latency), default=None)


def search(knobs: Sequence[Knob], evaluate: Callable[[Point], Measure], *, threshold: float | None = None,
           speedup: float | None = None, time_limit: float | None = None, lookahead: int = 2,
           clock: Callable[[], float] = time.monotonic, on_point: Callable[[Point, Measure], None] | None = None
           ) -> SearchResult:
    """Search ``knobs`` for the fastest point whose quality is at least ``threshold`` (budget mode) or the most
    accurate point at least ``speedup`` times faster than the original (speedup mode).

    The walk starts at the all-off point. Each round proposes, for each knob, its next level (up to
    ``lookahead`` levels on when the next one is not faster, e.g. a rank that the runtime does not run faster),
    and takes the proposal with the largest latency gain per quality lost; in budget mode only proposals that keep
    the budget are taken, in speedup mode the walk ends once the speedup is reached. Then, from the goal's best
    point, single-knob neighbours (one level up or down) are measured while one improves the goal. Points are
    measured once each (memoized).

    Args:
        knobs: the techniques' ladders.
        evaluate: ``evaluate(point) -> Measure``; exceptions it raises are not caught (a failed candidate should be
            a :class:`Measure` with ``error``).
        threshold: the quality the chosen point must keep (budget mode).
        speedup: the speedup over the original the chosen point must reach (speedup mode).
        time_limit: seconds for the whole search: a measurement is not started when the longest one so far would
            end past it (the all-off point is always measured); the result holds what was measured.
        lookahead: levels a knob may skip past ones that are not faster.
        clock: the time source (tests inject one).
        on_point: called after each new measurement (progress bars).

    Returns:
        :class:`SearchResult`.

    Raises:
        ValueError: neither or both of ``threshold`` and ``speedup``, or a speedup <= 0.
    """
    if (threshold is None) == (speedup is None):
        raise ValueError("search() needs exactly one of threshold and speedup")
    if speedup is not None and not speedup > 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    start = clock()
    result = SearchResult(tuple(knobs))
    seen: dict[Point, int] = {}

    class _Timeout(Exception):
        pass

    longest = [0.0]  # the longest measurement so far: one that would end past the limit is not started

    def measure(p: Point) -> Measure:
        if p in seen:
            return result.points[seen[p]][1]
        began = clock()
        if time_limit is not None and result.points and began - start + longest[0] > time_limit:
            raise _Timeout
        m = evaluate(p)
        longest[0] = max(longest[0], clock() - began)
        seen[p] = len(result.points)
        result.points.append((p, m))
        if on_point is not None:
            on_point(p, m)
        if time_limit is not None and clock() - start > time_limit:  # e.g. a candidate the deadline stopped
            raise _Timeout
        return m

    def fits(m: Measure) -> bool:
        return not m.error and (threshold is None or m.quality >= threshold)

    def goal_best() -> int | None:
        return best([m for _, m in result.points], threshold=threshold, speedup=speedup)

    try:
        current = tuple(0 for _ in knobs)
        here = measure(current)
        result.stopped = "no further step"
        while True:
            if speedup is not None and not here.error and here.latency <= 1.0 / speedup:
                result.stopped = f"reached {speedup:g}x"
                break
            proposals = []
            for k, knob in enumerate(knobs):
                for step in range(1, lookahead + 1):
                    level = current[k] + step
                    if level >= knob.size:
                        break
                    p = current[:k] + (level,) + current[k + 1:]
                    m = measure(p)
                    if m.error:
                        break
                    if m.latency < here.latency:
                        proposals.append((p, m))
                        break
            proposals = [(p, m) for p, m in proposals if fits(m)]
            if not proposals:
                result.stopped = "no step keeps the budget" if threshold is not None else "no step is faster"
                break

            def value(pm: tuple[Point, Measure]) -> float:
                gain = here.latency - pm[1].latency
                loss = max(here.quality - pm[1].quality, 1e-6)
                return gain / loss

            current, here = max(proposals, key=value)
        # local refinement around the goal's best point
        improved = True
        while improved:
            improved = False
            b = goal_best()
            if b is None:
                break
            centre = result.points[b][0]
            for k, knob in enumerate(knobs):
                for d in (-1, 1):
                    level = centre[k] + d
                    if 0 <= level < knob.size and centre[k] < knob.size:
                        measure(centre[:k] + (level,) + centre[k + 1:])
            improved = goal_best() != b
    except _Timeout:
        result.stopped = f"time limit ({time_limit:g} s)"
    measures = [m for _, m in result.points]
    result.frontier = pareto(measures)
    result.chosen = goal_best()
    if result.chosen is not None and math.isnan(measures[result.chosen].quality):
        result.chosen = None
    return result

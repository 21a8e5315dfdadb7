"""Latency ratios of many candidate models against one original, with the original's session kept warm.

A search (``graphopt compress``) measures tens of candidates one after the other; each is timed against the
same warm original session in interleaved rounds (:func:`graphopt.bench.runner.interleave`, the method of
``shared/BENCH.md``), so its ratio is measured under the machine's load of that moment, not compared with a
figure taken minutes earlier.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.bench.runner import interleave, make_bench_session
from graphopt.errors import InputError

__all__ = ["LatencyProbe", "ProbeTiming"]


@dataclass(frozen=True)
class ProbeTiming:
    """One candidate against the original.

    Attributes:
        ratio: candidate median / original median over the same interleaved rounds (below 1: faster).
        median_ms: the candidate's median latency (milliseconds).
        original_ms: the original's median over the same rounds (milliseconds).
        runs: timed rounds.
        load: the 1-minute load average when the rounds ended.
    """

    ratio: float
    median_ms: float
    original_ms: float
    runs: int
    load: float


class LatencyProbe:
    """Times candidate models against a warm ``original`` session on fixed ``inputs``.

    Args:
        original: the reference .onnx path.
        inputs: input arrays by name (every model's inputs must be among them; extra names are ignored).
        provider: onnxruntime execution provider (default CPU).
        threads: intra-op threads per session (default 2).
        opt_level: onnxruntime graph optimization level (default ``all``).
        seconds: timed seconds per candidate (rounds stop after them once ``min_runs`` are done).
        min_runs, warmup: timed rounds at least, untimed runs per new session.

    Raises:
        InputError / LoadError: as :func:`graphopt.bench.runner.make_bench_session`, or inputs that miss a
            model input.
    """

    def __init__(self, original: str | Path, inputs: dict[str, np.ndarray], *, provider: str = "CPUExecutionProvider",
                 threads: int = 2, opt_level: str = "all", seconds: float = 2.0, min_runs: int = 10,
                 warmup: int = 3) -> None:
        self.inputs = inputs
        self.provider, self.threads, self.opt_level = provider, threads, opt_level
        self.seconds, self.min_runs, self.warmup = seconds, min_runs, warmup
        self._original, self._feed = self._session(original)

    def _session(self, path: str | Path) -> tuple[Any, dict[str, np.ndarray]]:
        session = make_bench_session(path, self.provider, self.threads, self.opt_level)
        names = [i.name for i in session.get_inputs()]
        missing = [n for n in names if n not in self.inputs]
        if missing:
            raise InputError(f"the latency inputs lack {', '.join(missing)} of '{path}'")
        feed = {n: self.inputs[n] for n in names}
        for _ in range(max(self.warmup, 1)):
            session.run(None, feed)
        return session, feed

    def measure(self, candidate: str | Path, seconds: float | None = None) -> ProbeTiming:
        """Time ``candidate`` interleaved with the warm original for ``seconds`` (default the probe's).

        Raises:
            InputError / LoadError: the candidate cannot be loaded or lacks inputs.
        """
        session, feed = self._session(candidate)
        try:
            original, mine = interleave([self._original, session], [self._feed, feed], min_runs=self.min_runs,
                                        max_runs=100000, seconds=self.seconds if seconds is None else seconds)
        finally:
            del session
        base, med = statistics.median(original), statistics.median(mine)
        return ProbeTiming(med / base, med, base, len(mine), os.getloadavg()[0])

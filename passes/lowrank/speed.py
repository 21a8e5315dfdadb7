"""The speed guard: is ``x A B`` faster than ``x W`` on this machine?

A small onnxruntime micro-benchmark of ``MatMul [M, K] x [K, N]`` against
``MatMul [M, K] x [K, r]`` then ``[M, r] x [r, N]`` (constant weights, random
float32 data, ``ORT_ENABLE_ALL``, spinning off, the given thread count),
interleaved run by run as ``graphopt.bench`` does (shared/BENCH.md). The median of the per-round ratios ``t(two) / t(one)`` is cached per shape
and rank in a JSON file (default ``~/.cache/graphopt/lowrank_speed.json``,
keyed by onnxruntime version, threads, M, K, N, r) so each decision is
measured once per machine, never guessed from FLOPs.

Tests inject a :data:`Timing` instead (``ratio = timing(m, k, n, r)``).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["Timing", "SpeedGuard", "DEFAULT_CACHE", "measure_ratio"]

log = logging.getLogger(__name__)

Timing = Callable[[int, int, int, int], float]
"""``timing(m, k, n, r) -> t(x A B) / t(x W)`` for ``x [m, k]``, ``W [k, n]``, ``A [k, r]``, ``B [r, n]``."""

DEFAULT_CACHE = Path(os.environ.get("GRAPHOPT_LOWRANK_SPEED", Path.home() / ".cache" / "graphopt" / "lowrank_speed.json"))
"""The on-disk cache of measured ratios (``GRAPHOPT_LOWRANK_SPEED`` overrides it)."""


def _model(m: int, k: int, n: int, ranks: Sequence[int]):  # noqa: ANN202 - onnx.ModelProto
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    dims = [k, *ranks, n]
    for i in range(len(dims) - 1):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "speed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _session(proto, threads: int):  # noqa: ANN001, ANN202
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure_ratio(m: int, k: int, n: int, r: int, *, threads: int = 2, seconds: float = 0.6, min_runs: int = 30) -> float:
    """Measure ``t(x A B) / t(x W)`` (medians, interleaved runs) in onnxruntime.

    Args:
        m, k, n, r: ``x [m, k]``, ``W [k, n]``, rank ``r``.
        threads: intra-op threads of both sessions.
        seconds: timed rounds last at least this long (after ``min_runs`` rounds).

    Returns:
        The latency ratio (< 1: the factored form is faster).
    """
    one = _session(_model(m, k, n, []), threads)
    two = _session(_model(m, k, n, [r]), threads)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    for s in (one, two):
        for _ in range(5):
            s.run(None, {"x": x})
    ratios: list[float] = []
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < min_runs or time.perf_counter() < deadline:
        pair = [0.0, 0.0]
        for i, s in ((0, one), (1, two)) if rounds % 2 == 0 else ((1, two), (0, one)):
            t0 = time.perf_counter()
            s.run(None, {"x": x})
            pair[i] = time.perf_counter() - t0
        ratios.append(pair[1] / pair[0])
        rounds += 1
        if rounds >= 2000:
            break
    # The median of per-round ratios: a run slowed by another process on the machine slows one round, and the
    # neighbouring runs of both forms share the machine's state (drift cancels).
    return statistics.median(ratios)


class SpeedGuard:
    """Measured speed decisions with an on-disk cache.

    Args:
        tokens: ``M``, the rows of the products (batch x sequence, or pixels of a Conv).
        timing: an injected :data:`Timing` (tests); None measures with :func:`measure_ratio`.
        cache: the JSON cache file; None: :data:`DEFAULT_CACHE`. Not read or written with an injected timing.
        threads: onnxruntime intra-op threads of the measurement.
        max_ratio: a factored layer must measure below this ratio (1.0: any speed-up).
    """

    def __init__(self, tokens: int = 128, timing: Timing | None = None, cache: str | Path | None = None,
                 threads: int = 2, max_ratio: float = 1.0) -> None:
        self.tokens, self.timing, self.threads, self.max_ratio = int(tokens), timing, int(threads), float(max_ratio)
        self.path = Path(cache) if cache else DEFAULT_CACHE
        self._cache: dict[str, float] | None = None
        self.measured = 0

    def _key(self, m: int, k: int, n: int, r: int) -> str:
        import onnxruntime as ort

        return f"ort{ort.__version__}/t{self.threads}/{m}x{k}x{n}/r{r}"

    def _load(self) -> dict[str, float]:
        if self._cache is None:
            try:
                self._cache = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self._cache = {}
        return self._cache

    def _save(self) -> None:
        # Merge with what is on disk now: another guard (in this process or another) may have added entries since
        # this one read the file, and writing this guard's snapshot alone would drop them, so that they are
        # measured again (with a different reading) later.
        try:
            on_disk = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            on_disk = {}
        merged = {**on_disk, **self._load()}
        self._cache = merged
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as f:
                json.dump(dict(sorted(merged.items())), f, indent=0)
            os.replace(f.name, self.path)
        except OSError as e:  # a read-only cache costs re-measuring, nothing else
            log.warning("lowrank speed cache %s not written: %s", self.path, e)

    def ratio(self, k: int, n: int, r: int, m: int | None = None) -> float:
        """``t(x A B) / t(x W)`` for ``x [M, k]``, ``W [k, n]`` and rank ``r`` (measured or cached); ``M`` is
        ``m`` (a layer's own rows, where its input shape says them) or the guard's ``tokens``."""
        rows = int(m) if m else self.tokens
        if self.timing is not None:
            return float(self.timing(rows, k, n, r))
        cache = self._load()
        key = self._key(rows, k, n, r)
        if key not in cache:
            cache[key] = round(measure_ratio(rows, k, n, r, threads=self.threads), 4)
            self.measured += 1
            self._save()
        return cache[key]

    def faster(self, k: int, n: int, r: int, m: int | None = None) -> bool:
        """True when rank ``r`` measures below ``max_ratio`` (at ``m`` rows, see :meth:`ratio`)."""
        return self.ratio(k, n, r, m) < self.max_ratio

    def largest_fast_rank(self, k: int, n: int, candidates: Sequence[int], m: int | None = None) -> int:
        """The largest of ``candidates`` (ascending) the guard calls faster, by bisection
        (the cost of ``x A B`` grows with ``r``); 0 when none is."""
        lo, hi, best = 0, len(candidates) - 1, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.faster(k, n, candidates[mid], m):
                best, lo = candidates[mid], mid + 1
            else:
                hi = mid - 1
        return best

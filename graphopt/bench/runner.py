"""Interleaved latency measurement of ONNX models in onnxruntime.

Method (``shared/BENCH.md``): every model runs on the same inputs; after a
warm-up, runs are interleaved round by round (the order rotated each round)
so drift of the machine hits all models alike; thread-pool spinning is off so
idle sessions do not steal cores; medians and 90th percentiles are reported
with the ratio of each model's median to the first model's. The load average
before and after is recorded so a busy machine is visible in the report.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from graphopt.errors import InputError, LoadError
from graphopt.ir import load_proto
from graphopt.verify import check_inputs, compare_outputs, generate_inputs

__all__ = ["ModelTiming", "BenchReport", "benchmark", "interleave", "OPT_LEVELS", "make_bench_session"]

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass
class ModelTiming:
    """Latency of one model.

    Attributes:
        path: the model file.
        runs: timed runs.
        median_ms, p90_ms, mean_ms, min_ms: latency statistics (milliseconds).
        ratio: median / the first model's median (1.0 for the first).
        max_abs_err, max_rel_err, cosine: outputs against the first model's
            (None for the first model, or when output names differ).
        samples_ms: every timed run, in order.
    """

    path: str
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    ratio: float
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    cosine: float | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)


@dataclass
class BenchReport:
    """Timings of all models plus the conditions they were measured under."""

    models: list[ModelTiming]
    provider: str
    threads: int
    opt_level: str
    inputs: dict[str, list[int]]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds: float

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        doc = asdict(self)
        if not samples:
            for m in doc["models"]:
                m.pop("samples_ms")
        return doc


def make_bench_session(path: str | Path, provider: str, threads: int, opt_level: str,
                       profile_prefix: str | None = None) -> ort.InferenceSession:
    """An onnxruntime session set up for timing (spinning off, fixed threads).

    Raises:
        InputError: unknown optimization level or execution provider.
        LoadError: onnxruntime cannot load the model (its message included).
    """
    if opt_level not in OPT_LEVELS:
        raise InputError(f"unknown optimization level '{opt_level}'; choose one of {', '.join(OPT_LEVELS)}")
    if provider not in ort.get_available_providers():
        raise InputError(f"execution provider '{provider}' is not available here; available: "
                         f"{', '.join(ort.get_available_providers())}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises several types
        raise LoadError(f"onnxruntime cannot load '{path}': {e}") from e


def interleave(sessions: Sequence[ort.InferenceSession], feeds: Sequence[dict[str, np.ndarray]], *,
               min_runs: int = 10, max_runs: int = 1000, seconds: float = 10.0) -> list[list[float]]:
    """Time warm ``sessions`` round by round on their ``feeds`` (one dict per session), the order rotated each
    round so that drift of the machine hits every session alike (``shared/BENCH.md``); stops after ``max_runs``
    rounds, or after ``seconds`` once every session has ``min_runs``.

    Returns:
        Per session, every timed run in milliseconds, in order.
    """
    samples: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    round_no = 0
    deadline = time.perf_counter() + seconds
    while True:
        rotated = order[round_no % len(order):] + order[:round_no % len(order)]
        for i in rotated:
            t0 = time.perf_counter()
            sessions[i].run(None, feeds[i])
            samples[i].append((time.perf_counter() - t0) * 1e3)
        round_no += 1
        if round_no >= max_runs or (round_no >= min_runs and time.perf_counter() > deadline):
            return samples


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def benchmark(
    models: Sequence[str | Path],
    *,
    inputs: dict[str, np.ndarray] | None = None,
    dims: dict[str, int] | None = None,
    provider: str = "CPUExecutionProvider",
    threads: int = 2,
    opt_level: str = "all",
    warmup: int = 5,
    min_runs: int = 10,
    max_runs: int = 1000,
    seconds: float = 10.0,
    seed: int = 0,
) -> BenchReport:
    """Time ``models`` interleaved on one set of inputs.

    Args:
        models: .onnx paths; the first is the reference for ratios and errors.
        inputs: input arrays by name; generated from the first model (as
            ``graphopt verify`` does) when None.
        dims: symbolic dim bindings for generated inputs (e.g. ``{"sequence": 128}``).
        provider: onnxruntime execution provider.
        threads: intra-op threads per session.
        opt_level: onnxruntime graph optimization level (disable, basic, extended, all).
        warmup: untimed runs per model before timing.
        min_runs, max_runs: bounds on timed runs per model.
        seconds: time budget for the timed rounds (all models together);
            runs stop after it once every model has ``min_runs``.
        seed: seed of generated inputs.

    Returns:
        A :class:`BenchReport`.

    Raises:
        InputError: no models, a missing file, inputs that do not fit a model.
        LoadError: a model onnxruntime cannot load.
    """
    if not models:
        raise InputError("give at least one model to benchmark")
    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise InputError(f"model '{p}' does not exist; check the path")
    load_before = os.getloadavg()
    start = time.perf_counter()
    first = load_proto(paths[0])
    if inputs is None:
        inputs = generate_inputs(first, dims=dims, seed=seed)
    sessions = []
    for p in paths:
        proto = load_proto(p)
        check_inputs(proto, inputs)
        sessions.append(make_bench_session(p, provider, threads, opt_level))
    outputs = []
    for session in sessions:
        names = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in inputs.items() if k in names}
        for _ in range(max(warmup, 1)):
            result = session.run(None, feed)
        outputs.append(dict(zip([o.name for o in session.get_outputs()], result)))
    feeds = [{k: v for k, v in inputs.items() if k in {i.name for i in s.get_inputs()}} for s in sessions]
    samples = interleave(sessions, feeds, min_runs=min_runs, max_runs=max_runs, seconds=seconds)
    reference = statistics.median(samples[0])
    timings = []
    for i, p in enumerate(paths):
        t = ModelTiming(str(p), len(samples[i]), statistics.median(samples[i]), _percentile(samples[i], 90),
                        statistics.fmean(samples[i]), min(samples[i]), statistics.median(samples[i]) / reference,
                        samples_ms=samples[i])
        if i > 0 and outputs[i].keys() == outputs[0].keys():
            report = compare_outputs(outputs[0], outputs[i])
            t.max_abs_err = max((o.max_abs_err for o in report.outputs), default=0.0)
            t.max_rel_err = report.worst
            cosines = [o.cosine for o in report.outputs if o.cosine is not None]
            t.cosine = min(cosines) if cosines else None
        timings.append(t)
    return BenchReport(timings, provider, threads, opt_level, {k: list(v.shape) for k, v in inputs.items()},
                       load_before, os.getloadavg(), time.perf_counter() - start)

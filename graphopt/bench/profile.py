"""Per-operator time from onnxruntime's profiler (the "hot spots")."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphopt.bench.runner import make_bench_session

__all__ = ["OpTime", "profile_model"]


@dataclass
class OpTime:
    """Time spent in one operator type.

    Attributes:
        op: operator type as onnxruntime ran it (after its own fusions, e.g.
            ``FusedMatMul``).
        ms: total kernel time per inference (milliseconds).
        share: fraction of all kernel time in [0, 1].
        nodes: distinct nodes of this type that ran.
    """

    op: str
    ms: float
    share: float
    nodes: int


def profile_model(path: str | Path, inputs: dict[str, np.ndarray], *, provider: str = "CPUExecutionProvider",
                  threads: int = 2, opt_level: str = "all", runs: int = 10, top: int = 10) -> list[OpTime]:
    """Run ``path`` ``runs`` times with onnxruntime profiling on and sum kernel
    time per operator type from the trace (events of category ``Node`` whose
    name ends in ``_kernel_time``; onnxruntime's Chrome-trace profile format).

    Returns:
        The ``top`` operator types by time, largest first.

    Raises:
        LoadError / InputError: as :func:`graphopt.bench.runner.make_bench_session`.
    """
    with tempfile.TemporaryDirectory(prefix="graphopt-profile-") as tmp:
        session = make_bench_session(path, provider, threads, opt_level, profile_prefix=str(Path(tmp) / "p"))
        names = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in inputs.items() if k in names}
        session.run(None, feed)  # warm-up, excluded below by dropping the first run's events
        for _ in range(runs):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    runs_seen = 0  # a run's node events precede its model_run event
    for event in trace:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs_seen += 1
            continue
        if runs_seen < 1 or event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        totals[op] += event.get("dur", 0) / 1e3
        nodes[op].add(event["name"])
    counted = max(runs_seen - 1, 1)
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [OpTime(op, ms / counted, ms / grand, len(nodes[op])) for op, ms in ranked]

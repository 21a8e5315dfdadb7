"""graphopt.deadline: the cooperative time limit that compress's candidates check in their long loops."""

from __future__ import annotations

import time

import numpy as np
import pytest

from graphopt.calibrate.data import track
from graphopt.deadline import TimeLimitReached, check, limit, remaining


def test_check_raises_only_inside_a_passed_limit():
    check("nothing")  # no limit: never raises
    assert remaining() is None
    with limit(time.monotonic() + 60):
        check("work")
        assert 59 < remaining() <= 60
        with limit(time.monotonic() + 3600):  # an inner limit never extends the outer one
            assert remaining() <= 60
        with limit(None):
            assert remaining() <= 60
    with limit(time.monotonic() - 1), pytest.raises(TimeLimitReached, match="the time limit passed during work"):
        check("work")
    assert remaining() is None and TimeLimitReached.exit_code == 1


def test_calibration_batches_stop_at_the_limit():
    seen = []
    with limit(time.monotonic() - 1), pytest.raises(TimeLimitReached, match="during calibrating"):
        for item in track(range(3)):
            seen.append(item)
    assert seen == []
    assert list(track(range(3))) == [0, 1, 2]


def test_a_candidate_past_the_limit_fails_and_the_search_stops(tmp_path, monkeypatch):
    """compress with a time limit: a candidate whose build is still running when the limit passes fails (the
    pruning's statistics batches check the deadline), and the search ends with the points it measured."""
    from graphopt.bench.probe import LatencyProbe, ProbeTiming
    from graphopt.compress import CompressOptions, compress
    from graphopt.compress.candidates import CandidateBuilder
    from helpers import mlp_file

    model = mlp_file(tmp_path / "m.onnx", 16, 64, (1.0, 1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((1, 4, 16)).astype(np.float32)} for _ in range(4)]
    monkeypatch.setattr(LatencyProbe, "measure", lambda self, c, seconds=None: ProbeTiming(0.9, 9.0, 10.0, 3, 0.0))
    real = CandidateBuilder._pruned

    def slow(self, ratio):  # noqa: ANN001, ANN202 - the first pruning level outlives the limit
        if ratio < 1.0:
            time.sleep(1.5)
        return real(self, ratio)

    monkeypatch.setattr(CandidateBuilder, "_pruned", slow)
    work = tmp_path / "w"
    work.mkdir()
    result = compress(model, work, batches, batches[:2], lambda o, r: 1.0,
                      CompressOptions(techniques=("prune",), threshold=0.5, time_limit=1.0, latency_seconds=0.01))
    errors = [p["error"] for p in result.points if p.get("error")]
    assert errors and "the time limit passed" in errors[0]
    assert result.search.stopped.startswith("time limit")

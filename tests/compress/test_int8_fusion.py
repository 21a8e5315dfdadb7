"""``compress`` builds the first INT8 point with every INT8 fusion variant that changes the graph, times each,
and uses the fastest (within FUSION_TOLERANCE of the default's quality) for every later INT8 candidate.

Latency is injected (the probe's ``measure`` reads the candidate's ops), so the choice is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt.bench.probe import LatencyProbe, ProbeTiming
from graphopt.calibrate.data import CalibrationData
from graphopt.compress import CompressOptions, compress
from graphopt.compress.candidates import CandidateBuilder
from graphopt.compress.run import FUSION_TOLERANCE
from helpers import mlp_file, npz_samples  # noqa: F401

BERT = Path(__file__).resolve().parents[2] / "models" / "bert_tiny_ts.onnx"


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _inject(monkeypatch: pytest.MonkeyPatch, measured: list[set[str]]) -> None:
    """Latency ratio 0.5, minus 0.1 with the residual Sum (fuse-skip-norm's CPU form), plus 0.05 with
    MultiHeadAttention."""

    def measure(self, candidate, seconds=None):  # noqa: ANN001, ANN202
        ops = _ops(Path(candidate))
        measured.append(ops)
        ratio = 1.0 if "QuantizeLinear" not in ops else (
            0.5 - 0.1 * ("Sum" in ops) + 0.05 * ("MultiHeadAttention" in ops))
        return ProbeTiming(ratio, 10 * ratio, 10.0, 3, 0.0)

    monkeypatch.setattr(LatencyProbe, "measure", measure)


def _bert_batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    proto = onnx.load(str(BERT))
    return list(CalibrationData.generated(proto, count=count, seed=seed, dims={"batch": 1, "sequence": 16}))


def test_fastest_fusion_variant_is_used(monkeypatch, tmp_path):
    measured: list[set[str]] = []
    _inject(monkeypatch, measured)
    batches = _bert_batches(4, 0)
    result = compress(BERT, tmp_path, batches, batches[:2], lambda o, r: 1.0,
                      CompressOptions(techniques=("int8",), speedup=1.5, latency_seconds=0.01))
    assert [(f["fusion"], f["latency_ratio"], f["chosen"]) for f in result.int8_fusions] == [
        ("default", 0.5, False), ("skip-norm", pytest.approx(0.4), True),
        ("skip-norm+masked-mha", pytest.approx(0.45), False)]
    assert "MultiHeadAttention" in measured[3] and "Sum" not in measured[1] and "Sum" in measured[2]
    assert result.search.levels(result.chosen) == {"int8": True}
    assert result.points[result.chosen]["int8_fusion"] == "skip-norm"
    assert result.points[result.chosen]["latency_ratio"] == pytest.approx(0.4)
    ops = _ops(result.built.path)  # the rebuilt chosen model (with SQNR) uses the chosen variant
    assert {"Sum", "QuantizeLinear"} <= ops and "MultiHeadAttention" not in ops
    spec = result.built.docs["spec"]
    assert "fuse-skip-norm" in spec and spec.endswith(",qdq") and "masked-multi-head=false" in spec


def test_a_faster_variant_that_loses_quality_is_not_used(monkeypatch, tmp_path):
    _inject(monkeypatch, [])
    real = CandidateBuilder.quality

    def quality(self, path, *args, **kwargs):  # noqa: ANN001, ANN202 - the Sum costs 2x the tolerance
        base = real(self, path, *args, **kwargs)
        return base - 2 * FUSION_TOLERANCE * ("Sum" in _ops(Path(path)))

    monkeypatch.setattr(CandidateBuilder, "quality", quality)
    batches = _bert_batches(4, 0)
    result = compress(BERT, tmp_path, batches, batches[:2], lambda o, r: 1.0,
                      CompressOptions(techniques=("int8",), speedup=1.5, latency_seconds=0.01))
    assert [f["chosen"] for f in result.int8_fusions] == [True, False, False]
    assert result.built.docs["spec"] == "O1,int8"


def test_model_without_variants_builds_default_only(monkeypatch, tmp_path):
    measured: list[set[str]] = []
    _inject(monkeypatch, measured)
    model = mlp_file(tmp_path / "m.onnx", 16, 64, (1.0, 1.0, 1.0, 1.0))
    data = npz_samples(tmp_path / "c", 4, 0, 16, "x")
    proto = onnx.load(str(model))
    batches = list(CalibrationData.from_path(data, proto))
    work = tmp_path / "w"
    work.mkdir()
    result = compress(model, work, batches, batches[:2], lambda o, r: 1.0,
                      CompressOptions(techniques=("int8",), speedup=1.5, latency_seconds=0.01))
    assert [f["fusion"] for f in result.int8_fusions] == ["default"]
    assert len(measured) == 2  # the fp32 point and the int8 point, with the default fusions only


def test_a_variant_that_fails_is_skipped(monkeypatch, tmp_path):
    from graphopt.errors import PassError

    _inject(monkeypatch, [])
    real = CandidateBuilder.build

    def build(self, levels, **kwargs):  # noqa: ANN001, ANN202
        if kwargs.get("fusion") == "skip-norm":
            raise PassError("fuse-skip-norm broke", pass_name="fuse-skip-norm")
        return real(self, levels, **kwargs)

    monkeypatch.setattr(CandidateBuilder, "build", build)
    batches = _bert_batches(4, 0)
    result = compress(BERT, tmp_path, batches, batches[:2], lambda o, r: 1.0,
                      CompressOptions(techniques=("int8",), speedup=1.5, latency_seconds=0.01))
    assert [(f["fusion"], f.get("error", ""), f["chosen"]) for f in result.int8_fusions] == [
        ("default", "", False), ("skip-norm", "fuse-skip-norm broke", False), ("skip-norm+masked-mha", "", True)]

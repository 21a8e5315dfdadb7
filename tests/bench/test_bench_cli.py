"""`graphopt bench` on the committed models: report structure, errors, exit codes.
No timing thresholds: only that times are measured and errors computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MODELS
from graphopt.bench import benchmark, profile_model
from graphopt.cli.main import main
from graphopt.errors import InputError, LoadError
from graphopt.verify import generate_inputs

CORPUS = sorted(MODELS.glob("*.onnx"))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bench_every_model_against_itself(path: Path, capsys):
    code = main(["bench", str(path), str(path), "--runs", "3", "--warmup", "1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [m["path"] for m in doc["models"]] == [str(path), str(path)]
    assert [m["runs"] for m in doc["models"]] == [3, 3]
    assert doc["models"][0]["ratio"] == 1.0
    assert doc["models"][1]["max_abs_err"] == 0.0
    assert all(m["median_ms"] > 0 and m["p90_ms"] >= m["median_ms"] for m in doc["models"])
    assert doc["opt_level"] == "all" and doc["threads"] == 2


def test_bench_dims_and_profile(capsys):
    model = str(MODELS / "bert_tiny_ts.onnx")
    code = main(["bench", model, "--runs", "2", "--warmup", "1", "--dim", "sequence=32", "--profile", "--top", "3",
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["inputs"] == {"input_ids": [1, 32], "attention_mask": [1, 32], "token_type_ids": [1, 32]}
    ops = doc["profiles"][model]
    assert len(ops) == 3
    assert ops[0]["ms"] >= ops[1]["ms"] >= ops[2]["ms"]
    assert 0 < sum(o["share"] for o in ops) <= 1.0


def test_bench_table_output(capsys):
    model = str(MODELS / "vit_tiny_ts.onnx")
    assert main(["bench", model, "--runs", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "ratio" in out and "load average" in out


def test_bench_bad_path_exits_2(tmp_path, capsys):
    code = main(["bench", str(MODELS / "bert_tiny_ts.onnx"), str(tmp_path / "missing.onnx"), "--runs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing.onnx' does not exist" in err and "Traceback" not in err


def test_bench_unloadable_model_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model at all")
    code = main(["bench", str(bad), "--runs", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.onnx" in err and "Traceback" not in err


def test_benchmark_rejects_mismatched_inputs():
    with pytest.raises(InputError, match="input_ids"):
        benchmark([MODELS / "vit_tiny_ts.onnx", MODELS / "bert_tiny_ts.onnx"], min_runs=1, max_runs=1, seconds=0)


def test_benchmark_unknown_provider():
    with pytest.raises(InputError, match="not available"):
        benchmark([MODELS / "vit_tiny_ts.onnx"], provider="NoSuchExecutionProvider", min_runs=1, max_runs=1)


def test_profile_unloadable(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x08\x07")
    with pytest.raises(LoadError):
        profile_model(bad, {})


def test_chart_png(tmp_path):
    pytest.importorskip("matplotlib")
    chart = tmp_path / "c.png"
    model = str(MODELS / "vit_tiny_ts.onnx")
    assert main(["bench", model, model, "--runs", "2", "--warmup", "1", "--chart", str(chart)]) == 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generated_inputs_follow_first_model():
    inputs = generate_inputs(str(MODELS / "bert_tiny_ts.onnx"), dims={"sequence": 8})
    report = benchmark([MODELS / "bert_tiny_ts.onnx"], inputs=inputs, min_runs=2, max_runs=2, seconds=0, warmup=1)
    assert report.inputs["input_ids"] == [1, 8]
    assert report.models[0].runs == 2

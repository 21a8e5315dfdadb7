"""``graphopt compress`` and pipeline O3: the written model and its report, a budget nothing meets (exit 1,
nothing written, the best points printed), bad metric specs, techniques and data (exit 2, nothing written), and
the search through :func:`graphopt.compress.compress` with injected latency and quality."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt import ir
from graphopt.compress import CompressOptions, Measure, compress
from graphopt.compress.search import best
from graphopt.errors import PassError
from graphopt.report import check_numbers, parse_report
from helpers import flat, mlp_file, npz_samples, restore_logging, run_cli  # noqa: F401 - autouse fixture

D, H = 16, 256


def _mlp(path: Path) -> Path:
    """x [batch, 4, 16] -> MatMul 16x256 -> Relu -> MatMul 256x16 (an FFN the prune knob can cut)."""
    return mlp_file(path, D, H, (1 / 4, 1 / 4, 1 / 16, 1.0))


def _data(folder: Path, count: int, seed: int, name: str = "x") -> Path:
    return npz_samples(folder, count, seed, D, name)


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    return _mlp(tmp_path / "m.onnx"), _data(tmp_path / "c", 16, 0), _data(tmp_path / "e", 8, 1)


def test_compress_writes_the_chosen_model_and_report(setup, tmp_path, capsys):
    model, calib, ev = setup
    out, report = tmp_path / "c.onnx", tmp_path / "r.html"
    code, stdout, stderr = run_cli(capsys, "compress", model, "-o", out, "--calib", calib, "--eval", ev,
                                   "--budget", "cosine=0.98", "--techniques", "prune", "--latency-seconds", "0.05",
                                   "--json", "--report", report)
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["search_batches"] == 4 and doc["held_out_batches"] == 4  # --eval split in halves, no --test
    chosen = doc["chosen"]
    assert chosen["quality"] >= 0.98 and doc["held_out"] >= 0.98
    assert doc["accuracy"]["data"] == "held-out" and doc["accuracy"]["batches"] == 4
    assert doc["accuracy"]["cosine"] == pytest.approx(doc["held_out"], abs=1e-6)
    points = doc["frontier"]["points"]
    assert len(points) == doc["points_measured"] and points[0]["label"] == "fp32 (O2)"
    assert points[doc["frontier"]["chosen"]]["label"] == chosen["label"]
    assert doc["pipeline"].startswith("O1,") and doc["pipeline"].endswith(",O2")
    if chosen["prune"] < 1.0:
        assert doc["prune"]["pruned"] == 1 and doc["after"]["parameters"] < doc["before"]["parameters"]
    onnx.checker.check_model(onnx.load(out))
    parsed = parse_report(report.read_text(encoding="utf-8"))
    assert parsed.references == [] and parsed.doc == json.loads(json.dumps(doc))
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert check_numbers(parsed, doc) == [] and parsed.cells
    expected = ["summary", "frontier", "verification", "ops"]
    if chosen["prune"] < 1.0:
        expected.append("prune-pruning-layers")
    assert parsed.sections == expected + ["profile"] + (["refused"] if chosen["prune"] < 1.0 else [])
    if chosen["prune"] < 1.0:  # the site prune left whole, with its reason
        assert doc["refused"] == [{"site": "MatMul:MatMul_3", "kind": "ffn",
                                   "reason": "y is a graph output (the output signature never changes)"}]
    keys = {k for k, _ in parsed.cells}
    assert {"latency_ms/before", "latency_ms/after", "file_bytes/after", "after/parameters",
            f"frontier/points/{doc['frontier']['chosen']}/latency_ms"} <= keys


def test_budget_nothing_meets_exits_1_and_writes_nothing(setup, tmp_path, capsys):
    model, calib, ev = setup
    metric = tmp_path / "never.py"
    metric.write_text("def never(outputs, reference):\n    return 0.0\n")
    out = tmp_path / "c.onnx"
    code, stdout, stderr = run_cli(capsys, "compress", model, "-o", out, "--calib", calib, "--eval", ev,
                                   "--metric", f"{metric}:never", "--budget", "never=0.5", "--techniques", "prune",
                                   "--latency-seconds", "0.05")
    assert code == 1
    text = flat(stderr)
    assert "no point of the search meets never >= 0.5 (no step keeps the budget); nothing was written" in text
    assert "best points reached (the Pareto frontier of the search):" in text and ": latency ratio " in text
    assert ", never 0.0000" in text
    assert not out.exists() and "Traceback" not in stderr


@pytest.mark.parametrize("extra, message", [
    (["--metric", "no_such_module_xyz:f", "--budget", "0.9"], "--metric: cannot import 'no_such_module_xyz'"),
    (["--metric", "json", "--budget", "0.9"], "--metric expects MODULE:FUNCTION or FILE.py:FUNCTION"),
    (["--metric", "json:no_such_fn", "--budget", "0.9"], "--metric: 'json' has no function 'no_such_fn'"),
    (["--metric", "missing_file.py:f", "--budget", "0.9"], "--metric file 'missing_file.py' does not exist"),
    (["--metric", "json:dumps", "--budget", "cosine=0.9"], "with --metric, --budget expects VALUE or dumps=VALUE"),
    (["--budget", "bleu=0.9"], "--budget expects METRIC=VALUE with METRIC one of cosine, argmax, rank-fidelity"),
    (["--budget", "cosine=0.9", "--techniques", "prune,magic"], "unknown technique(s) magic; choose from prune, "
                                                                 "lowrank, int8"),
    (["--speedup", "0.5"], "--speedup must be above 1"),
    (["--budget", "cosine=0.9", "--time-limit", "0"], "--time-limit must be positive"),
])
def test_bad_options_exit_2(setup, tmp_path, capsys, extra, message):
    model, calib, ev = setup
    out = tmp_path / "c.onnx"
    code, _, stderr = run_cli(capsys, "compress", model, "-o", out, "--calib", calib, "--eval", ev, *extra)
    assert code == 2 and message in flat(stderr) and not out.exists() and "Traceback" not in stderr


def test_bad_data_exit_2(setup, tmp_path, capsys):
    model, calib, ev = setup
    out = tmp_path / "c.onnx"
    wrong = _data(tmp_path / "w", 2, 0, name="z")
    code, _, stderr = run_cli(capsys, "compress", model, "-o", out, "--calib", wrong, "--eval", ev, "--budget",
                              "cosine=0.9")
    assert code == 2 and "'z' is not an input of the model" in flat(stderr) and not out.exists()
    code, _, stderr = run_cli(capsys, "compress", model, "-o", out, "--calib", calib, "--eval", wrong, "--budget",
                              "cosine=0.9")
    assert code == 2 and "'z' is not an input of the model" in flat(stderr) and not out.exists()
    code, _, stderr = run_cli(capsys, "compress", model, "-o", out, "--calib", calib, "--budget", "cosine=0.9")
    assert code == 2 and "compress needs --calib PATH" in flat(stderr) and not out.exists()


def test_injected_latency_and_quality_pick_the_brute_force_point(setup, tmp_path):
    """compress() on a small model with evaluate= injected: the chosen levels are the brute-force best."""
    model, calib, ev = setup
    speed = {"prune": dict(zip((1.0, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5), (1, .92, .88, .83, .79, .75, .66, .57))),
             "lowrank": dict(zip((1.0, 0.9, 0.8, 0.7, 0.6), (1, 1.02, .9, .81, .72))),
             "int8": {False: 1, True: .38, "fallback": 1.0}}
    loss = {"prune": dict(zip((1.0, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5), (0, .003, .006, .01, .016, .025, .05, .09))),
            "lowrank": dict(zip((1.0, 0.9, 0.8, 0.7, 0.6), (0, .02, .05, .09, .14))),
            "int8": {False: 0, True: .009, "fallback": 0.0}}
    # the float-fallback variant (measured after the walk) scores as fp32 here: never faster, never chosen

    def evaluate(levels: dict) -> Measure:
        return Measure(float(np.prod([speed[k][v] for k, v in levels.items()])),
                       1.0 - sum(loss[k][v] for k, v in levels.items()))

    grid = [dict(zip(speed, combo)) for combo in itertools.product(*([v for v in speed[k] if v != "fallback"]
                                                                     for k in speed))]
    batches = [{"x": np.random.default_rng(i).standard_normal((1, 4, D)).astype(np.float32)} for i in range(4)]
    for threshold in (0.99, 0.98, 0.97, 0.95):
        result = compress(model, tmp_path, batches, batches, lambda o, r: 1.0, CompressOptions(threshold=threshold),
                          evaluate=evaluate)
        expected = grid[best([evaluate(g) for g in grid], threshold=threshold)]
        assert result.search.levels(result.chosen) == expected
        assert len(result.points) < len(grid) // 2


def test_o3_pipeline(setup, tmp_path):
    from graphopt.calibrate.data import CalibrationData
    from graphopt.passmanager import PassContext, PassManager, Pipeline

    model_path, calib, ev = setup
    proto = onnx.load(model_path)
    calibration = list(CalibrationData.from_path(calib, proto))
    evaluation = list(CalibrationData.from_path(ev, proto))
    model = ir.load(model_path)
    with pytest.raises(PassError, match="needs an accuracy budget") as info:
        PassManager("O3", PassContext(calibration=calibration, evaluation=evaluation)).run(model)
    assert info.value.exit_code == 2
    ctx = PassContext(calibration=calibration, evaluation=evaluation, accuracy_budget={"cosine": 0.98})
    assert Pipeline.parse("O3").expanded().to_spec() == Pipeline.parse("O1").expanded().to_spec() + ",compress"
    result = PassManager("O1,compress{techniques=prune,latency-seconds=0.05}", ctx).run(model)
    record = json.loads(result.model.metadata_props["graphopt.compress"])
    assert record["metric"] == "cosine" and record["held_out"] >= 0.98
    assert record["pipeline"].startswith("O1,") and len(record["points"]) >= 2
    with pytest.raises(PassError, match="no candidate meets the goal") as info:
        PassManager("O1,compress{techniques=prune,latency-seconds=0.05}", PassContext(
            calibration=calibration, evaluation=evaluation, accuracy_budget={"metric": lambda o, r: 0.0, "threshold": 0.5})
                    ).run(ir.load(model_path))  # quality 0 everywhere: the first round ends the walk
    assert info.value.exit_code == 1


def test_int8_float_fallback_is_measured_after_the_walk(setup, tmp_path):
    """Every layer quantized misses the budget, INT8 with float fallbacks keeps it: the fallback is chosen."""
    model, _, _ = setup
    table = {False: Measure(1.0, 1.0), True: Measure(0.4, 0.95), "fallback": Measure(0.6, 0.99)}
    seen = []

    def evaluate(levels: dict) -> Measure:
        seen.append(levels["int8"])
        return table[levels["int8"]]

    batches = [{"x": np.zeros((1, 4, D), np.float32)}]
    result = compress(model, tmp_path, batches, batches, lambda o, r: 1.0,
                      CompressOptions(techniques=("int8",), threshold=0.97), evaluate=evaluate)
    assert seen == [False, True, "fallback"]
    assert result.search.levels(result.chosen) == {"int8": "fallback"}
    assert [p["label"] for p in result.points] == ["fp32 (O2)", "int8", "int8 (float fallbacks)"]


def test_metric_with_labels_reads_labels_json(setup, tmp_path, capsys):
    """A metric(outputs, reference, labels) gets the labels.json entries of the samples it scores: the search's
    (the first half of --eval) and then the held-out ones (the second half)."""
    model, calib, ev = setup
    metric = tmp_path / "labelled.py"
    metric.write_text("SEEN = []\n"
                      "def share(outputs, reference, labels):\n"
                      "    SEEN.append(list(labels))\n"
                      "    return sum(labels) / len(labels)\n")
    out = tmp_path / "c.onnx"
    common = ["compress", model, "-o", out, "--calib", calib, "--eval", ev, "--metric", f"{metric}:share",
              "--budget", "0.5", "--techniques", "prune", "--latency-seconds", "0.05", "--json"]
    code, _, stderr = run_cli(capsys, *common)
    assert code == 2 and "--metric share takes labels: put a labels.json" in flat(stderr) and not out.exists()
    (ev / "labels.json").write_text("[1, 1]")
    code, _, stderr = run_cli(capsys, *common)
    assert code == 2 and "must be a JSON list with one label per sample (8 samples" in flat(stderr)
    (ev / "labels.json").write_text("[1, 1, 0, 1, 0, 0, 1, 0]")  # search half: 3/4, held-out half: 1/4
    code, stdout, stderr = run_cli(capsys, *common)
    assert code == 1 and "nothing was written" in flat(stderr)  # 0.75 on the search split, 0.25 held out
    (ev / "labels.json").write_text("[1, 1, 0, 1, 1, 0, 1, 1]")  # held-out half: 3/4
    code, stdout, stderr = run_cli(capsys, *common)
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["chosen"]["quality"] == 0.75 and doc["held_out"] == 0.75


def test_max_drop_is_below_the_originals_own_score_on_each_split(setup, tmp_path, capsys):
    """--max-drop D: the search keeps the original's search-split score - D, the held-out check the original's
    held-out score - D (with labels the two baselines differ: 3/4 and 1/4 here, where an absolute --budget 0.5
    fails the held-out half); a drop outside [0, 1) exits 2."""
    model, calib, ev = setup
    metric = tmp_path / "labelled.py"
    metric.write_text("def share(outputs, reference, labels):\n"
                      "    return sum(labels) / len(labels)\n")
    (ev / "labels.json").write_text("[1, 1, 0, 1, 0, 0, 1, 0]")  # search half: 3/4, held-out half: 1/4
    out = tmp_path / "c.onnx"
    common = ["compress", model, "-o", out, "--calib", calib, "--eval", ev, "--metric", f"{metric}:share",
              "--techniques", "prune", "--latency-seconds", "0.05", "--json"]
    code, stdout, stderr = run_cli(capsys, *common, "--max-drop", "0.1")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["budget"] == pytest.approx(0.65) and doc["held_out_budget"] == pytest.approx(0.15)
    assert doc["max_drop"] == 0.1 and doc["original_held_out"] == 0.25 and doc["held_out"] == 0.25
    assert doc["frontier"]["budget"] == pytest.approx(0.65)
    out.unlink()
    code, _, stderr = run_cli(capsys, *common, "--max-drop", "1.5")
    assert code == 2 and "--max-drop must be in [0, 1)" in flat(stderr) and not out.exists()


def test_optimize_o3_without_data_exits_2(setup, tmp_path, capsys):
    model, _, _ = setup
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "optimize", model, "-o", out, "-p", "O3")
    assert code == 2 and not out.exists()
    assert "the compress pass (O3) needs calibration data and evaluation data" in flat(stderr)
    assert "graphopt compress --calib --eval" in flat(stderr)

"""``graphopt prune``: the report (table and --json), bad options and data (exit 2, nothing written), a model with
nothing prunable (exit 0, written unchanged, said so), and the --budget search."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from graphopt import ir
from helpers import flat, mlp_file, npz_samples, restore_logging, run_cli  # noqa: F401 - autouse fixture

MODELS = Path(__file__).resolve().parents[2] / "models"
D, H = 8, 64


def _mlp(path: Path) -> Path:
    return mlp_file(path, D, H)


def _data(folder: Path, count: int, seed: int, name: str = "x") -> Path:
    return npz_samples(folder, count, seed, D, name)


def test_prune_json_and_table(tmp_path, capsys):
    model, calib, ev = _mlp(tmp_path / "m.onnx"), _data(tmp_path / "c", 8, 0), _data(tmp_path / "e", 4, 1)
    out = tmp_path / "p.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", model, "-o", out, "--calib", calib, "--eval", ev, "--ratio",
                                   "0.5", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["pruned"] == 1 and doc["groups"][0]["kept"] == 32 and doc["achieved"] == 0.5
    assert doc["params_after"] < doc["params_before"] and doc["flops_after"] < doc["flops_before"]
    assert doc["accuracy"]["data"] == "evaluation" and 0 < doc["accuracy"]["cosine"] <= 1
    onnx.checker.check_model(onnx.load(out))
    code, stdout, stderr = run_cli(capsys, "prune", MODELS / "bert_tiny_ts.onnx", "-o", tmp_path / "b.onnx",
                                   "--calib", "generate", "--ratio", "0.6", "--method", "flap")
    assert code == 0, stderr
    text = flat(stdout)
    assert "layer0.attn.heads" in text and "2 / 4 heads" in text and "80 / 128 neurons" in text
    assert "not pruned:" in text and "hidden-size pruning is not supported" in text
    assert "MatMul/Conv FLOPs" in text


def test_bad_input_exits_2_nothing_written(tmp_path, capsys):
    model, calib = _mlp(tmp_path / "m.onnx"), _data(tmp_path / "c", 4, 0)
    wrong = _data(tmp_path / "w", 2, 0, name="not_x")
    out = tmp_path / "o.onnx"
    cases = [
        (["--calib", calib, "--ratio", "1.5"], "--ratio must be in (0, 1)"),
        (["--calib", calib, "--ratio", "0"], "--ratio must be in (0, 1)"),
        (["--calib", calib, "--ratio", "0.5", "--kinds", "heads"], "no heads group"),
        (["--calib", calib, "--ratio", "0.5", "--kinds", "rows"], "unknown group kind"),
        (["--calib", wrong, "--ratio", "0.5"], "x"),
        (["--ratio", "0.5"], "needs calibration data"),
        (["--calib", calib, "--budget", "speed=2"], "--budget expects"),
    ]
    for extra, message in cases:
        code, _, stderr = run_cli(capsys, "prune", model, "-o", out, *extra)
        assert code == 2, (extra, stderr)
        assert message in flat(stderr), (extra, stderr)
        assert not out.exists()


def test_nothing_prunable_exits_0_unchanged(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    out = tmp_path / "o.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", path, "-o", out, "--ratio", "0.5", "--method", "magnitude",
                                   "--reconstruct", "none")
    assert code == 0, stderr
    assert "nothing prunable" in flat(stdout) and "unchanged" in flat(stdout)
    assert ir.to_text(ir.load(out)) == ir.to_text(ir.load(path))


def test_budget_and_miss(tmp_path, capsys):
    model, calib, ev = _mlp(tmp_path / "m.onnx"), _data(tmp_path / "c", 8, 0), _data(tmp_path / "e", 4, 1)
    out = tmp_path / "b.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", model, "-o", out, "--calib", calib, "--eval", ev,
                                   "--budget", "cosine=0.9", "--align", "1", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["budget"]["ratio"] < 1 and doc["accuracy"]["cosine"] >= 0.9
    assert doc["accuracy"]["data"] == "evaluation" and doc["accuracy"]["searched"] is True
    assert doc["accuracy"]["batches"] == 4
    code, _, stderr = run_cli(capsys, "prune", model, "-o", tmp_path / "miss.onnx", "--calib", calib, "--eval", ev,
                              "--budget", "cosine=1.0", "--reconstruct", "none", "--align", "1")
    assert code == 1 and "misses the budget" in flat(stderr) and not (tmp_path / "miss.onnx").exists()


def test_report_equals_json_and_bad_report_path(tmp_path, capsys):
    from graphopt.report import check_numbers, parse_report

    model, calib, ev = _mlp(tmp_path / "m.onnx"), _data(tmp_path / "c", 8, 0), _data(tmp_path / "e", 4, 1)
    report = tmp_path / "prune.html"
    code, stdout, stderr = run_cli(capsys, "prune", model, "-o", tmp_path / "p.onnx", "--calib", calib, "--eval", ev,
                                   "--ratio", "0.5", "--report", report, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    parsed = parse_report(report.read_text(encoding="utf-8"))
    assert check_numbers(parsed, doc) == [] and parsed.doc == json.loads(json.dumps(doc))
    keys = {k for k, _ in parsed.cells}
    assert {"params_before", "params_after", "accuracy/cosine", "accuracy/outputs/0/cosine", "groups/0/kept"} <= keys
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "prune", model, "-o", out, "--calib", calib, "--ratio", "0.5",
                              "--report", tmp_path / "missing" / "r.html")
    assert code == 2 and "does not exist" in flat(stderr)
    assert not out.exists() and not (tmp_path / "missing").exists()


def test_test_inputs_give_the_held_out_figure(tmp_path, capsys):
    """--test: the accuracy report is on inputs the --budget search never saw (its own cosine, not the
    searched one), said in the table; bad --test data exits 2 before any pruning, nothing written."""
    from graphopt.calibrate.report import accuracy_report
    from graphopt.calibrate.data import CalibrationData

    model, calib, ev = _mlp(tmp_path / "m.onnx"), _data(tmp_path / "c", 8, 0), _data(tmp_path / "e", 4, 1)
    test = _data(tmp_path / "t", 3, 2)
    out = tmp_path / "b.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", model, "-o", out, "--calib", calib, "--eval", ev, "--test", test,
                                   "--budget", "cosine=0.9", "--align", "1", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["accuracy"]["data"] == "held-out" and doc["accuracy"]["searched"] is False
    assert doc["accuracy"]["batches"] == 3
    held = list(CalibrationData.from_path(test, onnx.load(str(model))))
    assert doc["accuracy"]["cosine"] == accuracy_report(str(model), str(out), held).cosine
    code, stdout, _ = run_cli(capsys, "prune", model, "-o", out, "--calib", calib, "--eval", ev,
                              "--budget", "cosine=0.9", "--align", "1")
    assert code == 0 and "give --test PATH for a held-out figure" in flat(stdout)
    code, _, stderr = run_cli(capsys, "prune", model, "-o", tmp_path / "x.onnx", "--calib", calib, "--test",
                              _data(tmp_path / "y", 2, 3, name="nope"), "--ratio", "0.5")
    assert code == 2 and "nope" in flat(stderr) and not (tmp_path / "x.onnx").exists()

"""``graphopt prune --kinds layers``: the layers table and --json (Block Influence per layer, the removed one),
and bad input (no layer groups, more layers than the model has, layers mixed with heads, no calibration) exiting
2 with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture

MODELS = Path(__file__).resolve().parents[2] / "models"
BERT = MODELS / "bert_tiny_ts.onnx"


def _mlp(path: Path) -> Path:
    """A plain MLP: no residual branch, so no layer group."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.standard_normal((8, 16))), ("w2", rng.standard_normal((16, 8))))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_layers_json_and_table(tmp_path, capsys):
    out = tmp_path / "l.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", BERT, "-o", out, "--calib", "generate", "--kinds", "layers",
                                   "--layers", "1", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert [(lay["name"], lay["removed"]) for lay in doc["whole_layers"]] == [("layer1", True), ("layer0", False)]
    assert all(0 < lay["influence"] < 1 for lay in doc["whole_layers"])
    assert doc["pruned"] == 1 and doc["achieved"] == 0.5 and doc["options"]["layers"] == 1
    assert all(r["how"].startswith("not applicable") for r in doc["refits"]) and len(doc["refits"]) == 2
    assert doc["params_after"] < doc["params_before"] and 0 < doc["accuracy"]["cosine"] <= 1
    onnx.checker.check_model(onnx.load(out))
    code, stdout, stderr = run_cli(capsys, "prune", BERT, "-o", tmp_path / "r.onnx", "--calib", "generate",
                                   "--kinds", "layer", "--ratio", "0.6")
    assert code == 0, stderr
    text = flat(stdout)
    assert "block influence" in text and "layer1.attn, layer1.mlp" in text and "removed" in text
    assert "block FLOPs kept 0.500 (asked 0.600); 1 of 2 layers removed" in text


def test_layers_bad_input_exits_2_nothing_written(tmp_path, capsys):
    mlp = _mlp(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    cases = [
        ([mlp, "--calib", "generate", "--kinds", "layers", "--layers", "1"], "the model has no whole layer to remove"),
        ([mlp, "--calib", "generate", "--kinds", "layers", "--ratio", "0.5"], "no whole layer to remove"),
        ([BERT, "--calib", "generate", "--kinds", "layers", "--layers", "3"],
         "cannot remove 3 layers: the model has 2 removable layer(s) (layer0, layer1)"),
        ([BERT, "--calib", "generate", "--kinds", "layers,heads", "--ratio", "0.5"],
         "whole layers cannot be removed together with heads"),
        ([BERT, "--calib", "generate", "--kinds", "ffn", "--layers", "1"], "goes with kinds=layers"),
        ([BERT, "--layers", "1"], "Block Influence on calibration data: --calib"),
        ([BERT, "--calib", "generate", "--layers", "0"], "--layers must be a positive integer"),
    ]
    for argv, message in cases:
        code, _, stderr = run_cli(capsys, "prune", *argv[:1], "-o", out, *argv[1:])
        assert code == 2, (argv, stderr)
        assert message in flat(stderr), (argv, stderr)
        assert not out.exists()


def test_layers_html_report_equals_json(tmp_path, capsys):
    from graphopt.report import check_numbers, parse_report

    report = tmp_path / "layers.html"
    code, stdout, stderr = run_cli(capsys, "prune", BERT, "-o", tmp_path / "l.onnx", "--calib", "generate",
                                   "--layers", "1", "--report", report, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    parsed = parse_report(report.read_text(encoding="utf-8"))
    assert check_numbers(parsed, doc) == [] and parsed.doc == json.loads(json.dumps(doc))
    assert "Whole layers by Block Influence" in report.read_text(encoding="utf-8")
    assert "Low-rank per layer" not in report.read_text(encoding="utf-8")

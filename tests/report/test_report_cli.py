"""``--report FILE.html`` on ``graphopt optimize``, ``quantize`` and ``bench``: the
file is written, self-contained, with the sections the run has, and its
numbers (and embedded document) equal the ``--json`` document printed by the
same run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from helpers import restore_logging, run_cli  # noqa: F401 - autouse fixture
from graphopt.report import check_numbers, parse_report

BERT = MODELS / "bert_tiny_ts.onnx"


def _mlp(path: Path) -> Path:
    """x[1, 8, 64] -> MatMul [64, 128] -> Relu -> MatMul [128, 64] -> y: two
    MatMuls large enough for INT8 sites (>= 4096 weights)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32) * 0.1, "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Identity", ["r"], ["r2"]), helper.make_node("MatMul", ["r2", "w2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64])], initializer=[w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def _checked(report: Path, doc: dict) -> list[str]:
    """The report's section ids, after checking it against ``doc``."""
    parsed = parse_report(report.read_text(encoding="utf-8"))
    assert parsed.references == []
    assert parsed.images and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert check_numbers(parsed, doc) == []
    assert parsed.cells  # numbers were checked, not an empty report
    assert parsed.doc == json.loads(json.dumps(doc))
    return parsed.sections


def test_optimize_report_equals_json(tmp_path, capsys):
    report = tmp_path / "optimize.html"
    code, out, err = run_cli(capsys, "optimize", BERT, "-o", tmp_path / "o.onnx", "-p", "O1", "--report", report,
                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert _checked(report, doc) == ["summary", "verification", "ops", "passes"]
    keys = {k for k, _ in parse_report(report.read_text()).cells}
    assert {"before/nodes", "after/nodes", "before/parameters", "file_bytes/after", "verify/outputs/0/cosine",
            "verify/outputs/0/rtol", "passes/0/nodes_before"} <= keys


def test_optimize_report_without_json(tmp_path, capsys):
    report = tmp_path / "r.html"
    code, out, err = run_cli(capsys, "optimize", _mlp(tmp_path / "mlp.onnx"), "-o", tmp_path / "o.onnx",
                             "--report", report)
    assert code == 0, err
    assert "report written to" in " ".join(out.split())
    parsed = parse_report(report.read_text())
    assert parsed.sections == ["summary", "verification", "ops", "passes"]
    assert parsed.doc["after"]["ops"].get("Identity") is None  # the report shows the run's document


def test_quantize_report_equals_json(tmp_path, capsys):
    report = tmp_path / "quantize.html"
    code, out, err = run_cli(capsys, "quantize", _mlp(tmp_path / "mlp.onnx"), "-o", tmp_path / "q.onnx",
                             "--calib", "generate", "--calib-count", "2", "--report", report, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["before"]["nodes"] == 4 and doc["after"]["ops"]["QuantizeLinear"] >= 1
    assert _checked(report, doc) == ["summary", "verification", "ops", "int8-layers", "passes"]
    keys = {k for k, _ in parse_report(report.read_text()).cells}
    assert {f"sqnr_db/{name}" for name in doc["sqnr_db"]} <= keys and len(doc["sqnr_db"]) == 2
    assert {"bytes_before", "bytes_after", "cosine", "outputs/0/cosine"} <= keys


def test_bench_report_with_profile(tmp_path, capsys):
    model = _mlp(tmp_path / "mlp.onnx")
    report = tmp_path / "bench.html"
    code, out, err = run_cli(capsys, "bench", model, model, "--runs", "2", "--warmup", "1", "--profile", "--top", "3",
                             "--report", report, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert _checked(report, doc) == ["summary", "latency", "profile"]
    keys = {k for k, _ in parse_report(report.read_text()).cells}
    assert {"models/0/median_ms", "models/1/ratio", "models/1/median_ms"} <= keys
    assert any(k.startswith("profiles/") and k.endswith("/ms") for k in keys)


def test_bad_report_path_is_exit_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(capsys, "optimize", BERT, "-o", out, "--report", tmp_path / "missing" / "r.html")
    assert code == 2 and "does not exist" in " ".join(err.split())
    assert not out.exists()
    code, _, err = run_cli(capsys, "bench", BERT, "--runs", "1", "--report", tmp_path)
    assert code == 2 and "is a folder" in " ".join(err.split())

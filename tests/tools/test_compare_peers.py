"""tools/compare_peers.py on a committed model: the report's structure and
numbers that do not depend on timing, failing and missing peers as rows, the
spread against an earlier run. No timing thresholds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import MODELS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare_peers  # noqa: E402
import peer_report  # noqa: E402
from simplifier_checks import count_nodes  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run on gpt2_tiny_ts: graphopt O1 and O2 (ort), plus a peer made
    'not installed' and a tool that does not exist as a module."""
    tmp = tmp_path_factory.mktemp("peers")
    corpus = tmp / "corpus"
    corpus.mkdir()
    shutil.copy(MODELS / "gpt2_tiny_ts.onnx", corpus)
    saved = dict(compare_peers.MODULE)
    compare_peers.MODULE["onnxslim"] = "graphopt_no_such_module"
    try:
        code = compare_peers.main([str(corpus), str(tmp / "out"), "--tools", "graphopt,graphopt-O2-ort,onnxslim",
                                   "--seconds", "0", "--min-runs", "3", "--warmup", "1", "--roofline-n", "128",
                                   "--sequence", "16", "--keep"])
    finally:
        compare_peers.MODULE.clear()
        compare_peers.MODULE.update(saved)
    return code, tmp / "out", json.loads((tmp / "out" / "report.json").read_text())


def test_report_rows_and_numbers(run):
    code, out, doc = run
    assert code == 0
    (entry,) = doc["models"]
    assert entry["model"] == "gpt2_tiny_ts"
    assert entry["inputs"] == {"input_ids": [1, 16], "attention_mask": [1, 16]}
    assert entry["nodes"] == count_nodes(onnx.load(str(MODELS / "gpt2_tiny_ts.onnx"), load_external_data=False))[0]
    rows = entry["tools"]
    assert list(rows) == ["graphopt", "graphopt-O2-ort", "onnxslim"]
    for tool in ("graphopt", "graphopt-O2-ort"):
        row = rows[tool]
        written = onnx.load(row["output"], load_external_data=False)
        assert row["ok"] and row["checker"] == "ok" and row["ort_run"] == "ok" and row["signature_diffs"] == []
        assert row["nodes"] == count_nodes(written)[0]
        assert row["rss_mb"] > 0 and row["wall_s"] >= row["work_s"] > 0
        assert set(row) >= {"ratio_all", "ratio_disable", "median_all_ms", "p90_all_ms", "gflops"}
    assert rows["graphopt"]["scale_rel_err"] <= 1e-5 and rows["graphopt"]["outputs_ok"]
    assert rows["graphopt-O2-ort"]["fused"] == {"Attention": 2, "LayerNormalization": 5, "FastGelu": 2}
    assert rows["graphopt-O2-ort"]["scale_rel_err"] <= 1e-4
    assert rows["onnxslim"] == {"ok": False, "error": "not installed (pip install onnxslim)"}
    # GFLOP/s: the original's MatMul/Gemm FLOPs over each median
    assert rows["graphopt"]["gflops"] == pytest.approx(entry["flops"] / rows["graphopt"]["median_all_ms"] / 1e6)
    assert doc["roofline"]["n"] == 128 and doc["roofline"]["peak_gflops"] > 0


def test_report_markdown_and_chart(run):
    _, out, doc = run
    text = (out / "report.md").read_text()
    assert text == peer_report.report_markdown(doc)
    assert "### gpt2_tiny_ts" in text and "**Roofline**: fp32 GEMM 128×128×128" in text
    assert "| onnxslim | - | | - | failed: not installed (pip install onnxslim) |" in text
    assert "| graphopt-O2-ort |" in text and "Attention 2, LayerNormalization 5, FastGelu 2" in text
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_tool_is_a_row_with_its_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    args = compare_peers.argparse.Namespace(timeout=60.0)
    rows = compare_peers.optimize_all(bad, ["graphopt"], args, tmp_path / "work")
    assert rows["graphopt"]["ok"] is False
    assert rows["graphopt"]["error"].startswith("LoadError: ")
    entry = {"model": "bad", "size_mb": 0.0, "inputs": {}, "nodes": 0, "original_ms": {}, "tools": rows}
    assert "| graphopt |" in peer_report.model_table(entry, ["all"], None)
    assert "failed: LoadError: " in peer_report.model_table(entry, ["all"], None)


def test_spread_against_a_previous_run():
    def doc(ratios):
        return {"started": "then", "models": [{"model": "m", "tools": {
            t: {"ratio_all": r, "ratio_disable": r + 0.1} for t, r in ratios.items()}}]}

    sp = peer_report.spread(doc({"a": 0.95, "b": 1.10}), doc({"a": 0.97, "b": 1.00, "c": 0.5}))
    assert sp["pairs"] == 4
    assert sp["max_abs_diff"] == pytest.approx(0.10)
    assert sp["median_abs_diff"] == pytest.approx(0.06)
    assert sp["within_0.03"] == 0.5
    assert [(d["tool"], d["level"]) for d in sp["largest"][:2]] == [("b", "all"), ("b", "disable")]
    assert peer_report.spread(doc({"a": 1.0}), {"models": []}) == {"pairs": 0}


def test_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare_peers.main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        compare_peers.main([str(tmp_path), str(tmp_path / "out"), "--tools", "graphopt,nosuch"])
    assert e.value.code == 2 and "unknown tool(s) ['nosuch']" in capsys.readouterr().err


def test_gemm_peak_measures_both():
    from graphopt.bench import gemm_peak

    peak = gemm_peak(64, threads=1, runs=2)
    assert (peak.n, peak.threads, peak.runs) == (64, 1, 2)
    assert peak.numpy_gflops > 0 and peak.ort_gflops > 0
    assert peak.peak_gflops == max(peak.numpy_gflops, peak.ort_gflops)
    with pytest.raises(ValueError, match="n >= 1"):
        gemm_peak(0)
    assert np.isfinite(peak.peak_gflops)

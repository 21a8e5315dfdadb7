"""tools/sweep_backend.py over a few backend test cases of the onnx wheel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import sweep_backend  # noqa: E402

from graphopt.errors import InputError, VerificationError  # noqa: E402

CASES = r"simple/test_(gradient_of_add|sign_model|single_relu_model|sequence_model1)$"


def test_sweep_classifies_chosen_cases_and_writes_report(tmp_path):
    out, report = tmp_path / "rows.json", tmp_path / "sweep.md"
    code = sweep_backend.main(["--folders", "simple", "--filter", CASES, "--pipelines", "O1:ort,O2:onnx",
                               "--workers", "1", "--cache", str(tmp_path / "cache"), "--json", str(out),
                               "--report", str(report), "--quiet"])
    rows = json.loads(out.read_text())["rows"]
    got = {(r["name"], r["pipeline"]): r["cls"] for r in rows}
    assert got == {
        ("test_gradient_of_add", "O1:ort"): "onnxruntime-unsupported",
        ("test_gradient_of_add", "O2:onnx"): "onnxruntime-unsupported",
        ("test_sign_model", "O1:ort"): "ok", ("test_sign_model", "O2:onnx"): "ok",
        ("test_single_relu_model", "O1:ort"): "ok", ("test_single_relu_model", "O2:onnx"): "ok",
        ("test_sequence_model1", "O1:ort"): "ok",
        ("test_sequence_model1", "O2:onnx"): "ok",
    }
    gradient = next(r for r in rows if r["name"] == "test_gradient_of_add")
    assert "Gradient(-1) is not a registered function/op" in gradient["reason"]
    assert code == 0  # unsupported cases are excluded
    text = report.read_text()
    assert "| simple | O1:ort | 4 | 3 | 0 | 0 | 0 | 0 | 0 | 1 |" in text
    assert "## Non-ok cases by cause\n\nNone." in text


@pytest.mark.parametrize(("error", "cls", "reason"), [
    (InputError("bad input here"), "refused", "InputError: bad input here"),
    (VerificationError("outputs differ"), "verify-failed", "VerificationError: outputs differ"),
    (RuntimeError("boom"), "crash", "RuntimeError: boom"),
])
def test_run_case_maps_errors_to_classes(monkeypatch, tmp_path, error, cls, reason):
    from graphopt.passmanager import PassManager

    def fail(self, model):
        raise error

    monkeypatch.setattr(PassManager, "run", fail)
    data = Path(sweep_backend.data_dir())
    case = sweep_backend.Case("simple", "test_sign_model", str(data / "simple" / "test_sign_model"))
    row = sweep_backend.run_case(case, "O1:ort", str(tmp_path))
    assert row.cls == cls and row.reason.startswith(reason)


def test_a_case_over_the_timeout_is_recorded_and_its_worker_replaced():
    data = Path(sweep_backend.data_dir())
    case = sweep_backend.Case("simple", "test_sign_model", str(data / "simple" / "test_sign_model"))
    rows = sweep_backend.sweep([(case, "O1:ort")], workers=1, timeout=0.0, max_tasks=10, progress=False)
    assert [(r.cls, r.reason) for r in rows] == [("timeout", "over 0 s")]


def test_differs_uses_the_backend_tolerance_and_names_the_difference():
    import numpy as np

    a = np.array([1.0, 2.0], np.float32)
    assert sweep_backend._differs(a, a * (1 + 5e-4)) == ""
    assert sweep_backend._differs(a, a * (1 + 5e-3)) == "Mismatched elements: 2 / 2 (100%)"
    assert sweep_backend._differs([a], [a, a]) == "sequence lengths differ"
    assert sweep_backend._differs(None, a) == "optional presence differs"
    assert sweep_backend._differs(np.array([1, 2]), np.array([1, 3])) == "1 elements differ"
    assert sweep_backend._differs(a, a.astype(np.float16)) == "dtype float32 vs float16"


def test_via_cli_runs_graphopt_optimize_in_process(tmp_path):
    out = tmp_path / "rows.json"
    code = sweep_backend.main(["--folders", "simple", "--filter", r"simple/test_(sign_model|sequence_model1)$",
                               "--pipelines", "O2:ort", "--via", "cli", "--cache", str(tmp_path / "cache"),
                               "--json", str(out), "--quiet"])
    rows = json.loads(out.read_text())["rows"]
    assert code == 0 and [(r["name"], r["cls"]) for r in rows] == [("test_sequence_model1", "ok"),
                                                                    ("test_sign_model", "ok")]


def test_cli_failure_keeps_exit_code_and_message(monkeypatch, tmp_path):
    import graphopt.cli.main

    monkeypatch.setattr(graphopt.cli.main, "main", lambda argv: 2)
    data = Path(sweep_backend.data_dir())
    case = sweep_backend.Case("simple", "test_sign_model", str(data / "simple" / "test_sign_model"))
    row = sweep_backend.run_case(case, "O1:ort", str(tmp_path), via="cli")
    assert (row.cls, row.reason) == ("refused", "_CliFailure: exit 2:")

"""tools/compare_simplifiers.py: the steps that make every tool's timed work the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import compare_simplifiers  # noqa: E402
import simplifier_worker  # noqa: E402


def _model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_rotated_moves_the_first_tool_each_repetition():
    tools = ["graphopt", "onnxslim", "onnxsim"]
    assert [compare_simplifiers.rotated(tools, r) for r in range(4)] == [
        ["graphopt", "onnxslim", "onnxsim"], ["onnxslim", "onnxsim", "graphopt"],
        ["onnxsim", "graphopt", "onnxslim"], ["graphopt", "onnxslim", "onnxsim"]]
    assert compare_simplifiers.rotated([], 3) == []


def test_settle_reads_the_model_and_its_data(tmp_path):
    path = _model(tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").write_bytes(b"\0" * 100)
    assert compare_simplifiers.settle(path) >= 0.0


@pytest.mark.parametrize("tool, check, durable, checked", [
    ("graphopt", True, True, True), ("onnxsim", True, True, False), ("onnxscript", False, False, False)])
def test_check_and_sync_times_the_steps_it_runs(tool, check, durable, checked, tmp_path, monkeypatch):
    out = _model(tmp_path / "out.onnx")
    calls: list[str] = []
    monkeypatch.setattr(onnx.checker, "check_model", lambda path, *a, **k: calls.append(path))
    times = simplifier_worker._check_and_sync(tool, out, check, durable)
    assert set(times) == {"check_s", "sync_s"}
    assert calls == ([str(out)] if checked else [])
    assert times["sync_s"] >= 0.0 and (durable or times["sync_s"] < 0.01)


def test_check_and_sync_fails_on_an_invalid_output(tmp_path):
    out = tmp_path / "bad.onnx"
    model = onnx.load(str(_model(tmp_path / "m.onnx")))
    model.graph.node[1].op_type = "NoSuchOp"
    onnx.save(model, out)
    with pytest.raises(onnx.checker.ValidationError):
        simplifier_worker._check_and_sync("graphopt", out, True, True)


def test_worker_reports_the_phases_and_their_sum(tmp_path):
    src = _model(tmp_path / "m.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_simplifiers.py"), "--worker", "graphopt",
                           str(src), str(out_dir / "m.O1.onnx")], capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith(simplifier_worker.RESULT_MARK))
    result = json.loads(line[len(simplifier_worker.RESULT_MARK):])
    assert result["ok"] is True
    parts = ("load_s", "opt_s", "save_s", "check_s", "sync_s")
    assert result["work_s"] == pytest.approx(sum(result[k] for k in parts))
    assert [n.op_type for n in onnx.load(str(out_dir / "m.O1.onnx")).graph.node] == ["Relu"]

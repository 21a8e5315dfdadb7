"""``graphopt quantize``: INT8 on bert_tiny with generated calibration, the
``--json`` report, FP16 without calibration, and bad input: exit 2 with a
message and no traceback, nothing written; a missed budget: exit 1, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import MODELS
from helpers import flat as _flat, restore_logging, run_cli as _run  # noqa: F401 - autouse fixture

BERT = MODELS / "bert_tiny_ts.onnx"





def _ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int8_generated_calibration_writes_qdq_model(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out, "--calib", "generate", "--calib-count", "2")
    assert code == 0, stderr
    assert f"wrote {out}" in _flat(stdout)
    assert "9 quantized layers" in _flat(stdout)
    counts = _ops(out)
    assert counts["QuantizeLinear"] == 9 and counts["MatMulIntegerToFloat"] == 9 and "MultiHeadAttention" not in counts
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["graphopt.quantization"])["target"] == "ort"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_json_report(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out, "--calib", "generate", "--calib-count", "2",
                                "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert {"input", "output", "pipeline", "target", "seconds", "kept_float", "budget", "passes", "outputs",
            "sqnr_db", "bytes_before", "bytes_after", "batches", "cosine", "size_ratio"} <= set(doc)
    assert doc["output"] == str(out) and doc["target"] == "ort" and doc["budget"] is None
    assert doc["pipeline"].endswith(",qdq{method=minmax}")
    assert doc["kept_float"] == [] and doc["batches"] == 2
    assert [o["name"] for o in doc["outputs"]] == ["last_hidden_state", "pooler_output"]
    assert all(o["cosine"] >= 0.999 for o in doc["outputs"])
    assert len(doc["sqnr_db"]) == 9 and all(isinstance(v, float) for v in doc["sqnr_db"].values())
    assert doc["bytes_before"] == BERT.stat().st_size and 0 < doc["bytes_after"] < doc["bytes_before"]
    assert doc["passes"][-1]["name"] == "qdq" and doc["passes"][-1]["stats"]["sites"] == 9
    assert doc["not_quantized"] == {"activation weight": 4}  # attention's QK^T and AV products


def test_fused_attention_left_float_is_reported_with_what_to_do(tmp_path, capsys):
    """An O2 model's fused Attention reads the mask as an attention bias, which QAttention has no input for: it
    stays float, and quantize says so and what to do instead (quantize the model before O2)."""
    fused = tmp_path / "o2.onnx"
    assert _run(capsys, "optimize", BERT, "-o", fused, "-p", "O2")[0] == 0
    assert _ops(fused)["Attention"] == 2
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _run(capsys, "quantize", fused, "-o", out, "--calib", "generate", "--calib-count", "2")
    assert code == 0, stderr
    text = _flat(stdout)
    assert "not quantized (left float): 2 Attention with past, attention bias, packed sizes or rotary" in text
    assert "quantize the model before `optimize -p O2`" in text
    assert _ops(out)["Attention"] == 2 and "QAttention" not in _ops(out)
    code, stdout, _ = _run(capsys, "quantize", fused, "-o", tmp_path / "out2.onnx", "--calib", "generate",
                           "--calib-count", "2", "--json")
    assert json.loads(stdout)["not_quantized"] == {"Attention with past, attention bias, packed sizes or rotary": 2}


def test_float16_needs_no_calibration(tmp_path, capsys):
    out = tmp_path / "f16.onnx"
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out, "--float", "fp16")
    assert code == 0, stderr
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(out).graph.initializer)
    assert "QuantizeLinear" not in _ops(out)


def _npz(path: Path, **override: np.ndarray) -> Path:
    arrays = {"input_ids": np.zeros((1, 8), np.int64), "attention_mask": np.ones((1, 8), np.int64),
              "token_type_ids": np.zeros((1, 8), np.int64)}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


BAD = {
    "no-calib": (lambda d: [], "INT8 (and GPTQ) quantization needs calibration data: --calib PATH"),
    "bad-budget": (lambda d: ["--calib", "generate", "--budget", "cos=0.9"],
                   "--budget expects cosine=VALUE or argmax=VALUE with 0 < VALUE <= 1 (e.g. --budget cosine=0.99), "
                   "got 'cos=0.9'"),
    "budget-above-1": (lambda d: ["--calib", "generate", "--budget", "cosine=1.5"], "got 'cosine=1.5'"),
    "wrong-name": (lambda d: ["--calib", _npz(d / "c.npz", input_ids=None, input_idz=np.zeros((1, 8), np.int64))],
                   "'input_idz' is not an input of the model; did you mean 'input_ids'?"),
    "wrong-dtype": (lambda d: ["--calib", _npz(d / "c.npz", input_ids=np.zeros((1, 8), np.float32))],
                    "input 'input_ids': expected dtype int64 (int64[batch, sequence]), got float32"),
    "wrong-rank": (lambda d: ["--calib", _npz(d / "c.npz", input_ids=np.zeros(8, np.int64))],
                   "input 'input_ids': expected rank 2 (int64[batch, sequence]), got rank 1 with shape (8,)"),
    "missing-path": (lambda d: ["--calib", d / "nope.npz"], "nope.npz' does not exist; give an .npz/.npy file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(case, tmp_path, capsys):
    build, fragment = BAD[case]
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    crash = tmp_path / "crash"
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out / "q.onnx", *build(data),
                                "--reproducer-dir", crash)
    assert code == 2, stderr
    assert "Traceback" not in stderr + stdout and "internal error" not in stderr
    assert _flat(stderr).startswith("error: ")
    assert fragment in _flat(stderr)
    assert list(out.iterdir()) == []
    assert not crash.exists()  # a user error, not a crashed pass


def test_missed_budget_exits_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """The budget search passes on the switched model, but the integer kernels
    miss it: simulated by a search that keeps nothing float."""
    from graphopt.passes.quantization import sensitivity

    monkeypatch.setattr(sensitivity, "keep_float_for_budget", lambda *a, **k: [])
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out / "q.onnx", "--calib", "generate",
                                "--calib-count", "2", "--budget", "cosine=0.999999")
    assert code == 1, stderr
    assert "Traceback" not in stderr
    err = _flat(stderr)
    assert "error: output cosine 0.99" in err
    assert "is below the budget 0.999999 on 2 calibration batches with onnxruntime's integer kernels; nothing was " \
           "written" in err
    assert list(out.iterdir()) == []


def test_budget_is_searched_and_checked_on_the_eval_inputs(tmp_path, capsys, monkeypatch):
    """With --eval, the budget search gets the evaluation batches (not the
    calibration ones) and the final check is reported on them."""
    from graphopt.passes.quantization import sensitivity
    from graphopt.verify.inputs import generate_inputs

    seen = []

    def search(model, plan, ranges, config, data, threshold, *rest, **kw):
        seen.append([b["input_ids"].copy() for b in data])
        return []

    monkeypatch.setattr(sensitivity, "keep_float_for_budget", search)
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    samples = [generate_inputs(str(BERT), seed=500 + i) for i in range(3)]
    for i, s in enumerate(samples):
        np.savez(evaluation / f"s{i}.npz", **s)
    out = tmp_path / "q.onnx"
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out, "--calib", "generate", "--calib-count", "2",
                                "--eval", evaluation, "--budget", "cosine=0.5", "--json")
    assert code == 0, stderr
    assert len(seen) == 1 and len(seen[0]) == 3
    for got, want in zip(seen[0], samples):
        np.testing.assert_array_equal(got, want["input_ids"])
    doc = json.loads(stdout)
    assert doc["budget"]["data"] == "evaluation" and doc["budget"]["threshold"] == 0.5
    assert doc["budget"]["score"] == min(o["cosine"] for o in doc["outputs"])
    assert doc["batches"] == 3


def test_test_inputs_are_the_report_and_the_budget_stays_on_eval(tmp_path, capsys, monkeypatch):
    """--test: the accuracy report (and its batch count) is on the held-out inputs; the budget is still
    checked on the --eval inputs it was searched on."""
    from graphopt.calibrate import report as report_module
    from graphopt.verify.inputs import generate_inputs

    folders = {}
    for name, seed, count in (("eval", 500, 3), ("test", 700, 2)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i in range(count):
            np.savez(folders[name] / f"s{i}.npz", **generate_inputs(str(BERT), seed=seed + i))
    out = tmp_path / "q.onnx"
    code, stdout, stderr = _run(capsys, "quantize", BERT, "-o", out, "--calib", "generate", "--calib-count", "2",
                                "--eval", folders["eval"], "--test", folders["test"], "--budget", "cosine=0.5",
                                "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["batches"] == 2 and doc["report_data"] == "held-out" and doc["budget"]["data"] == "evaluation"
    from graphopt.calibrate.data import CalibrationData

    on_eval = report_module.accuracy_report(str(BERT), str(out), list(CalibrationData.from_path(
        folders["eval"], onnx.load(str(BERT)))))
    assert doc["budget"]["score"] == min(o.cosine for o in on_eval.outputs)

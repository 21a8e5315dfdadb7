"""``graphopt factorize``: the report (table and --json), the speed guard from a cache file, bad options and
calibration data that does not match (exit 2, nothing written), and the factored model going on through
``optimize -p O2 --target ort`` and ``quantize`` (INT8 per-channel on both factors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture

K = 256


def _write_model(path: Path, rank: int = 32) -> Path:
    rng = np.random.default_rng(0)
    inits = []
    for name, seed in (("w1", 1), ("w2", 2)):
        r = np.random.default_rng(seed)
        w = (r.standard_normal((K, rank)) @ r.standard_normal((rank, K)) / K + 0.001 * r.standard_normal((K, K)))
        inits.append(numpy_helper.from_array(w.astype(np.float32), name))
    inits.append(numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "b1"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, K])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def _write_data(folder: Path, count: int, seed: int, name: str = "x", shape=(1, 8, K)) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.savez(folder / f"sample_{i:03d}.npz", **{name: rng.standard_normal(shape).astype(np.float32)})
    return folder


@pytest.fixture
def files(tmp_path):
    return (_write_model(tmp_path / "mlp.onnx"), _write_data(tmp_path / "calib", 6, 0),
            _write_data(tmp_path / "eval", 3, 1))


def test_factorize_json_report(files, tmp_path, capsys):
    model, calib, evaluation = files
    out = tmp_path / "out" / "f.onnx"
    out.parent.mkdir()
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, "--eval", evaluation,
                                   "--params", "0.5", "--no-speed-guard", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["factorized"] == 2 and doc["param_ratio"] <= 0.5 and doc["method"] == "svd-llm"
    assert all(r["rank"] % 8 == 0 and r["error"] < 1e-3 for r in doc["layers"])
    assert doc["accuracy"]["data"] == "evaluation" and doc["accuracy"]["cosine"] > 0.999
    assert [p.name for p in out.parent.iterdir()] == ["f.onnx"]
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("MatMul") == 4


def test_flops_budget(files, tmp_path, capsys):
    """--flops: the layers' output shapes are ["batch", 8, K] (symbolic), so both take M = --tokens and the
    FLOPs budget allocates as the parameter budget; the JSON reports tokens and flop_ratio."""
    model, calib, _ = files
    docs = {}
    for option in ("--flops", "--params"):
        out = tmp_path / f"{option[2:]}.onnx"
        code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, option, "0.5",
                                       "--tokens", "16", "--no-speed-guard", "--blas-threads", "0", "--json")
        assert code == 0, stderr
        docs[option] = json.loads(stdout)
    doc = docs["--flops"]
    assert [r["tokens"] for r in doc["layers"]] == [16, 16]
    assert doc["flops_before"] == 2 * 16 * 2 * K * K and doc["flop_ratio"] <= 0.5
    assert [r["rank"] for r in doc["layers"]] == [r["rank"] for r in docs["--params"]["layers"]]


def test_table_and_speed_cache(files, tmp_path, capsys):
    import onnxruntime

    model, calib, _ = files
    cache = tmp_path / "speed.json"
    # Every rank measured slower (a pre-filled cache, as if this machine had measured it): nothing factorized.
    cache.write_text(json.dumps({f"ort{onnxruntime.__version__}/t2/64x{K}x{K}/r{r}": 1.5 for r in range(8, 129, 8)}))
    out = tmp_path / "f.onnx"
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, "--params", "0.5",
                                   "--speed-cache", cache, "--tokens", "64", "--method", "asvd")
    assert code == 0, stderr
    text = flat(stdout)
    assert "0 of 2 layers factorized" in text and "skipped for speed: h, y" in text
    assert f"wrote {out}" in text


@pytest.mark.parametrize("argv, message", [
    (["--params", "1.5"], "--params must be in (0, 1]"),
    (["--rank", "0"], "--rank must be a positive integer"),
    (["--params", "0.5", "--budget", "cosine=0.99"], "not allowed with argument"),
    (["--budget", "speed=2"], "--budget expects METRIC=VALUE"),
    (["--params", "0.5", "--method", "tucker"], "invalid choice"),
    (["--params", "0.5", "--align", "0"], "--align must be a positive integer"),
    (["--flops", "0"], "--flops must be in (0, 1]"),
    (["--flops", "0.5", "--params", "0.5"], "not allowed with argument"),
    (["--flops", "0.5", "--blas-threads", "-1"], "--blas-threads must be >= 0"),
])
def test_bad_options_exit_2_nothing_written(files, tmp_path, capsys, argv, message):
    model, calib, _ = files
    out = tmp_path / "f.onnx"
    try:
        code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, *argv)
    except SystemExit as e:  # argparse's own errors (exclusive options, choices)
        captured = capsys.readouterr()
        code, stdout, stderr = e.code, captured.out, captured.err
    assert code == 2 and message in flat(stdout + stderr)
    assert not out.exists()


def test_missing_and_mismatched_calibration_exit_2(files, tmp_path, capsys):
    model, _, _ = files
    out = tmp_path / "f.onnx"
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--params", "0.5")
    assert code == 2 and "needs calibration data" in flat(stdout + stderr)
    wrong_name = _write_data(tmp_path / "wrong_name", 2, 0, name="input_ids")
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--params", "0.5", "--calib", wrong_name)
    assert code == 2, stdout + stderr
    wrong_shape = _write_data(tmp_path / "wrong_shape", 2, 0, shape=(1, 8, 17))
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--params", "0.5", "--calib", wrong_shape)
    assert code == 2, stdout + stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "calib", "eval", "mlp.onnx", "wrong_name", "wrong_shape"]


def test_factored_model_goes_through_o2_and_quantize(files, tmp_path, capsys):
    model, calib, evaluation = files
    factored, optimized, quantized = tmp_path / "f.onnx", tmp_path / "o2.onnx", tmp_path / "q.onnx"
    code, _, stderr = run_cli(capsys, "factorize", model, "-o", factored, "--calib", calib, "--rank", "32",
                              "--no-speed-guard", "-q")
    assert code == 0, stderr
    code, _, stderr = run_cli(capsys, "optimize", factored, "-o", optimized, "-p", "O2", "--target", "ort", "-q")
    assert code == 0, stderr
    code, stdout, stderr = run_cli(capsys, "quantize", optimized, "-o", quantized, "--calib", calib, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["cosine"] > 0.99
    q = onnx.load(quantized)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    # Both factors of both layers are INT8 per channel (three through DequantizeLinear, the bias-carrying one
    # fused into MatMulIntegerToFloat by the ort placement).
    factors = [f"{w}_lowrank_{ab}" for w in ("w1", "w2") for ab in ("a", "b")]
    for name in factors:
        assert inits[f"{name}_quantized"].dtype == np.int8, name
        assert inits[f"{name}_scale"].shape == (inits[f"{name}_quantized"].shape[1],), name
    x = np.random.default_rng(5).standard_normal((1, 8, K)).astype(np.float32)
    ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_report_equals_json_and_bad_report_path(files, tmp_path, capsys):
    from graphopt.report import check_numbers, parse_report

    model, calib, evaluation = files
    report = tmp_path / "factorize.html"
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", tmp_path / "f.onnx", "--calib", calib, "--eval",
                                   evaluation, "--params", "0.5", "--no-speed-guard", "--report", report, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    parsed = parse_report(report.read_text(encoding="utf-8"))
    assert check_numbers(parsed, doc) == [] and parsed.doc == json.loads(json.dumps(doc))
    keys = {k for k, _ in parsed.cells}
    assert {"accuracy/cosine", "accuracy/outputs/0/cosine", "layers/0/rank"} <= keys
    out = tmp_path / "o.onnx"
    code, _, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, "--params", "0.5",
                              "--no-speed-guard", "--report", tmp_path)
    assert code == 2 and "is a folder" in flat(stderr)
    assert not out.exists()


def test_test_inputs_give_the_held_out_figure(files, tmp_path, capsys):
    """--budget searches the --eval inputs; --test gives the report's figure on others (data "held-out", its own
    batch count and cosine), without --test the figure is flagged as searched."""
    from graphopt.calibrate.data import CalibrationData
    from graphopt.calibrate.report import accuracy_report

    model, calib, evaluation = files
    test = _write_data(tmp_path / "test", 2, 7)
    out = tmp_path / "f.onnx"
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, "--eval", evaluation,
                                   "--test", test, "--budget", "cosine=0.99", "--no-speed-guard", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert (doc["accuracy"]["data"], doc["accuracy"]["searched"], doc["accuracy"]["batches"]) == ("held-out", False, 2)
    held = list(CalibrationData.from_path(test, onnx.load(str(model))))
    assert doc["accuracy"]["cosine"] == accuracy_report(str(model), str(out), held).cosine
    code, stdout, stderr = run_cli(capsys, "factorize", model, "-o", out, "--calib", calib, "--eval", evaluation,
                                   "--budget", "cosine=0.99", "--no-speed-guard", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert (doc["accuracy"]["data"], doc["accuracy"]["searched"], doc["accuracy"]["batches"]) == ("evaluation", True, 3)

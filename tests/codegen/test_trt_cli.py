"""``graphopt build-engine``, ``graphopt check-trt`` and ``graphopt optimize
--target tensorrt --engine``: exit codes, reports, no traceback on expected
errors, nothing written on failure; and, without any TensorRT, the
pipeline still writes ONNX while asking for an engine exits 2 with the
install line."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from conftest import MODELS, sha256
from graphopt.cli.main import main
from trt_helpers import _restore_logging, needs_rtx, sidecar, unsupported_model  # noqa: F401

BERT = MODELS / "bert_tiny_ts.onnx"


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Neither flavour importable (as on a machine without the extras)."""
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@needs_rtx
def test_build_engine_json(tmp_path, capsys):
    engine = tmp_path / "bert.engine"
    code = main(["build-engine", str(BERT), "-o", str(engine), "--shapes", "input_ids=1x1:1x16:2x64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["engine"] == str(engine) and report["engine_bytes"] == engine.stat().st_size
    assert report["profiles"][0]["token_type_ids"]["max"] == [2, 64]
    assert sidecar(engine)["source_model"]["sha256"] == sha256(BERT)


@needs_rtx
def test_optimize_target_tensorrt_engine(tmp_path, capsys):
    out, engine, cache = tmp_path / "o2.onnx", tmp_path / "o2.engine", tmp_path / "tc.cache"
    before = sha256(BERT)
    code = main(["optimize", str(BERT), "-o", str(out), "-p", "O2", "--target", "tensorrt", "--opset", "23",
                 "--engine", str(engine), "--timing-cache", str(cache), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and sha256(BERT) == before
    assert report["engine"]["source_model"]["sha256"] == sha256(out)
    assert report["engine"]["attention_decomposable"] == 2 and cache.is_file()
    assert sidecar(engine)["engine_bytes"] == engine.stat().st_size


@needs_rtx
def test_build_engine_rejected_model_exits_2_naming_nodes(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_model(), path)
    code = main(["build-engine", str(path), "-o", str(tmp_path / "bad.engine")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "node 'uniq0' (Unique)" in err and "node 'msgelu' (com.microsoft::Gelu)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_check_trt_exit_codes_and_json(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_model(), path)
    assert main(["check-trt", str(path), "--table-only", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(i["node"], i["op_type"]) for i in report["issues"]] == [("uniq0", "Unique"),
                                                                     ("msgelu", "com.microsoft::Gelu")]
    assert main(["check-trt", str(BERT)]) == 0
    assert "TensorRT will import every node" in capsys.readouterr().out
    assert main(["check-trt", str(tmp_path / "missing.onnx")]) == 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--shapes", "input_ids=1x8:1x4:1x16"], "axis 1 of 'input_ids' has min 8, opt 4, max 16"),
    (["--shapes", "ids=1x8"], "'ids', which is not an input of the model"),
    (["--workspace", "0"], "--workspace must be a positive number of MiB"),
])
def test_build_engine_bad_options_exit_2(extra, message, tmp_path, capsys):
    code = main(["build-engine", str(BERT), "-o", str(tmp_path / "m.engine"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "ort", "--engine", "E"], "--engine needs --target tensorrt"),
    (["--target", "tensorrt", "--fp16"], "--fp16 configure a TensorRT engine; add --engine OUT.engine"),
    (["--target", "tensorrt", "--engine", "E", "--shapes", "x"], "--shapes expects NAME=MIN:OPT:MAX"),
])
def test_optimize_engine_usage_errors_write_nothing(extra, message, tmp_path, capsys):
    extra = [str(tmp_path / "m.engine") if a == "E" else a for a in extra]
    code = main(["optimize", str(BERT), "-o", str(tmp_path / "o.onnx"), "-p", "O2", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_without_tensorrt_the_pipeline_still_writes_onnx(no_tensorrt, tmp_path, capsys):
    out = tmp_path / "o2.onnx"
    assert main(["-q", "optimize", str(BERT), "-o", str(out), "-p", "O2", "--target", "tensorrt"]) == 0
    assert out.is_file()


def test_without_tensorrt_an_engine_exits_2_with_the_install_line(no_tensorrt, tmp_path, capsys):
    code = main(["optimize", str(BERT), "-o", str(tmp_path / "o.onnx"), "-p", "O2", "--target", "tensorrt",
                 "--engine", str(tmp_path / "o.engine")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'graphopt[trt-rtx]'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before the pipeline ran
    assert main(["build-engine", str(BERT), "-o", str(tmp_path / "m.engine")]) == 2
    assert "pip install 'graphopt[trt-rtx]'" in capsys.readouterr().err
    assert main(["check-trt", str(BERT), "--json"]) == 0  # falls back to the operator table
    assert json.loads(capsys.readouterr().out)["checker"] == "operators.md (TensorRT 10.15)"


def test_optimize_target_tensorrt_warns_about_nodes_tensorrt_rejects(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_model(), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--target", "tensorrt", "--no-verify"]) == 0
    err = capsys.readouterr().err
    assert "TensorRT will reject node 'uniq0' (Unique)" in err
    assert "TensorRT will reject node 'msgelu' (com.microsoft::Gelu)" in err

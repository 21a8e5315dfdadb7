"""INT8 on real trained models fed real-looking inputs: the PaddleOCR detector
and direction classifier in ``models/`` on text rendered by
``tools/ocr_inputs.py``, and the compare_quantizers table on one of them.

Bounds are the measured figures rounded down (minmax calibration on 6
rendered samples, evaluated on 3 others); the recognizer (not in ``models/``,
> 5 MB) and the mixed-precision runs are measured by the tool, see the
README."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, ROOT
from graphopt.cli.main import main

sys.path.insert(0, str(ROOT / "tools"))

import compare_quantizers  # noqa: E402
import ocr_inputs  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ocr")
    for model in ("paddleocr_det", "paddleocr_cls"):
        ocr_inputs.write(out, model, "calib", 0, 6)
        ocr_inputs.write(out, model, "eval", 1, 3)
    return out


def test_rendered_inputs_are_deterministic_and_preprocessed(tmp_path) -> None:
    ocr_inputs.write(tmp_path / "a", "paddleocr_det", "eval", 1, 1)
    ocr_inputs.write(tmp_path / "b", "paddleocr_det", "eval", 1, 1)
    a = np.load(tmp_path / "a/paddleocr_det/eval/sample_0000.npz")["x"]
    b = np.load(tmp_path / "b/paddleocr_det/eval/sample_0000.npz")["x"]
    assert a.shape == (1, 3, 320, 480) and a.dtype == np.float32
    assert np.array_equal(a, b)
    white = (1.0 - ocr_inputs.MEAN) / ocr_inputs.STD  # the page background, ImageNet-normalized
    assert np.allclose(a[0, :, -1, -1], white, atol=1e-6)
    assert (a[0, 0] < white[0] - 1).sum() > 500  # dark text pixels
    rec = ocr_inputs.rec_input(np.random.default_rng(0))
    assert rec.shape == (1, 3, 48, 320) and rec.min() >= -1.0 and rec.max() <= 1.0


@pytest.mark.parametrize("model, metric, bound", [
    ("paddleocr_det", "cosine", 0.95),     # probability map; measured 0.963 (0.996 with --budget cosine=0.995)
    ("paddleocr_cls", "argmax_agreement", 1.0),
])
def test_int8_on_rendered_text(data, tmp_path, capsys, model, metric, bound) -> None:
    import json

    out = tmp_path / f"{model}.int8.onnx"
    code = main(["quantize", str(MODELS / f"{model}.onnx"), "-o", str(out), "--calib", str(data / model / "calib"),
                 "--eval", str(data / model / "eval"), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    (output,) = doc["outputs"]
    assert output[metric] >= bound
    assert doc["size_ratio"] < 0.6


def test_compare_quantizers_table(data, tmp_path) -> None:
    args = argparse.Namespace(
        dim=["batch=1"], data_dir=data, calib_count=2, tools="ort-static,graphopt", method="minmax",
        budget="cosine=0.99", seconds=0.2, warmup=1, min_runs=2, timeout=300.0, keep=False)
    result = compare_quantizers.compare_model(MODELS / "paddleocr_cls.onnx", tmp_path, args)
    assert set(result["tools"]) == {"ort-static", "graphopt"}
    for row in result["tools"].values():
        assert row["ok"], row.get("error")
        assert 0 < row["cosine"] <= 1.0 + 1e-9 and row["runs"] >= 2 and row["ratio"] > 0
    table = compare_quantizers.markdown(result)
    assert table.splitlines()[0].startswith("### paddleocr_cls (fp32 median")
    assert "| graphopt |" in table and "| ort-static |" in table
    assert not list((tmp_path / "paddleocr_cls").glob("*.onnx"))  # outputs removed unless --keep

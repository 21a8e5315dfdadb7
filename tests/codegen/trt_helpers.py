"""Shared by the codegen tests: the ``--target tensorrt`` O2 outputs of
every committed model (made once per process and shared by the modules that
use them), the skip marker for tests that need TensorRT for RTX, models
TensorRT rejects. (Not a conftest.py: tests/conftest.py owns that module
name.)"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import MODELS
from helpers import restore_logging as _restore_logging  # noqa: F401 - re-exported autouse fixture
from graphopt.cli.main import main

CORPUS = sorted(MODELS.glob("*.onnx"))
VARIANTS = [(p, opset) for p in CORPUS for opset in (None, 23)]
VARIANT_IDS = [f"{p.stem}-{'opset23' if opset else 'own-opset'}" for p, opset in VARIANTS]

try:
    import tensorrt_rtx  # noqa: F401
    HAVE_RTX = True
except ImportError:
    HAVE_RTX = False
needs_rtx = pytest.mark.skipif(not HAVE_RTX, reason="needs TensorRT for RTX (pip install 'graphopt[trt-rtx]'); "
                                                    "CI installs it")



_O2_DIR = Path(tempfile.mkdtemp(prefix="graphopt-o2-tensorrt-"))
atexit.register(shutil.rmtree, _O2_DIR, True)
_O2: dict[tuple[Path, int | None], Path] = {}


def tensorrt_o2(path: Path, opset: int | None) -> Path:
    """The model after ``optimize -p O2 --target tensorrt [--opset 23]
    --no-verify`` (test_corpus_o2 verifies the numerics), made once."""
    key = (path, opset)
    if key not in _O2:
        out = _O2_DIR / f"{path.stem}.{opset or 'own'}.onnx"
        args = ["-q", "optimize", str(path), "-o", str(out), "-p", "O2", "--target", "tensorrt", "--no-verify"]
        assert main(args + (["--opset", str(opset)] if opset else [])) == 0
        _O2[key] = out
    return _O2[key]


def unsupported_model() -> onnx.ModelProto:
    """``x: float[n]`` -> Relu ('relu0') -> Unique ('uniq0') and
    com.microsoft.Gelu ('msgelu'): two nodes TensorRT rejects, one it takes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Unique", ["r"], ["u"], name="uniq0"),
             helper.make_node("Gelu", ["r"], ["g"], name="msgelu", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("u", TensorProto.FLOAT, None),
                                                helper.make_tensor_value_info("g", TensorProto.FLOAT, ["n"])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def sidecar(engine: Path) -> dict:
    return json.loads(Path(str(engine) + ".json").read_text())

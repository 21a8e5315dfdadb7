"""The engine runner: without a GPU it says so (BackendUnavailableError, not
a crash); on a machine with a GPU, its driver and TensorRT, engines built
from the committed models and their ``--target tensorrt`` outputs match
onnxruntime (``@pytest.mark.gpu``, skipped elsewhere with the reason)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import MODELS
from graphopt.codegen.tensorrt import build_engine
from graphopt.codegen.tensorrt.runner import EngineRunner, compare_with_onnxruntime, cuda_runtime
from graphopt.errors import BackendUnavailableError, InputError
from trt_helpers import _restore_logging, tensorrt_o2  # noqa: F401


def _gpu_reason() -> str | None:
    """None when a GPU, its driver and TensorRT are all here, else why not."""
    try:
        cuda_runtime()
        from graphopt.codegen.tensorrt import load_backend

        load_backend()
    except BackendUnavailableError as e:
        return str(e)
    return None


GPU_MISSING = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=f"needs a GPU and TensorRT: {GPU_MISSING}")


@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present: the no-driver path cannot be shown")
@pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-bindings not installed")
def test_without_a_driver_the_runner_says_so(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU and driver"):
        EngineRunner(engine)


def test_without_cuda_bindings_the_runner_gives_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(BackendUnavailableError, match=r"needs cuda-bindings .*pip install 'graphopt\[trt-rtx\]'"):
        EngineRunner(engine)


def test_missing_engine_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        EngineRunner(tmp_path / "missing.engine")


GPU_CASES = [("bert_tiny_ts", None), ("bert_tiny_ts", 23), ("llama_gqa_tiny_dynamo", 23), ("vit_tiny_ts", 23),
             ("paddleocr_det", None)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("stem", "opset"), GPU_CASES, ids=[f"{s}-{o or 'raw'}" for s, o in GPU_CASES])
def test_engine_matches_onnxruntime(stem, opset, tmp_path):
    source = MODELS / f"{stem}.onnx"
    model = source if opset is None else tensorrt_o2(source, opset)
    engine = tmp_path / "m.engine"
    build_engine(model, engine)
    dims = {"batch": 2, "sequence": 9} if not stem.startswith(("vit", "paddle")) else {}
    report = compare_with_onnxruntime(engine, model, dims=dims, rtol=1e-3, atol=1e-4)
    assert report.ok, report.summary()

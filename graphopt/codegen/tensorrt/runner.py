"""Run a serialized engine on a GPU and compare it with onnxruntime.

Uses ``cuda-bindings`` (``cuda.bindings.runtime``: ``cudaMalloc``,
``cudaMemcpy``, streams), never pycuda, which does not build without a
driver. The engine is deserialized with the flavour recorded in its sidecar
(``Runtime.deserialize_cuda_engine``), inputs are bound by name with
``IExecutionContext.set_input_shape`` / ``set_tensor_address`` and run with
``execute_async_v3`` (TensorRT Python API, "Performing Inference").

Needs an NVIDIA GPU, its driver and TensorRT of the engine's flavour; on a
machine without them :class:`EngineRunner` raises
:class:`~graphopt.errors.BackendUnavailableError` saying which is missing.
Engines of TensorRT for RTX run on the compute capabilities they were built
for (by default 8.0, 8.6, 8.9, 12.0; see the sidecar).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from graphopt.codegen.tensorrt.backend import Backend, load_backend, make_logger
from graphopt.codegen.tensorrt.builder import sidecar_path
from graphopt.errors import BackendUnavailableError, CodegenError, InputError

__all__ = ["EngineRunner", "cuda_runtime", "compare_with_onnxruntime"]

CUDA_HINT = "pip install 'graphopt[trt-rtx]' (or cuda-bindings)"


def cuda_runtime() -> Any:
    """``cuda.bindings.runtime``, after checking that a driver and a device
    answer.

    Raises:
        BackendUnavailableError: cuda-bindings is not installed, the NVIDIA
            driver is missing, or no CUDA device is visible.
    """
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise BackendUnavailableError(f"running an engine needs cuda-bindings ({e}); {CUDA_HINT}") from e
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # noqa: BLE001 - cuda.pathfinder raises its own error type when the driver is missing
        raise BackendUnavailableError(f"running an engine needs an NVIDIA GPU and driver; the CUDA driver could not "
                                      f"be loaded ({type(e).__name__}: {e}). Engines build on a CPU, but run only "
                                      "where a GPU is") from e
    if err != cudart.cudaError_t.cudaSuccess or not count:
        why = ("no device" if err == cudart.cudaError_t.cudaSuccess
               else f"{getattr(err, 'name', err)}: no driver, or one older than the CUDA runtime"
               if "InsufficientDriver" in str(err) else getattr(err, "name", str(err)))
        raise BackendUnavailableError(f"running an engine needs an NVIDIA GPU and driver; cudaGetDeviceCount "
                                      f"reports {why}. Engines build on a CPU, but run only where a GPU is")
    return cudart


def _check(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:  # cudaError_t.cudaSuccess is 0
        raise CodegenError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else rest


class EngineRunner:
    """A deserialized engine with one execution context.

    Args:
        engine_path: the ``.engine`` file (its sidecar names the flavour).
        backend: the TensorRT flavour; default: the sidecar's, else the
            first importable.

    Raises:
        BackendUnavailableError: no GPU/driver, no cuda-bindings or no TensorRT.
        CodegenError: TensorRT cannot deserialize the engine (another
            version, or a GPU the engine was not built for).
    """

    def __init__(self, engine_path: str | Path, backend: Backend | None = None) -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise InputError(f"engine {self.path} does not exist")
        side = sidecar_path(self.path)
        self.info = json.loads(side.read_text()) if side.is_file() else {}
        self.cudart = cuda_runtime()
        self.backend = backend or load_backend(self.info.get("flavour"))
        trt = self.backend.trt
        self._logger = make_logger(self.backend)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            said = "; ".join(self._logger.errors[-3:]) or "no message"
            raise CodegenError(f"TensorRT ({self.backend.flavour} {self.backend.version}) could not deserialize "
                               f"{self.path}: {said}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once: ``{input name: array}`` -> ``{output name: array}``.

        Arrays are cast to the engine's tensor dtypes (``trt.nptype``);
        shapes must lie inside the engine's optimization profile.

        Raises:
            InputError: a missing or unknown input, or a shape outside the profile.
            CodegenError: a CUDA call or the execution failed.
        """
        trt, cudart = self.backend.trt, self.cudart
        missing = [n for n in self.inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self.inputs]
        if missing or unknown:
            raise InputError(f"engine inputs are {self.inputs}; missing {missing}, unknown {unknown}")
        buffers: list[int] = []
        stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        try:
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                if not self.context.set_input_shape(name, array.shape):
                    raise InputError(f"input '{name}' shape {array.shape} is outside the engine's optimization "
                                     f"profile {self.engine.get_tensor_profile_shape(name, 0)}")
                ptr = _check(cudart.cudaMalloc(max(array.nbytes, 1)), "cudaMalloc")
                buffers.append(ptr)
                _check(cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy to device")
                self.context.set_tensor_address(name, ptr)
            results: dict[str, np.ndarray] = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise CodegenError(f"output '{name}' has a data-dependent shape {shape}; this runner "
                                       "handles outputs whose shape follows from the input shapes only")
                results[name] = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                ptr = _check(cudart.cudaMalloc(max(results[name].nbytes, 1)), "cudaMalloc")
                buffers.append(ptr)
                self.context.set_tensor_address(name, ptr)
            if not self.context.execute_async_v3(int(stream)):  # TensorRT takes the raw handle
                raise CodegenError(f"TensorRT could not execute {self.path}: {'; '.join(self._logger.errors[-3:])}")
            _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            for name, array in results.items():
                ptr = self.context.get_tensor_address(name)
                _check(cudart.cudaMemcpy(array.ctypes.data, ptr, array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy to host")
            return results
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)
            cudart.cudaStreamDestroy(stream)


def compare_with_onnxruntime(engine_path: str | Path, model_path: str | Path,
                             inputs: Mapping[str, np.ndarray] | None = None, dims: Mapping[str, int] | None = None,
                             rtol: float = 1e-3, atol: float = 1e-4, seed: int = 0) -> Any:
    """Run the engine and the ONNX model (onnxruntime, CPU) on the same
    inputs and compare every output.

    Args:
        inputs: input arrays; default: generated by
            :func:`graphopt.verify.generate_inputs` with ``dims``.
        rtol, atol: tolerance (``|a - b| <= atol + rtol * |a|``); the
            defaults allow for TensorRT's kernels summing in another order.

    Returns:
        A :class:`graphopt.verify.CompareReport` (``.ok``, ``.summary()``).

    Raises:
        BackendUnavailableError: no GPU, driver or TensorRT (see :class:`EngineRunner`).
    """
    from graphopt.verify import compare_outputs, generate_inputs, run_model

    runner = EngineRunner(engine_path)
    feeds = dict(inputs) if inputs is not None else generate_inputs(model_path, dims=dims, seed=seed)
    expected = run_model(model_path, feeds)
    got = runner.run(feeds)
    ordered = {k: got[k] for k in expected if k in got}  # the model's output order
    ordered.update({k: v for k, v in got.items() if k not in ordered})
    return compare_outputs(expected, ordered, rtol=rtol, atol=atol)

"""Run ONNX models in onnxruntime for verification.

One place that turns "a model" (a path, an ``onnx.ModelProto``, or a graphopt IR
model) into an onnxruntime session and runs it on numpy inputs. Sessions are
built the same way for every model so that two models are compared under equal
conditions: CPU execution provider unless told otherwise, graph optimization
level ``ORT_ENABLE_BASIC`` (constant folding and redundant-node removal only; no
fusions that could hide or cause differences), two intra-op threads without
spinning (verification runs beside other work and must not busy-wait).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.errors import InputError, LoadError, VerificationError
from graphopt.verify.inputs import check_inputs, input_specs, needs_ort_value, numpy_dtype

logger = logging.getLogger(__name__)

__all__ = ["ModelRunError", "ModelSource", "make_session", "resolve_model", "run_model"]

#: Accepted forms of a model: a path, a ModelProto, or a graphopt IR model.
ModelLike = Any

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PROTOBUF_LIMIT = 2**31 - 1


class ModelRunError(VerificationError):
    """onnxruntime loaded the model but failed while running it on the inputs
    (shape mismatch inside the graph, out-of-range index, kernel error). A
    :class:`~graphopt.errors.VerificationError`: a rewritten model that no longer
    runs has failed verification."""


@dataclass(frozen=True)
class ModelSource:
    """A model resolved for running.

    Attributes:
        proto: the model's structure (external data not loaded when read from a
            path): used for input generation and signature checks.
        session_input: what ``onnxruntime.InferenceSession`` takes: the path
            (so external data, and models over 2 GB, load from disk) or the
            serialized bytes.
        label: a short description for messages (the path or ``"<ModelProto>"``).
    """

    proto: onnx.ModelProto
    session_input: str | bytes
    label: str


def resolve_model(model: ModelLike) -> ModelSource:
    """Resolve a path, ``onnx.ModelProto`` or graphopt IR model into a
    :class:`ModelSource`. Other objects go through ``graphopt.ir.to_proto``.

    Raises:
        LoadError: the path does not exist or is not an ONNX model, or a proto is
            over protobuf's 2 GB limit (save it with external data and pass the
            path).
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise LoadError(f"model file {str(path)!r} does not exist")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # DecodeError, OSError
            raise LoadError(f"cannot read {str(path)!r} as an ONNX model: {e}") from e
        return ModelSource(proto, str(path), str(path))
    if not isinstance(model, onnx.ModelProto):
        from graphopt.ir import to_proto  # lazy: graphopt.ir pulls in onnx_ir

        model = to_proto(model)
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise LoadError(
            "the model is over protobuf's 2 GB limit and cannot be passed to onnxruntime in memory; "
            "save it with external data (graphopt.save) and pass the path"
        )
    return ModelSource(model, model.SerializeToString(), "<ModelProto>")


def make_session(
    source: ModelSource,
    providers: Sequence[str] | None = None,
    optimization_level: str = "basic",
    intra_op_num_threads: int = 2,
) -> ort.InferenceSession:
    """Create the onnxruntime session for ``source`` (settings in the module doc).

    Args:
        providers: execution providers in priority order; default
            ``["CPUExecutionProvider"]``.
        optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``
            (``onnxruntime.GraphOptimizationLevel``).

    Raises:
        InputError: an unknown optimization level, or a provider this
            onnxruntime build does not have (the message lists those it has).
        LoadError: onnxruntime refused the model; its message is included.
    """
    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    absent = [p for p in providers if p not in available]
    if absent:
        raise InputError(f"execution provider(s) {absent} not available; this onnxruntime has {available}")
    if optimization_level not in _OPT_LEVELS:
        raise InputError(f"optimization level {optimization_level!r} is not one of {sorted(_OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = _OPT_LEVELS[optimization_level]
    options.intra_op_num_threads = intra_op_num_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4  # errors reach the caller as exceptions
    try:
        return ort.InferenceSession(source.session_input, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise LoadError(
            f"onnxruntime cannot load model {source.label}: {e}\n"
            f"check that onnxruntime {ort.__version__} supports its ops, opsets and ir_version "
            "(graphopt writes ir_version 10)"
        ) from e


def run_model(
    model: ModelLike | ModelSource,
    inputs: Mapping[str, np.ndarray],
    providers: Sequence[str] | None = None,
    optimization_level: str = "basic",
) -> dict[str, np.ndarray]:
    """Run ``model`` once in onnxruntime.

    Inputs are validated first with :func:`graphopt.verify.inputs.check_inputs`.
    bfloat16 and float8 tensors go in and come out through ``OrtValue`` (the
    numpy bridge of onnxruntime's Python API does not take them) as
    ``ml_dtypes`` arrays.

    Args:
        model: a path, ``onnx.ModelProto``, graphopt IR model, or a resolved
            :class:`ModelSource`.
        inputs: ``{input name: array}`` for every runtime input (initializer-backed
            graph inputs may be left out).

    Returns:
        ``{output name: array}`` in the model's output order. Sequence outputs
        come back as lists of arrays.

    Raises:
        InputError: the inputs do not match the model's declared inputs.
        LoadError: the model cannot be read or onnxruntime refuses it.
        ModelRunError: onnxruntime fails while running it.
    """
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    feed = {name: np.asarray(value) for name, value in inputs.items()}
    check_inputs(source.proto, feed)
    session = make_session(source, providers, optimization_level)
    names = [o.name for o in session.get_outputs()]
    specs = {s.name: s.elem_type for s in input_specs(source.proto)}
    special = any(needs_ort_value(t) for t in specs.values()) or any(
        needs_ort_value(o.type.tensor_type.elem_type) for o in source.proto.graph.output
    )
    try:
        if special:
            results = _run_with_ort_values(session, names, feed, specs)
        else:
            results = session.run(names, feed)
    except Exception as e:
        raise ModelRunError(f"onnxruntime failed running model {source.label}: {e}") from e
    return dict(zip(names, results))


def _run_with_ort_values(
    session: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray], specs: dict[str, int]
) -> list[Any]:
    values = {}
    for name, array in feed.items():
        elem = specs[name]
        if needs_ort_value(elem):
            raw = np.ascontiguousarray(array).view(np.uint16 if array.dtype.itemsize == 2 else np.uint8)
            values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, elem)
        else:
            values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
    outputs = session.run_with_ort_values(names, values)
    return [_to_numpy(v) for v in outputs]


def _to_numpy(value: ort.OrtValue) -> Any:
    if not value.is_tensor():
        return value.numpy()
    elem = value.element_type()
    if not needs_ort_value(elem):
        return value.numpy()
    if value.device_name().lower() != "cpu":
        raise ModelRunError("bfloat16/float8 outputs can only be read back from CPU memory")
    dtype = numpy_dtype(elem)
    count = int(np.prod(value.shape(), dtype=np.int64))
    raw = ctypes.string_at(value.data_ptr(), count * dtype.itemsize) if count else b""
    return np.frombuffer(raw, dtype=dtype).reshape(value.shape()).copy()

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
from graphopt.verify.inputs import check_inputs, input_specs
from graphopt.verify.ortvalues import from_ort_value, needs_ort_value, to_ort_value

logger = logging.getLogger(__name__)

__all__ = ["ModelRunError", "ModelSource", "check_structured_inputs", "make_session", "resolve_model", "run_model",
           "split_inputs"]

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
            f"onnxruntime cannot load model {source.label}: {' '.join(str(e).split())}\n"
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

    Tensor inputs are validated first with
    :func:`graphopt.verify.inputs.check_inputs`; sequence inputs must be lists
    of arrays of the declared element type and optional inputs the contained
    value (see :func:`check_structured_inputs`). bfloat16, float8, 4-bit and
    2-bit tensors go in and come out through ``OrtValue`` (the numpy bridge of
    onnxruntime's Python API does not take them) as ``ml_dtypes`` arrays;
    element types that ml_dtypes lacks come out as :class:`RawTensor`.

    Args:
        model: a path, ``onnx.ModelProto``, graphopt IR model, or a resolved
            :class:`ModelSource`.
        inputs: ``{input name: value}`` for every runtime input (initializer-backed
            graph inputs may be left out): an array per tensor input, a list of
            arrays per sequence input, the value or None per optional input.

    Returns:
        ``{output name: array}`` in the model's output order. Sequence outputs
        come back as lists of arrays.

    Raises:
        InputError: the inputs do not match the model's declared inputs.
        LoadError: the model cannot be read or onnxruntime refuses it.
        ModelRunError: onnxruntime fails while running it.
    """
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    tensor_view, structured = split_inputs(source.proto)
    feed = {name: value if name in structured else np.asarray(value) for name, value in inputs.items()}
    check_structured_inputs(structured, feed)
    check_inputs(tensor_view, {k: v for k, v in feed.items() if k not in structured})
    session = make_session(source, providers, optimization_level)
    names = [o.name for o in session.get_outputs()]
    specs = {s.name: s.elem_type for s in input_specs(tensor_view)}
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
    session: ort.InferenceSession, names: list[str], feed: dict[str, Any], specs: dict[str, int]
) -> list[Any]:
    values = {}
    for name, array in feed.items():
        elem = specs.get(name)
        if elem is None:  # a sequence/optional input: no OrtValue form in the Python API; run() takes it
            return list(session.run(names, feed))
        if needs_ort_value(elem):
            values[name] = to_ort_value(array, elem)
        else:
            values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
    outputs = session.run_with_ort_values(names, values)
    try:
        return [from_ort_value(v) for v in outputs]
    except VerificationError as e:
        raise ModelRunError(str(e)) from e


def split_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TypeProto]]:
    """Split ``model``'s runtime inputs into tensors and the rest.

    Returns:
        ``(tensor_view, structured)``: a small ModelProto whose graph declares
        only the tensor runtime inputs (for :func:`~graphopt.verify.inputs.check_inputs`
        and :func:`~graphopt.verify.inputs.input_specs`; it has no nodes or
        weights), and ``{name: TypeProto}`` of the sequence, optional and map
        inputs in declaration order.
    """
    initializers = {t.name for t in model.graph.initializer}
    view = onnx.ModelProto()
    structured: dict[str, onnx.TypeProto] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        if vi.type.WhichOneof("value") in (None, "tensor_type"):
            view.graph.input.append(vi)
        else:
            structured[vi.name] = vi.type
    return view, structured


def check_structured_inputs(structured: Mapping[str, onnx.TypeProto], feed: Mapping[str, Any]) -> None:
    """Check the values given for sequence / optional / map inputs:
    a sequence of tensors is a list of arrays of the declared element type;
    an optional is None (empty) or a value of its element type; a map is a dict.

    Raises:
        InputError: a structured input is missing or its value has the wrong form.
    """
    for name, tp in structured.items():
        if name not in feed:
            raise InputError(
                f"input {name!r} is a {tp.WhichOneof('value')}, which graphopt cannot generate; give it with --inputs "
                "(a directory of input_N.pb files laid out like the ONNX backend test data)"
            )
        _check_typed(name, tp, feed[name])


def _check_typed(name: str, tp: onnx.TypeProto, value: Any) -> None:
    kind = tp.WhichOneof("value")
    if kind == "optional_type":
        if value is not None:
            _check_typed(name, tp.optional_type.elem_type, value)
    elif kind == "sequence_type":
        if not isinstance(value, (list, tuple)):
            raise InputError(f"input {name!r} is a sequence: give a list of arrays, got {type(value).__name__}")
        for item in value:
            _check_typed(name, tp.sequence_type.elem_type, item)
    elif kind == "map_type":
        if not isinstance(value, dict):
            raise InputError(f"input {name!r} is a map: give a dict, got {type(value).__name__}")
    elif kind == "tensor_type":
        want = onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type) if tp.tensor_type.elem_type else None
        got = getattr(value, "dtype", None)
        if not isinstance(value, np.ndarray) or (want is not None and got != want and
                                                not (got.kind in "OSU" and np.dtype(want).kind in "OSU")):
            raise InputError(f"input {name!r}: an element must be a {np.dtype(want) if want else ''} array, "
                             f"got {got if got is not None else type(value).__name__}")

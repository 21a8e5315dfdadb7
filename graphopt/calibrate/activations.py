"""Run a model in onnxruntime over calibration batches and stream the values of
chosen intermediate tensors, one batch at a time.

This is the one place where the lossy pass families read activations:
quantization (range calibration, GPTQ's Hessians, per-layer sensitivity) and
the activation statistics of :mod:`graphopt.calibrate.stats` (pruning,
low-rank). The chosen tensors are
added as extra graph outputs of a copy of the model (the model passed in is
not modified); the copy is serialized in memory, or into a temporary folder
with external data when its weights exceed protobuf's 2 GB limit. Nothing is
kept between batches: a caller that reduces each batch (an observer, a running
``X^T X``) holds only its own state.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from graphopt import ir
from graphopt.errors import InputError
from graphopt.verify.runtime import ModelSource, make_session, resolve_model

log = logging.getLogger(__name__)

__all__ = ["stream_activations", "activation_session", "values_by_name"]

_INLINE_LIMIT = 1_800_000_000
"""Weights (bytes) above which the copy is written to a temporary folder rather than serialized in memory."""


def _weight_bytes(model: ir.Model) -> int:
    total = 0
    for graph in ir.all_graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    """Name -> value for the graph's inputs, initializers and node outputs."""
    table: dict[str, ir.Value] = {v.name: v for v in graph.inputs}
    table.update(graph.initializers)
    for node in graph:
        for out in node.outputs:
            if out.name:
                table[out.name] = out
    return table


def _with_outputs(model: ir.Model, names: Sequence[str]) -> onnx.ModelProto | None:
    """A proto of ``model`` whose graph outputs also include ``names``; None when
    the weights are too large to inline (the caller saves to a folder)."""
    values = values_by_name(model.graph)
    missing = [n for n in names if n not in values]
    if missing:
        raise InputError(f"tensors {missing[:5]} are not values of the model's main graph")
    existing = {v.name for v in model.graph.outputs}
    extra = [values[n] for n in dict.fromkeys(names) if n not in existing]
    model.graph.outputs.extend(extra)
    try:
        if _weight_bytes(model) > _INLINE_LIMIT:
            return None
        return ir.to_proto(model)
    finally:
        for _ in extra:
            model.graph.outputs.pop()


def activation_session(model: ir.Model, names: Sequence[str], workdir: Path, optimization_level: str = "disable"):
    """An onnxruntime session of ``model`` with ``names`` added as outputs.

    Args:
        model: the IR model (not modified).
        names: main-graph value names to expose (float tensors of any shape).
        workdir: a folder for the copy when its weights exceed protobuf's 2 GB
            limit (written with external data beside it).
        optimization_level: onnxruntime graph optimization level; ``disable`` by
            default so that no fusion removes an exposed tensor.

    Returns:
        ``(session, output_names)``.

    Raises:
        InputError: a name is not a value of the main graph.
        LoadError: onnxruntime cannot load the copy.
    """
    proto = _with_outputs(model, names)
    if proto is None:
        values = values_by_name(model.graph)
        existing = {v.name for v in model.graph.outputs}
        extra = [values[n] for n in dict.fromkeys(names) if n not in existing]
        model.graph.outputs.extend(extra)
        try:
            path = workdir / "calibration.onnx"
            ir.save(model, path, external_data=True)
        finally:
            for _ in extra:
                model.graph.outputs.pop()
        source = resolve_model(path)
    else:
        source = ModelSource(proto, proto.SerializeToString(), "<calibration copy>")
    session = make_session(source, optimization_level=optimization_level)
    return session, [o.name for o in session.get_outputs()]


def stream_activations(
    model: ir.Model,
    names: Sequence[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    optimization_level: str = "disable",
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for ``names`` (and the model's outputs) once per batch.

    Args:
        model: the IR model whose tensors are read (not modified).
        names: main-graph value names.
        batches: input dicts ``{graph input name: array}``, e.g. a
            :class:`~graphopt.calibrate.data.CalibrationData`.

    Raises:
        InputError: a name is not a value of the main graph, or a batch does
            not match the model's inputs.
        ModelRunError: onnxruntime fails on a batch.
    """
    from graphopt.verify.runtime import ModelRunError

    workdir = Path(tempfile.mkdtemp(prefix="graphopt-calib-"))
    try:
        session, outputs = activation_session(model, names, workdir, optimization_level)
        feed_names = {i.name for i in session.get_inputs()}
        for index, batch in enumerate(batches):
            feed = {k: np.asarray(v) for k, v in batch.items() if k in feed_names}
            try:
                results = session.run(outputs, feed)
            except Exception as e:  # onnxruntime's own exception types
                raise ModelRunError(f"onnxruntime failed on calibration batch {index}: {e}") from e
            yield dict(zip(outputs, results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

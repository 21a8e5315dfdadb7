"""Shapes of values measured in one onnxruntime run.

Where ONNX shape inference cannot follow a model (a Reshape whose target is
computed from a Shape through ops inference does not propagate, as the SVTR
neck of PaddleOCR's PP-OCRv4 recognizer does), the shapes a run actually
produces are the ground truth. :func:`measure_shapes` runs the main graph once
in onnxruntime (``ORT_DISABLE_ALL``, so every value of the graph as written
exists) with the asked values added as graph outputs, and returns the shape
each had; their data is dropped. A model over protobuf's 2 GiB goes without
its weights, which onnxruntime then reads from their own files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from graphopt import ir

__all__ = ["measure_shapes", "weights_folder"]


def weights_folder(model: ir.Model) -> str | None:
    """The folder the external data files of ``model`` are relative to (None: no external data)."""
    for value in model.graph.initializers.values():
        base = getattr(value.const_value, "base_dir", None)
        if base:
            return os.path.abspath(base)
    return None


def measure_shapes(model: ir.Model, feed: Mapping[str, np.ndarray], names: Iterable[str] | None = None,
                   types: Mapping[str, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Run ``model``'s main graph once on ``feed``; value name -> the shape it had.

    Args:
        model: the IR model (not modified).
        feed: graph input name -> array (every input the graph needs).
        names: the values to measure (main-graph node outputs); None: every node output that is used or a graph
            output.
        types: value name -> ONNX element type for values the IR leaves untyped (e.g. from shape inference);
            values of unknown type are fetched with an empty value info.

    Returns:
        Name -> dims (ints) of every measured value and graph output.

    Raises:
        Exception: whatever onnxruntime raises for a model or feed it cannot run (callers that only estimate
            catch it).
    """
    import onnxruntime as ort

    from graphopt.errors import SaveError

    try:
        proto = ir.to_proto(model)
        folder = None
    except SaveError:  # over 2 GiB: onnxruntime reads the weights from their own files
        proto = ir.to_proto(model, inline_external=False)
        folder = weights_folder(model)
    outputs = {o.name for o in proto.graph.output}
    wanted = set(names) if names is not None else None
    types = types or {}
    for node in model.graph:
        for value in node.outputs:
            name = value.name or ""
            if not name or name in outputs:
                continue
            if wanted is None and not value.uses():
                continue
            if wanted is not None and name not in wanted:
                continue
            dtype = int(value.dtype) if value.dtype is not None else types.get(name)
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, dtype, None) if dtype
                                      else onnx.helper.make_empty_tensor_value_info(name))
    del proto.graph.value_info[:]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # a failure is raised to the caller; the console stays clean
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names_out = [o.name for o in session.get_outputs()]
    results = session.run(names_out, dict(feed))
    return {name: tuple(int(d) for d in getattr(r, "shape", ())) for name, r in zip(names_out, results)}

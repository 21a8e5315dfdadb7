"""ONNX IR versions: what a model's opsets require and what onnxruntime accepts.

onnx 1.23's ``make_model`` writes IR version 14, which onnxruntime 1.31 refuses,
so every model graphopt writes gets an ``ir_version`` chosen here.
"""

from __future__ import annotations

import functools

import onnx
from onnx import helper

__all__ = ["ort_max_ir_version", "required_ir_version", "target_ir_version"]


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime loads.

    Found by probing: a one-node model (Identity, opset 13) is offered to an
    ``InferenceSession`` at ``onnx.IR_VERSION``, then at each older version until
    one loads. Costs a few milliseconds, once per process.

    Returns:
        An IR version (int), at least 7. Falls back to 10 (onnxruntime ≥ 1.17)
        when onnxruntime is not importable.
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
        return 10
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    for version in range(onnx.IR_VERSION, 6, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = version
        options = ort.SessionOptions()
        options.log_severity_level = 4
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any refusal means "too new"
            continue
        return version
    return 7


def required_ir_version(opset_imports: dict[str, int]) -> int:
    """The oldest IR version that can carry the given default-domain opset,
    from ``onnx.helper.VERSION_TABLE`` (release, IR, ai.onnx opset, ...).

    Args:
        opset_imports: domain -> version, as in ``model.opset_imports``.

    Returns:
        The IR version (int); 3 when the model has no default-domain opset.
    """
    opset = max(opset_imports.get("", 0), opset_imports.get("ai.onnx", 0))
    if opset <= 0:
        return 3
    candidates = [row[1] for row in helper.VERSION_TABLE if row[2] >= opset]
    return min(candidates) if candidates else onnx.IR_VERSION


def target_ir_version(current: int, opset_imports: dict[str, int]) -> int:
    """The IR version to write: the model's own, lowered to what onnxruntime
    accepts, but never below what its opsets require.

    Args:
        current: the model's ``ir_version``.
        opset_imports: the model's opset imports.

    Returns:
        ``max(required_ir_version(opsets), min(current, ort_max_ir_version()))``.
        onnxruntime is probed only for IR versions above 10, which every
        onnxruntime since 1.20 loads.
    """
    required = required_ir_version(opset_imports)
    if max(current, required) <= ALWAYS_ACCEPTED:
        return max(current, required)
    return max(required, min(current, ort_max_ir_version()))


ALWAYS_ACCEPTED = 10
"""IR version every supported onnxruntime (1.20 and newer) loads."""

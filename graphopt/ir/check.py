"""``onnx.checker`` on a written model, knowing onnxruntime's default-domain
contrib operators.

onnxruntime registers two contrib operators in the default ONNX domain rather
than in ``com.microsoft``: ``LayerNormalization`` at version 1 (so it runs at
any opset, while ONNX defines it only from opset 17) and
``SimplifiedLayerNormalization`` (RMSNorm, version 1; ONNX has no such
operator). Models fused for ``--target ort`` use them the way onnxruntime's
own transformers optimizer and onnxscript's ``optimize_for_ort`` emit them,
and ``onnx.checker`` rejects them ("No Op registered for ..."). The check here
runs the full checker; when it fails only because of such nodes, it checks a
copy in which they are moved to the ``com.microsoft`` domain (whose operators
the checker does not look up), so every other part of the model is still
checked.

A second false alarm of the full check: onnx infers shapes through the
function body of an operator defined by a function (opset 13's
``MeanVarianceNormalization``), and a body that forwards an attribute by
reference (``Constant <value_ints: ints = @axes>``) gets no value when the
node leaves that attribute at its schema default, so inference reports "One
and only one of the attributes 'value', 'value_*' or 'sparse_value' must be
specified for a Constant node" on a valid model (the ONNX backend case
``test_mvn`` fails the same way before graphopt touches it). When the full
check fails inside a function body, a copy with every omitted schema default
written out on function-defined standard operators
(:func:`fill_function_defaults`) is checked instead; the written model is
left as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx.onnx_cpp2py_export.shape_inference import InferenceError

__all__ = ["ORT_DEFAULT_DOMAIN_OPS", "check_model_file", "check_model_proto", "fill_function_defaults"]

#: an inference error reported inside another node's inference: a function body
_NESTED_INFERENCE = re.compile(r"Inference error\(s\):.*Inference error\(s\):", re.S)

ORT_DEFAULT_DOMAIN_OPS = frozenset({"LayerNormalization", "SimplifiedLayerNormalization"})
"""Operators onnxruntime registers in the default domain at version 1
(``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``)."""


def _graphs(graph: onnx.GraphProto):  # noqa: ANN202 - Iterator[onnx.GraphProto]
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _move_runtime_ops(model: onnx.ModelProto) -> int:
    """Move default-domain nodes of :data:`ORT_DEFAULT_DOMAIN_OPS` that ONNX
    does not define at the model's opset into ``com.microsoft``; returns how many."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    moved = 0
    bodies = [g for g in _graphs(model.graph)] + [f for f in model.functions]
    for body in bodies:
        for node in body.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ORT_DEFAULT_DOMAIN_OPS:
                continue
            try:
                onnx.defs.get_schema(node.op_type, opset, "")
                continue
            except onnx.defs.SchemaError:
                node.domain = "com.microsoft"
                moved += 1
    if moved and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return moved


def fill_function_defaults(model: onnx.ModelProto) -> int:
    """Write out, on every standard-domain node whose operator is defined by
    a function body at the model's opset, each attribute that the node omits
    and the schema gives a default; returns how many were written. Changes
    ``model`` in place (call it on a copy). Subgraphs and model-local
    functions (at their own opsets) included.
    """
    filled = 0
    scopes: list[tuple[onnx.GraphProto | onnx.FunctionProto, list[onnx.OperatorSetIdProto]]]
    scopes = [(g, list(model.opset_import)) for g in _graphs(model.graph)]
    for f in model.functions:
        scopes.append((f, list(f.opset_import) or list(model.opset_import)))
    for body, opsets in scopes:
        version = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), None)
        if version is None:
            continue
        for node in body.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            try:
                schema = onnx.defs.get_schema(node.op_type, version, "")
            except onnx.defs.SchemaError:
                continue
            if not (schema.has_function or schema.has_context_dependent_function):
                continue
            present = {a.name for a in node.attribute}
            for name, attr in schema.attributes.items():
                default = attr.default_value
                if name in present or default.type == onnx.AttributeProto.UNDEFINED:
                    continue
                node.attribute.append(default)
                node.attribute[-1].name = name
                filled += 1
    return filled


def check_model_file(path: Path, has_external_data: bool) -> None:
    """``onnx.checker.check_model(full_check=True)`` on the file at ``path``,
    accepting onnxruntime's default-domain contrib operators (module docstring).

    Args:
        path: the written .onnx file (its external data, if any, beside it).
        has_external_data: whether tensors live in a data file beside ``path``.

    Raises:
        onnx.checker.ValidationError: the model is invalid for another reason.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return
    except (onnx.checker.ValidationError, InferenceError) as first:
        message = str(first)
        model = onnx.load(str(path), load_external_data=False)
        moved = _move_runtime_ops(model) if any(op in message for op in ORT_DEFAULT_DOMAIN_OPS) else 0
        filled = fill_function_defaults(model) if _NESTED_INFERENCE.search(message) else 0
        if not (moved or filled):
            raise
    if has_external_data:
        copy = path.with_name(f".check.{path.name}")  # beside the data file, so its relative location resolves
        try:
            copy.write_bytes(model.SerializeToString())
            onnx.checker.check_model(str(copy), full_check=True)
        finally:
            copy.unlink(missing_ok=True)
    else:
        onnx.checker.check_model(model, full_check=True)


def check_model_proto(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model`` (structure only, no full check) on an
    in-memory model, accepting onnxruntime's default-domain contrib operators.
    The model is not changed (a copy is checked when nodes must be moved).

    Raises:
        onnx.checker.ValidationError: the model is invalid for another reason.
    """
    try:
        onnx.checker.check_model(model)
        return
    except onnx.checker.ValidationError as first:
        if not any(op in str(first) for op in ORT_DEFAULT_DOMAIN_OPS):
            raise
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _move_runtime_ops(copy)
    onnx.checker.check_model(copy)

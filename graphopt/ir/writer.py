"""The protobuf bytes of a model's graph, written directly (the save path).

``save`` used to serialize every model with ``onnx_ir.serde.serialize_model``,
which builds the ModelProto field by field in Python (an upb message per
node, attribute, value info and tensor) and then serializes it: on the small
models of ``models/`` more time than loading them. Here the wire format is
written directly with the primitives of :mod:`graphopt.ir.shape_io`, for the
models graphopt produces: no subgraphs, functions, quantization annotations
or device configurations (:func:`model_parts` returns None for those and the
caller uses onnx-ir's serializer). The bytes decode to a message equal
(protobuf equality) to what ``serialize_model`` builds, minus the initializers
the caller streams itself; repeated numbers may be packed, which parsers read
as the same field.
"""

from __future__ import annotations

import os

import onnx_ir as ir
from onnx_ir import serde

from graphopt.ir.edit import _has_graph_attr
from graphopt.ir.shape_io import (
    _T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8, _T9, _T10, _T11, _T12, _T13, _attribute_bytes, _field, _tag, _text,
    _type_bytes, _varint,
)

__all__ = ["model_bytes", "model_parts"]

_T16 = _tag(16)
_QUANT_KEY = "quant_parameter_tensor_names"  # onnx-ir's value.meta key of a quantization annotation


def _entries(tag: bytes, props: dict[str, str]) -> bytes:
    """A ``metadata_props``-style repeated StringStringEntryProto, keys sorted
    (as ``serde._serialize_string_string_maps`` writes them)."""
    return b"".join(_field(tag, _text(_T1, k) + _text(_T2, props[k])) for k in sorted(props))


def _has_value_info(value: ir.Value) -> bool:
    """``serde._should_create_value_info_for_value``."""
    if value.shape is None and value.type is None and not value.metadata_props and not value.doc_string:
        return False
    return bool(value.name)


def _value_info(value: ir.Value, types: dict) -> bytes:
    """ValueInfoProto bytes as ``serde.serialize_value_into`` writes them."""
    vtype, shape = value.type, value.shape
    if vtype is None or type(vtype) is not ir.TensorType or vtype.denotation:
        return serde.serialize_value(value).SerializeToString()  # other types, or a shape without a type
    if shape is None:
        key: tuple = (vtype.dtype,)
    elif shape.frozen:  # inferred shapes are frozen and shared by the values of equal shape
        key = (vtype.dtype, id(shape))  # ``types`` lives for one call: the shape outlives it
    else:
        dims = shape.dims
        key = (vtype.dtype, dims, tuple(shape.get_denotation(i) for i in range(len(dims))))
    body = types.get(key)
    if body is None:
        body = types[key] = _type_bytes(vtype, shape)
    data = _text(_T1, value.name) + _field(_T2, body)
    if value.metadata_props:
        data += _entries(_T4, value.metadata_props)
    if value.doc_string:
        data += _text(_T3, value.doc_string)
    return data


def _attribute(attr: ir.Attr) -> bytes:
    """AttributeProto bytes as ``serde.serialize_attribute_into`` writes them."""
    data = _attribute_bytes(attr)
    if attr.doc_string:
        data += _text(_T13, attr.doc_string)
    return data


def _node(node: ir.Node) -> bytes | None:
    """NodeProto bytes as ``serde.serialize_node_into`` writes them; None for a
    node with a subgraph or device configurations."""
    if getattr(node, "device_configurations", None):
        return None
    parts = [_text(_T4, node.op_type)]
    if node.domain:
        parts.append(_text(_T7, node.domain))
    if node.name:
        parts.append(_text(_T3, node.name))
    if node.overload:
        parts.append(_text(_T8, node.overload))
    if node.doc_string:
        parts.append(_text(_T6, node.doc_string))
    if node.metadata_props:
        parts.append(_entries(_T9, node.metadata_props))
    for value in node.inputs:
        parts.append(_text(_T1, "" if value is None else value.name))
    outputs = node.outputs
    last = len(outputs)
    while last and not outputs[last - 1].name:
        last -= 1
    for i in range(last):
        parts.append(_text(_T2, outputs[i].name))
    for attr in node.attributes.data.values():
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return None
        parts.append(_field(_T5, _attribute(attr)))
    return b"".join(parts)


def _tensor(tensor: ir.TensorProtocol, inline_external: bool) -> bytes:
    """TensorProto bytes as ``serde.serialize_tensor_into`` writes them. With
    ``inline_external``, an external tensor is written with its data, as
    ``ir.Tensor(tensor.numpy(), name=tensor.name)`` would be."""
    if isinstance(tensor, serde.TensorProtoTensor):
        tensor._validate_float6_data()  # noqa: SLF001 - as serde does before copying the proto
        data = tensor.raw.SerializeToString()
        if tensor.metadata_props:  # serde adds them to the copied proto's own (which holds them already)
            data += _entries(_T16, tensor.metadata_props)
        return data
    external = isinstance(tensor, ir.ExternalTensor)
    if isinstance(tensor, ir.StringTensor) or (external and inline_external):
        source = ir.Tensor(tensor.numpy(), name=tensor.name) if external else tensor
        return serde.serialize_tensor(source).SerializeToString()
    parts = []
    if tensor.name:
        parts.append(_text(b"\x42", tensor.name))  # name: field 8
    if tensor.doc_string:
        parts.append(_text(b"\x62", tensor.doc_string))  # doc_string: field 12
    parts.append(b"\x10" + _varint(tensor.dtype.value))  # data_type: field 2
    parts.extend(b"\x08" + _varint(int(d)) for d in tensor.shape.numpy())  # dims: field 1
    if external:
        parts.append(b"\x70\x01")  # data_location: EXTERNAL (field 14)
        for key, value in (("location", os.fspath(tensor.location)), ("offset", tensor.offset),
                           ("length", tensor.length)):
            if value is not None:
                parts.append(_field(_T13, _text(_T1, key) + _text(_T2, str(value))))
    else:
        parts.append(_field(b"\x4a", tensor.tobytes()))  # raw_data: field 9
    parts.append(_entries(_T16, tensor.metadata_props))
    return b"".join(parts)


def _annotated(value: ir.Value) -> bool:
    """Whether a value carries a quantization annotation (without creating its metadata store)."""
    store = getattr(value, "_metadata", False)
    if store is False:
        store = value.meta
    return store is not None and bool(store.get(_QUANT_KEY))


def graph_bytes(graph: ir.Graph, skip: frozenset[str] | set[str] = frozenset(),
                inline_external: bool = False) -> bytes | None:
    """GraphProto bytes as ``serde.serialize_graph_into`` writes them, without
    the initializers named in ``skip`` (their value infos stay); None for a
    graph this writer does not cover (subgraphs, quantization annotations,
    device configurations). Like serde, sets each initializer tensor's name
    to its value's.
    """
    if _has_graph_attr(graph):
        return None
    types: dict = {}
    parts = [_text(_T2, graph.name)] if graph.name else []
    if graph.doc_string:
        parts.append(_text(_T10, graph.doc_string))
    input_names = set()
    for value in graph.inputs:
        if _annotated(value):
            return None
        parts.append(_field(_T11, _value_info(value, types)))
        input_names.add(value.name)
    for value in graph.initializers.values():
        if _annotated(value):
            return None
        if _has_value_info(value) and value.name not in input_names:
            parts.append(_field(_T13, _value_info(value, types)))
        tensor = value.const_value
        if tensor is None:
            continue
        tensor.name = value.name
        if value.name not in skip:
            parts.append(_field(_T5, _tensor(tensor, inline_external)))
    for node in graph:
        data = _node(node)
        if data is None:
            return None
        parts.append(_field(_T1, data))
        for value in node.outputs:
            if value.is_graph_output():
                continue
            if _annotated(value):
                return None
            if _has_value_info(value):
                parts.append(_field(_T13, _value_info(value, types)))
    for value in graph.outputs:
        if _annotated(value):
            return None
        parts.append(_field(_T12, _value_info(value, types)))
    if graph.metadata_props:
        parts.append(_entries(_T16, graph.metadata_props))
    return b"".join(parts)


def model_parts(model: ir.Model, ir_version: int, skip: frozenset[str] | set[str] = frozenset(),
                inline_external: bool = False) -> tuple[bytes, bytes] | None:
    """(ModelProto bytes without its graph, GraphProto bytes) as
    ``serde.serialize_model`` writes them with ``ir_version`` set, the
    initializers named in ``skip`` left out; None for a model this writer
    does not cover (functions, subgraphs, quantization annotations, device
    configurations): use onnx-ir's serializer. The ModelProto is the first
    part followed by the graph as field 7 (``_field(_T7, graph)``)."""
    if model.functions or getattr(model, "device_configurations", None):
        return None
    try:
        graph = graph_bytes(model.graph, skip, inline_external)
    except (TypeError, AttributeError):  # a value without a name, ...: onnx-ir's serializer reports it
        return None
    if graph is None:
        return None
    shell = _new_model()
    shell.ir_version = ir_version
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if getattr(model, name):
            setattr(shell, name, getattr(model, name))
    serde._serialize_opset_imports_into(shell.opset_import, model.opset_imports)  # noqa: SLF001
    if model.metadata_props:
        serde._serialize_metadata_props_into(shell.metadata_props, model.metadata_props)  # noqa: SLF001
    return shell.SerializeToString(), graph


def model_bytes(model: ir.Model, ir_version: int) -> bytes | None:
    """The whole ModelProto's bytes (see :func:`model_parts`), or None."""
    parts = model_parts(model, ir_version)
    return None if parts is None else parts[0] + _field(_T7, parts[1])


def _new_model():  # noqa: ANN202 - onnx.ModelProto
    import onnx

    return onnx.ModelProto()

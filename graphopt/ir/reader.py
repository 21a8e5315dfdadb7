"""ModelProto -> IR model for the common case, without onnx-ir's per-call overhead.

``onnx_ir.serde.deserialize_model`` wraps every node, attribute, tensor and
type conversion in an error-capturing decorator, reads optional fields with
``HasField``, builds an enum per attribute and logs each value without a
value info: on the small models of ``models/``, loading took more time than
saving. :func:`deserialize_model` builds the same objects (onnx-ir's
``Node``, ``Value``, ``Attr``, ``Graph``, ``Model``; tensors as
:class:`graphopt.ir.tensors.ProtoTensor`; value shapes frozen, equal ones
shared) for models without subgraphs, quantization annotations, device
configurations or (before IR 10) functions, and returns None for the others,
which onnx-ir reads. Tests check that both give the same serialized model.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir import serde

from graphopt.ir.tensors import ProtoTensor

__all__ = ["deserialize_model"]

_ATTRIBUTE_TYPES = {t.value: t for t in ir.AttributeType}
_DATA_TYPES = {t.value: t for t in ir.DataType}
_GRAPH_KINDS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
_UNDEFINED = onnx.AttributeProto.UNDEFINED  # an attribute without its type: look at its fields
_EXTERNAL = onnx.TensorProto.EXTERNAL
_STRING = onnx.TensorProto.STRING


def _props(entries) -> dict[str, str] | None:  # noqa: ANN001 - repeated StringStringEntryProto
    return {e.key: e.value for e in entries} if len(entries) else None


def _optional(proto, field: str):  # noqa: ANN001, ANN202 - as serde._get_field
    return getattr(proto, field) if proto.HasField(field) else None


def _attribute(proto: onnx.AttributeProto) -> ir.Attr | None:
    """``serde._deserialize_attribute`` for attributes without graphs; None for others."""
    kind = proto.type
    name = proto.name
    doc = proto.doc_string if proto.HasField("doc_string") else None
    if proto.ref_attr_name:
        return ir.RefAttr(name, proto.ref_attr_name, _ATTRIBUTE_TYPES[kind], doc_string=doc)
    if kind == 2:  # INT
        return ir.AttrInt64(name, proto.i, doc_string=doc)
    if kind == 7:  # INTS
        return ir.AttrInt64s(name, proto.ints, doc_string=doc)
    if kind == 1:  # FLOAT
        return ir.AttrFloat32(name, proto.f, doc_string=doc)
    if kind == 3:  # STRING
        try:
            return ir.AttrString(name, proto.s.decode("utf-8"), doc_string=doc)
        except UnicodeDecodeError:
            return None  # serde keeps the bytes and warns: let it
    if kind == 6:  # FLOATS
        return ir.AttrFloat32s(name, proto.floats, doc_string=doc)
    if kind == 8:  # STRINGS
        return ir.AttrStrings(name, [s.decode("utf-8") for s in proto.strings], doc_string=doc)
    if kind == 4:  # TENSOR
        return ir.AttrTensor(name, _tensor(proto.t), doc_string=doc)
    if kind == 9:  # TENSORS
        return ir.AttrTensors(name, [_tensor(t) for t in proto.tensors], doc_string=doc)
    return None  # graphs, sparse tensors, type protos, undefined: onnx-ir


def _tensor(proto: onnx.TensorProto) -> ir.TensorProtocol:
    if proto.data_location == _EXTERNAL or proto.data_type == _STRING:
        return serde.deserialize_tensor(proto)
    return ProtoTensor(proto)


class _Types:
    """TypeProto bytes -> (dtype, denotation, shape) of tensor types, so that
    equal types are read once (shapes frozen and shared, as inferred shapes are)."""

    def __init__(self) -> None:
        self.seen: dict[bytes, tuple | None] = {}

    def fill(self, info: onnx.ValueInfoProto, value: ir.Value) -> bool:
        """``serde.deserialize_value_info_proto(info, value)``; False (value
        untouched) for a type other than a tensor type."""
        if info.HasField("type"):
            data = info.type.SerializeToString()
            read = self.seen.get(data, False)
            if read is False:
                read = self.seen[data] = self._read(info.type)
            if read is None:
                return False
            dtype, denotation, shape = read
            value.shape = shape
            value.type = ir.TensorType(dtype, denotation=denotation) if dtype is not None else None
        else:
            value.shape = None
            value.type = None
        props = _props(info.metadata_props)
        if props is not None:
            value.metadata_props.update(props)
        value.doc_string = info.doc_string if info.HasField("doc_string") else None
        return True

    @staticmethod
    def _read(proto: onnx.TypeProto) -> tuple | None:
        which = proto.WhichOneof("value")
        if which is None:
            return (None, None, None) if not proto.HasField("denotation") else None
        if which != "tensor_type":
            return None
        tensor = proto.tensor_type
        shape = serde.deserialize_tensor_shape(tensor.shape) if tensor.HasField("shape") else None
        dtype = _DATA_TYPES.get(tensor.elem_type) if tensor.HasField("elem_type") else None
        if dtype is None and (proto.HasField("denotation") or tensor.HasField("elem_type")):
            return None  # an unknown elem_type: onnx-ir raises
        return dtype, _optional(proto, "denotation"), shape


def _covered(proto: onnx.ModelProto) -> bool:
    """Whether :func:`deserialize_model` reads ``proto`` (else onnx-ir does)."""
    graph = proto.graph
    if len(graph.quantization_annotation) or len(graph.sparse_initializer):
        return False
    if getattr(proto, "configuration", None) or (len(proto.functions) and proto.ir_version < 10):
        return False
    configurable = "device_configurations" in onnx.NodeProto.DESCRIPTOR.fields_by_name
    for node in graph.node:
        if configurable and len(node.device_configurations):
            return False
        for attr in node.attribute:
            kind = attr.type
            if kind in _GRAPH_KINDS or (kind == _UNDEFINED and (attr.HasField("g") or len(attr.graphs))):
                return False
    return True


def _graph(proto: onnx.GraphProto) -> ir.Graph | None:
    types = _Types()
    inputs = []
    values: dict[str, ir.Value] = {}
    for info in proto.input:
        value = ir.Value(name=info.name)
        if not types.fill(info, value):
            serde.deserialize_value_info_proto(info, value)
        inputs.append(value)
        values[info.name] = value
    value_info = {info.name: info for info in proto.value_info}
    initializers = []
    for tensor_proto in proto.initializer:
        tensor = _tensor(tensor_proto)
        name = tensor.name
        if not name:
            return None  # onnx-ir warns and skips it
        if name in values:
            value = values[name]
            value.const_value = tensor
        else:
            value = ir.Value(None, index=None, name=name, type=ir.TensorType(tensor.dtype), shape=tensor.shape,
                             const_value=tensor)
            info = value_info.get(name)
            if info is not None and not types.fill(info, value):
                serde.deserialize_value_info_proto(info, value)
            values[name] = value
        initializers.append(value)
    for node in proto.node:
        for name in node.output:
            if not name:
                continue
            if name in values:
                return None  # redeclared: onnx-ir raises the error
            value = ir.Value(name=name)
            info = value_info.get(name)
            if info is not None and not types.fill(info, value):
                serde.deserialize_value_info_proto(info, value)
            values[name] = value
    nodes = []
    for node in proto.node:
        node_inputs = []
        for name in node.input:
            if not name:
                node_inputs.append(None)
            elif name in values:
                node_inputs.append(values[name])
            else:
                return None  # an undeclared input: onnx-ir warns and makes one
        outputs = [values[name] if name else ir.Value(name="") for name in node.output]
        attributes = []
        for attr in node.attribute:
            converted = _attribute(attr)
            if converted is None:
                return None
            attributes.append(converted)
        nodes.append(ir.Node(
            node.domain, node.op_type, node_inputs, attributes, overload=node.overload, outputs=outputs,
            name=node.name, doc_string=node.doc_string if node.HasField("doc_string") else None,
            metadata_props=_props(node.metadata_props),
        ))
    outputs = []
    for info in proto.output:
        if info.name not in values:
            return None  # an output no node produces: onnx-ir warns
        value = values[info.name]
        if not types.fill(info, value):
            serde.deserialize_value_info_proto(info, value)
        outputs.append(value)
    return ir.Graph(inputs, outputs, nodes=nodes, initializers=initializers, doc_string=_optional(proto, "doc_string"),
                    name=_optional(proto, "name"), metadata_props=_props(proto.metadata_props))


def deserialize_model(proto: onnx.ModelProto) -> ir.Model | None:
    """The IR model ``onnx_ir.serde.deserialize_model(proto)`` builds (same
    serialization), or None when ``proto`` has what this reader leaves to
    onnx-ir: subgraphs, quantization annotations, sparse initializers,
    device configurations, functions before IR 10, an initializer without a
    name, undeclared or redeclared values, non-UTF-8 string attributes, and
    attributes of other kinds than numbers, strings and tensors."""
    if not _covered(proto):
        return None
    graph = _graph(proto.graph)
    if graph is None:
        return None
    graph.opset_imports.update(serde.deserialize_opset_import(proto.opset_import))
    return ir.Model(
        graph,
        ir_version=proto.ir_version,
        producer_name=_optional(proto, "producer_name"),
        producer_version=_optional(proto, "producer_version"),
        domain=_optional(proto, "domain"),
        model_version=_optional(proto, "model_version"),
        doc_string=_optional(proto, "doc_string"),
        functions=[serde.deserialize_function(f) for f in proto.functions],
        metadata_props=_props(proto.metadata_props),
    )

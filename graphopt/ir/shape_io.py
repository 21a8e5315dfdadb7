"""The protobuf bytes that :func:`graphopt.ir.infer_shapes` hands to ONNX shape
inference, and the shapes it reads back.

The simplifier's fixpoint (``O1``) infers shapes once per iteration on a graph
that changed little since the last time. Serializing it with onnx-ir (a Python
walk building protobuf messages field by field) and reading every inferred
shape back cost more than the inference itself. Here:

* :func:`encode` writes the protobuf wire format directly. Its message is
  what ``onnx_ir.serde.serialize_model`` writes followed by the stripping of
  initializers over 1 KiB into typed graph inputs, without what shape
  inference never reads: ``metadata_props`` and ``doc_string`` of the model,
  graph, nodes, values and attributes (dynamo exports put five metadata
  entries, a stack trace among them, on every node), and the value infos of
  initializers (inference types an initializer from its tensor, or from the
  typed graph input that replaces it; only an initializer value without a
  tensor keeps its value info). Otherwise it is
  equal to that message (protobuf equality: same fields, repeated fields in
  the same order; repeated numbers may be packed, which parsers read as the
  same field), so inference sees the same model and infers the same types.
  Bytes of attributes, initializers and value types are kept from one call
  to the next in a :class:`Cache` stored in ``model.meta`` (entries are
  keyed by object identity and hold the object, so an id cannot be reused,
  and only what the last call used is kept).
* :func:`shape_of` gives equal inferred shapes one frozen (immutable)
  ``ir.Shape``, as ``serde.deserialize_tensor_shape`` would build it.

Models with functions or subgraphs are not encoded here (``encode`` returns
None; the caller uses onnx-ir's serializer).
"""

from __future__ import annotations

import struct

import onnx_ir as ir
from onnx_ir import serde

__all__ = ["Cache", "encode", "shape_of"]

_META_KEY = "graphopt.shape_inference_cache"
_GRAPH_KINDS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
_SMALL_BYTES = 1024
"""Initializers up to this size are serialized with their data (as in infer_shapes)."""
_KEEP_BYTES = 4096
"""Attribute bytes longer than this are not kept between calls (big Constant tensors)."""
_LENGTHS = [bytes((i,)) for i in range(128)]


class Cache:
    """Bytes kept between shape-inference calls on one model."""

    __slots__ = ("attrs", "nodes", "tensors", "types", "shapes", "types_read")

    def __init__(self) -> None:
        self.attrs: dict[int, tuple] = {}
        self.nodes: dict[int, tuple] = {}
        self.tensors: dict[int, tuple] = {}
        self.types: dict[tuple, bytes] = {}
        self.shapes: dict[bytes, ir.Shape] = {}
        self.types_read: dict[bytes, tuple] = {}  # inferred TypeProto bytes -> read_type(...)


def cache_of(model: ir.Model) -> Cache:
    """The model's cache (created on first use; ``model.meta`` is not serialized)."""
    cache = model.meta.get(_META_KEY)
    if not isinstance(cache, Cache):
        cache = model.meta[_META_KEY] = Cache()
    return cache


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    if n < 0x80:
        return _LENGTHS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2)


def _field(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_LENGTHS[n] if n < 0x80 else _varint(n)) + payload


def _text(tag: bytes, text: str) -> bytes:
    data = text.encode()
    n = len(data)
    return tag + (_LENGTHS[n] if n < 0x80 else _varint(n)) + data


# Field keys (onnx.proto3).
_T1, _T2, _T3, _T4, _T5, _T6, _T7, _T8 = (_tag(i) for i in range(1, 9))
_T9, _T10, _T11, _T12, _T13 = _tag(9), _tag(10), _tag(11), _tag(12), _tag(13)
_EMPTY_INPUT = _text(_T1, "")


def _new(kind: str):  # noqa: ANN202 - an empty onnx message
    import onnx

    return getattr(onnx, kind)()


def _type_bytes(vtype: object, shape: ir.Shape | None) -> bytes | None:
    """TypeProto bytes of a tensor type and shape (as ``serialize_type_into``
    and ``serialize_shape_into`` write them), or None for other types."""
    if type(vtype) is not ir.TensorType or vtype.denotation:
        return None
    tensor = b"\x08" + _varint(vtype.dtype.value)
    if shape is not None:
        dims = []
        for i, dim in enumerate(shape.dims):
            entry = b""
            denotation = shape.get_denotation(i)
            if denotation:
                entry = _text(_T3, denotation)
            if isinstance(dim, int):
                entry += b"\x08" + _varint(dim)
            elif dim.value is not None:
                entry += _text(_T2, str(dim.value))
            dims.append(_field(_T1, entry))
        tensor += _field(_T2, b"".join(dims))
    return _field(_T1, tensor)


def _value_info(value: ir.Value, types: dict) -> bytes | None:
    """ValueInfoProto bytes as ``serde.serialize_value_into`` writes them
    (less ``doc_string`` and ``metadata_props``), or None where there is no
    type to tell (no type or shape; no name)."""
    vtype, shape, name = value.type, value.shape, value.name
    if not name:
        return None
    if type(vtype) is not ir.TensorType or vtype.denotation:
        if vtype is None and shape is None:
            return None
        proto = serde.serialize_value(value)
        proto.ClearField("doc_string")
        proto.ClearField("metadata_props")
        return proto.SerializeToString()
    if shape is None:
        key: tuple = (vtype.dtype,)
    else:
        dims = shape.dims
        key = (vtype.dtype, dims, tuple(shape.get_denotation(i) for i in range(len(dims))))
    body = types.get(key)
    if body is None:
        body = types[key] = _type_bytes(vtype, shape)
    return _text(_T1, name) + _field(_T2, body)


def _packed(tag: bytes, items: bytes) -> bytes:
    return _field(tag, items) if items else b""


def _attribute_bytes(attr: ir.Attr) -> bytes:
    """AttributeProto bytes as ``serde.serialize_attribute_into`` writes them
    (less ``doc_string``): numbers, strings and their lists directly (lists of
    numbers packed), other kinds through onnx-ir."""
    kind = attr.type
    if not attr.is_ref():
        value = attr.value
        head = _text(_T1, attr.name) + b"\xa0\x01" + _varint(kind.value)  # name, type (field 20)
        try:
            if kind == ir.AttributeType.INT:
                return head + b"\x18" + _varint(int(value))
            if kind == ir.AttributeType.INTS:
                return head + _packed(_T8, b"".join(_varint(int(v)) for v in value))
            if kind == ir.AttributeType.FLOAT:
                return head + b"\x15" + struct.pack("<f", value)
            if kind == ir.AttributeType.FLOATS:
                return head + _packed(_T7, struct.pack(f"<{len(value)}f", *value))
            if kind == ir.AttributeType.STRING and isinstance(value, str):
                return head + _text(_T4, value)
            if kind == ir.AttributeType.STRINGS and all(isinstance(v, str) for v in value):
                return head + b"".join(_text(_T9, v) for v in value)
        except (OverflowError, struct.error, TypeError, ValueError):
            pass  # e.g. a float beyond float32's range: onnx-ir's serializer decides
    proto = _new("AttributeProto")
    if attr.is_ref():
        serde.serialize_reference_attribute_into(proto, from_=attr)
    else:
        serde.serialize_attribute_into(proto, from_=attr)
    proto.ClearField("doc_string")
    return proto.SerializeToString()


def _attribute(attr: ir.Attr, old: dict, new: dict) -> bytes | None:
    """AttributeProto bytes; None for a graph-valued attribute."""
    if attr.type in _GRAPH_KINDS:
        return None
    key = id(attr)
    entry = old.get(key)
    if entry is None or entry[0] is not attr or entry[1] != attr.name:
        entry = (attr, attr.name, _attribute_bytes(attr))
    if len(entry[2]) <= _KEEP_BYTES:
        new[key] = entry
    return entry[2]


def _node(node: ir.Node, old: dict, new: dict) -> bytes | None:
    """NodeProto bytes as ``serde.serialize_node_into`` writes them (less
    ``doc_string``, ``metadata_props`` and device configurations; fields in
    another order, which protobuf does not distinguish); None for a node with
    a subgraph."""
    attrs = node.attributes.data
    parts = [_text(_T4, node.op_type)]
    if node.domain:
        parts.append(_text(_T7, node.domain))
    if node.name:
        parts.append(_text(_T3, node.name))
    if node.overload:
        parts.append(_text(_T8, node.overload))
    for value in node.inputs:
        parts.append(_EMPTY_INPUT if value is None else _text(_T1, value.name))
    outputs = node.outputs
    last = len(outputs)
    while last and not outputs[last - 1].name:
        last -= 1
    for i in range(last):
        parts.append(_text(_T2, outputs[i].name))
    for attr in attrs.values():
        data = _attribute(attr, old, new)
        if data is None:
            return None
        parts.append(_field(_T5, data))
    return b"".join(parts)


def _initializer(value: ir.Value, tensor: ir.TensorProtocol, old: dict, new: dict) -> tuple[bool, bytes]:
    """(stripped, bytes): a typed graph input (ValueInfoProto) for a tensor
    over 1 KiB, as ``_strip_initializers`` writes it, else the TensorProto."""
    key = id(tensor)
    entry = old.get(key)
    if entry is None or entry[0] is not tensor:
        # (``type(...).__mro__``: isinstance() through typing's Protocol metaclass is slow)
        big = tensor.nbytes > _SMALL_BYTES and ir.StringTensor not in type(tensor).__mro__
        if big:
            dims = b"".join(_field(_T1, b"\x08" + _varint(int(d))) for d in tensor.shape.numpy())
            entry = (tensor, True, _field(_T2, _field(_T1, b"\x08" + _varint(tensor.dtype.value) + _field(_T2, dims))))
        else:
            entry = (tensor, False, None, None)
    if entry[1]:
        new[key] = entry
        return True, _text(_T1, value.name) + entry[2]
    tensor.name = value.name  # as serialize_graph_into does
    if entry[2] != value.name:
        if serde.TensorProtoTensor in type(tensor).__mro__ and not tensor.metadata_props:
            tensor._validate_float6_data()  # noqa: SLF001 - as serialize_tensor_into does
            data = tensor.raw.SerializeToString()  # what serialize_tensor_into copies, without the copy
        else:
            proto = _new("TensorProto")
            serde.serialize_tensor_into(proto, from_=tensor)
            data = proto.SerializeToString()
        entry = (tensor, False, value.name, data)
    new[key] = entry
    return False, entry[3]


def encode(model: ir.Model) -> bytes | None:
    """The serialized ModelProto for shape inference, initializers over 1 KiB
    replaced by typed graph inputs; None when the model has functions or
    subgraphs."""
    if model.functions:
        return None
    cache = cache_of(model)
    graph = model.graph
    attrs: dict = {}
    types = cache.types
    nodes: list[bytes] = []
    infos: list[bytes] = []
    old_nodes, new_nodes = cache.nodes, {}
    for node in graph:
        # A node's bytes are kept while it reads and writes the same names
        # with the same attribute objects (attributes are not edited in place).
        outputs = node.outputs
        key = (node.op_type, node.domain, node.name, node.overload,
               tuple(None if v is None else v.name for v in node.inputs), tuple(v.name for v in outputs),
               tuple(node.attributes.data.values()))
        entry = old_nodes.get(id(node))
        if entry is None or entry[0] is not node or entry[1] != key:
            data = _node(node, cache.attrs, attrs)
            if data is None:
                return None
            entry = (node, key, _field(_T1, data))
        new_nodes[id(node)] = entry
        nodes.append(entry[2])
        for value in outputs:
            if not value.is_graph_output():
                info = _value_info(value, types)
                if info is not None:
                    infos.append(_field(_T13, info))
    inputs = [_field(_T11, _value_info(v, types) or _text(_T1, v.name or "")) for v in graph.inputs]
    input_names = {v.name for v in graph.inputs}
    initializers: list[bytes] = []
    init_infos: list[bytes] = []
    stripped: list[bytes] = []
    tensors: dict = {}
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None and value.name not in input_names:  # no tensor to tell its type
            info = _value_info(value, types)
            if info is not None:
                init_infos.append(_field(_T13, info))
        if tensor is None:
            continue
        as_input, data = _initializer(value, tensor, cache.tensors, tensors)
        if as_input:
            stripped.append(_field(_T11, data))
        else:
            initializers.append(_field(_T5, data))
    outputs = [_field(_T12, _value_info(v, types) or _text(_T1, v.name or "")) for v in graph.outputs]
    cache.attrs, cache.tensors, cache.nodes = attrs, tensors, new_nodes
    if len(types) > 4 * (len(nodes) + len(initializers) + len(stripped)) + 64:
        types.clear()
    head = [_text(_T2, graph.name)] if graph.name else []
    body = b"".join(head + inputs + stripped + init_infos + initializers + nodes + infos + outputs)
    shell = _new("ModelProto")
    shell.ir_version = model.ir_version
    for name in ("producer_name", "producer_version", "domain", "model_version"):
        if getattr(model, name):
            setattr(shell, name, getattr(model, name))
    serde._serialize_opset_imports_into(shell.opset_import, model.opset_imports)  # noqa: SLF001
    return shell.SerializeToString() + _field(_T7, body)


def read_type(data: bytes, cache: Cache) -> tuple[int | None, ir.Shape | None]:
    """(elem_type, shape) of a serialized TypeProto of a tensor (shape None
    when it has none; equal shapes share one frozen ``ir.Shape``, see
    :func:`shape_of`), or (None, None) for other types."""
    proto = _new("TypeProto")
    proto.ParseFromString(data)
    if not proto.HasField("tensor_type"):
        return None, None
    tensor_type = proto.tensor_type
    if not tensor_type.HasField("shape"):
        return tensor_type.elem_type, None
    return tensor_type.elem_type, shape_of(tensor_type.shape, cache.shapes, cache.shapes)


def shape_of(shape_proto, old: dict, new: dict) -> ir.Shape:  # noqa: ANN001 - onnx.TensorShapeProto
    """The frozen ``ir.Shape`` of a TensorShapeProto, as
    ``serde.deserialize_tensor_shape`` builds it; equal protos share one."""
    key = shape_proto.SerializeToString()
    shape = new.get(key) or old.get(key)
    if shape is None:
        dims: list = []
        denotations: list = []
        for dim in shape_proto.dim:
            which = dim.WhichOneof("value")
            if which == "dim_value":
                dims.append(dim.dim_value)
            else:
                dims.append(ir.SymbolicDim(dim.dim_param if which == "dim_param" else None))
            denotations.append(dim.denotation if dim.HasField("denotation") else None)
        shape = ir.Shape(dims, denotations=denotations, frozen=True)
    new[key] = shape
    return shape

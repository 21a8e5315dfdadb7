"""Streamed writing of a self-contained (.onnx without external data) model.

``ModelProto.SerializeToString`` on a 400 MB model copies every weight into one
Python bytes object (seconds, and the model's size again in memory). Here the
protobuf wire format is written by hand for the large initializers of the main
graph: the rest of the model is serialized by :mod:`graphopt.ir.writer` (by
onnx-ir where that writer does not cover the model), and each large tensor is
appended as a ``GraphProto.initializer`` record whose ``raw_data`` is copied
straight from its source (memory-mapped file or array). Protobuf parsers accept
fields in any order, so the file decodes to the same ModelProto with those
initializers last (Protocol Buffers encoding spec: "Field Order").
"""

from __future__ import annotations

from typing import BinaryIO, Callable

import onnx
import onnx_ir as ir

from graphopt.ir.edit import all_graphs
from graphopt.ir.writer import model_parts

__all__ = ["write_inline", "STREAM_MIN_BYTES"]

STREAM_MIN_BYTES = 4096
"""Initializers of at least this many bytes are streamed rather than serialized."""

_PLACEHOLDER = "__graphopt_streamed__"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int) -> bytes:
    """Tag of a length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2)


_INITIALIZER = _field(5)  # GraphProto.initializer
_GRAPH = _field(7)  # ModelProto.graph
_RAW_DATA = _field(9)  # TensorProto.raw_data


def write_inline(model: ir.Model, out: BinaryIO, ir_version: int,
                 copy_tensor: Callable[[ir.TensorProtocol, BinaryIO], int]) -> int:
    """Write ``model`` to ``out`` as one protobuf ModelProto, streaming large
    main-graph initializers.

    Args:
        model: the IR model; not modified (tensors are swapped and restored).
        out: a binary file opened for writing.
        ir_version: the ``ir_version`` to write.
        copy_tensor: writes a tensor's raw little-endian bytes to a file and
            returns the count (streams memory-mapped tensors in chunks).

    Returns:
        Bytes written.

    Raises:
        ValueError: from onnx-ir when the model cannot be serialized.
    """
    streamed = [
        v for v in model.graph.initializers.values()
        if v.const_value is not None and not isinstance(v.const_value, ir.StringTensor)
        and v.const_value.nbytes >= STREAM_MIN_BYTES
    ]
    originals = [v.const_value for v in streamed]
    names = {v.name for v in streamed}
    fast = model_parts(model, ir_version, names, inline_external=True)
    if fast is not None:
        head, graph_bytes = fast
    else:
        head, graph_bytes = _serialized_parts(model, ir_version, streamed, originals, names)
    return _write(out, head, graph_bytes, streamed, originals, copy_tensor)


def _serialized_parts(model: ir.Model, ir_version: int, streamed: list[ir.Value],
                      originals: list[ir.TensorProtocol], names: set[str]) -> tuple[bytes, bytes]:
    """(ModelProto bytes without its graph, GraphProto bytes without the
    streamed initializers) through onnx-ir's serializer: the streamed tensors
    stand in as placeholders, other external tensors are read."""
    try:
        for value, tensor in zip(streamed, originals):
            value.const_value = ir.ExternalTensor(_PLACEHOLDER, 0, tensor.nbytes, tensor.dtype,
                                                  shape=tensor.shape, name=value.name)
        # Other external tensors (subgraph initializers) must be inlined normally.
        swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
        for graph in all_graphs(model):
            for value in graph.initializers.values():
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor) and tensor.location != _PLACEHOLDER:
                    swapped.append((value, tensor))
                    value.const_value = ir.Tensor(tensor.numpy(), name=value.name)
        try:
            proto = ir.serde.serialize_model(model)
        finally:
            for value, tensor in swapped:
                value.const_value = tensor
    finally:
        for value, tensor in zip(streamed, originals):
            value.const_value = tensor
    proto.ir_version = ir_version
    kept = [t for t in proto.graph.initializer if t.name not in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    graph_bytes = proto.graph.SerializeToString()
    proto.ClearField("graph")
    return proto.SerializeToString(), graph_bytes


def _write(out: BinaryIO, head: bytes, graph_bytes: bytes, streamed: list[ir.Value],
           originals: list[ir.TensorProtocol], copy_tensor: Callable[[ir.TensorProtocol, BinaryIO], int]) -> int:
    """Write the model: its head, then the graph field with the streamed
    initializers appended as records; return the bytes written."""
    records: list[tuple[bytes, int, ir.TensorProtocol]] = []
    body = len(graph_bytes)
    for value, tensor in zip(streamed, originals):
        header = onnx.TensorProto(name=value.name, data_type=int(tensor.dtype),
                                  dims=[int(d) for d in tensor.shape.numpy()]).SerializeToString()
        nbytes = tensor.nbytes
        inner = header + _RAW_DATA + _varint(nbytes)
        record_len = len(inner) + nbytes
        prefix = _INITIALIZER + _varint(record_len) + inner
        records.append((prefix, nbytes, tensor))
        body += len(prefix) + nbytes
    out.write(head)
    out.write(_GRAPH + _varint(body))
    out.write(graph_bytes)
    written = len(head) + len(_GRAPH) + len(_varint(body)) + len(graph_bytes)
    for prefix, nbytes, tensor in records:
        out.write(prefix)
        copied = copy_tensor(tensor, out)
        if copied != nbytes:
            raise ValueError(f"initializer '{tensor.name}' wrote {copied} bytes, expected {nbytes}")
        written += len(prefix) + nbytes
    return written

"""graphopt's IR: the only module that imports ``onnx_ir`` directly.

Passes use the names re-exported here (``Model``, ``Graph``, ``Node``,
``Value``, ``Tensor``, ...) so the underlying IR stays replaceable. The IR is
onnx-ir: values with use-def chains, subgraphs, model-local functions, and
external tensors that are memory-mapped rather than read.
"""

from __future__ import annotations

import onnx
import onnx_ir as _ir
from onnx_ir import (
    Attr,
    AttributeType,
    DataType,
    ExternalTensor,
    Function,
    Graph,
    Model,
    Node,
    Shape,
    SymbolicDim,
    Tensor,
    TensorType,
    Value,
)

from graphopt.errors import LoadError
from graphopt.ir.consts import (
    add_initializer, const_array, const_tensor, constant_node_tensor, is_constant, value_names,
)
from graphopt.ir.edit import (
    all_graphs, all_nodes, bypass, graphs_and_functions, infer_shapes, subgraphs, unique_name,
)
from graphopt.ir.inliner import inline_functions
from graphopt.ir.gs import from_graphsurgeon, to_graphsurgeon
from graphopt.ir.load import deserialize, load, load_proto, validate_model
from graphopt.ir.save import SaveReport, save, to_proto
from graphopt.ir.tensors import ProtoTensor, cached_tensor
from graphopt.ir.text import canonical_order, tensor_text, to_text

__all__ = [
    "Attr", "AttributeType", "DataType", "ExternalTensor", "Function", "Graph", "Model",
    "Node", "Shape", "SymbolicDim", "Tensor", "TensorType", "Value",
    "load", "load_proto", "validate_model", "save", "SaveReport", "to_proto", "from_proto",
    "from_text", "to_text", "tensor_text", "canonical_order", "clone",
    "from_graphsurgeon", "to_graphsurgeon", "serde", "convenience",
    "bypass", "graphs_and_functions", "infer_shapes", "inline_functions", "subgraphs", "all_graphs", "all_nodes",
    "unique_name",
    "add_initializer", "const_array", "const_tensor", "constant_node_tensor", "is_constant",
    "ProtoTensor", "cached_tensor", "value_names",
]

serde = _ir.serde
convenience = _ir.convenience


def from_proto(proto: onnx.ModelProto) -> Model:
    """Convert an in-memory ``onnx.ModelProto`` into a validated IR model.

    Raises:
        LoadError: malformed proto, cyclic graph, or a value read but never produced.
    """
    return deserialize(proto, source="model proto")


def from_text(text: str) -> Model:
    """Parse a model written in the ONNX textual syntax (``onnx.parser``).

    Args:
        text: e.g. ``'<ir_version: 10, opset_import: ["" : 17]> g (float[N] x) => (float[N] y) { y = Relu(x) }'``.

    Raises:
        LoadError: the text does not parse, with the parser's message.
    """
    try:
        proto = onnx.parser.parse_model(text)
    except Exception as e:  # onnx.parser.ParseError and friends
        raise LoadError(f"ONNX text does not parse: {e}") from e
    return from_proto(proto)


def clone(model: Model) -> Model:
    """A structural copy of ``model``: new graphs, nodes and values, shared
    (immutable) tensors, so it costs no weight memory. Used for rollback."""
    copy = model.clone()
    for key, value in model.meta.items():
        copy.meta[key] = value
    return copy

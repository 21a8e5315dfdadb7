"""Constant values in the IR: reading them and creating initializers.

A value is constant when it is an initializer that is not also a graph input
(an input could override it at run time, per the ONNX IR spec) or the output
of a ``Constant`` node.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

__all__ = ["const_tensor", "const_array", "is_constant", "add_initializer", "constant_node_tensor", "value_names"]


def constant_node_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a ``Constant`` node (default domain) produces, from whichever
    of its attributes is set (``value``, ``value_float(s)``, ``value_int(s)``,
    ``value_string(s)``); None for ``sparse_value`` or a non-Constant node."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = node.attributes
    # The common ``value`` attribute read from the dict behind the UserDict:
    # ``Attr.as_tensor`` checks a runtime-checkable Protocol with isinstance,
    # which costs tens of microseconds per call.
    attr = attrs.data.get("value")
    if attr is not None and attr.type == ir.AttributeType.TENSOR and not attr.is_ref():
        return attr.value
    if "value" in attrs:
        return attrs["value"].as_tensor()
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return ir.Tensor(np.asarray(attrs[key].value, dtype=dtype))
    if "value_string" in attrs:
        return ir.StringTensor(np.asarray(attrs["value_string"].value.encode() if isinstance(
            attrs["value_string"].value, str) else attrs["value_string"].value))
    if "value_strings" in attrs:
        return ir.StringTensor([s.encode() if isinstance(s, str) else s for s in attrs["value_strings"].value])
    return None


def const_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor behind a constant value (lazy: not read), or None.

    Args:
        value: any IR value (None for an omitted optional input).
    """
    if value is None:
        return None
    if value.const_value is not None and value.is_initializer() and not value.is_graph_input():
        return value.const_value
    producer = value.producer()
    if producer is not None:
        return constant_node_tensor(producer)
    if value.const_value is not None and not value.is_graph_input():
        return value.const_value
    return None


def is_constant(value: ir.Value | None) -> bool:
    """True when :func:`const_tensor` finds a tensor."""
    return const_tensor(value) is not None


def const_array(value: ir.Value | None, max_elements: int | None = None) -> np.ndarray | None:
    """The numpy array of a constant value, or None when it is not constant or
    has more than ``max_elements`` elements (checked before reading bytes)."""
    tensor = const_tensor(value)
    if tensor is None:
        return None
    if max_elements is not None and tensor.shape is not None and math.prod(tensor.shape.numpy()) > max_elements:
        return None
    return tensor.numpy()


def _output_names(graph: ir.Graph) -> set[str]:
    """The non-empty names of the values the graph's nodes produce.

    Read from the node dict of onnx-ir's ``DoublyLinkedSet`` (live nodes only)
    without the linked-list generator: this runs once per new initializer and
    dominated Conv+BatchNorm folding. Falls back to iterating the graph when
    onnx-ir's internals are not as expected.
    """
    boxes = getattr(getattr(graph, "_nodes", None), "_value_ids_to_boxes", None)
    if type(boxes) is not dict:
        return {v.name for n in graph for v in n.outputs if v.name}
    names = {v.name for box in boxes.values() for v in box.value.outputs}
    names.discard(None)
    names.discard("")
    return names


def value_names(graph: ir.Graph) -> set[str]:
    """The names of the graph's node outputs, initializers and inputs: the
    names a new value of ``graph`` must not take. A pass adding several
    initializers builds it once and hands it to :func:`add_initializer`."""
    taken = _output_names(graph)
    taken.update(graph.initializers)
    taken.update(v.name for v in graph.inputs)
    return taken


def add_initializer(graph: ir.Graph, array: np.ndarray | ir.TensorProtocol, name: str,
                    taken: set[str] | None = None) -> ir.Value:
    """Register a new initializer in ``graph`` with a name unique in the graph.

    Args:
        graph: the graph to hold it (a subgraph is fine).
        array: the data (numpy array, any dtype onnx-ir supports) or a tensor.
        name: the preferred name; a suffix is added if it is taken.
        taken: the names in use (:func:`value_names`), when the caller keeps
            them across calls; the new name is added to it. The caller adds
            the names of values it creates otherwise. None: computed here
            (a walk over the graph's nodes).

    Returns:
        The new initializer value (dtype and shape set).
    """
    # The ndarray test first: isinstance against a runtime-checkable Protocol is slow.
    tensor = array if not isinstance(array, np.ndarray) and isinstance(array, ir.TensorProtocol) else ir.Tensor(np.asarray(array))
    if taken is None:
        taken = value_names(graph)
    unique, i = name, 1
    while unique in taken or unique in graph.initializers:
        unique = f"{name}_{i}"
        i += 1
    taken.add(unique)
    tensor.name = unique
    value = ir.Value(name=unique, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value

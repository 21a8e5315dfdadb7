"""Interop with onnx-graphsurgeon (NVIDIA's ``gs.Graph``).

Users who write graphsurgeon scripts can hand a ``gs.Graph`` to graphopt and get
one back. The exchange goes through an ``onnx.ModelProto`` (``gs.export_onnx`` /
``gs.import_onnx``), which is graphsurgeon's own documented round trip.
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.ir.load import deserialize
from graphopt.ir.save import to_proto

__all__ = ["from_graphsurgeon", "to_graphsurgeon"]


def from_graphsurgeon(graph: object) -> ir.Model:
    """Convert an ``onnx_graphsurgeon.Graph`` into a graphopt IR model.

    Args:
        graph: a ``gs.Graph`` (its ``opset`` becomes the default-domain opset).

    Returns:
        A validated IR model (weights in memory).

    Raises:
        InputError: ``graph`` is not a graphsurgeon graph.
        LoadError: the exported graph has a cycle or an undefined value.
    """
    import onnx_graphsurgeon as gs

    if not isinstance(graph, gs.Graph):
        raise InputError(f"from_graphsurgeon expects an onnx_graphsurgeon.Graph, got {type(graph).__name__}")
    proto = gs.export_onnx(graph, do_type_check=False)
    return deserialize(proto, source="graphsurgeon graph")


def to_graphsurgeon(model: ir.Model) -> object:
    """Convert a graphopt IR model into an ``onnx_graphsurgeon.Graph``.

    External (memory-mapped) weights are read into memory first, so this is
    meant for models under 2 GiB.

    Args:
        model: the IR model; not modified.

    Returns:
        A ``gs.Graph``.

    Raises:
        SaveError: the model's weights exceed the protobuf limit.
    """
    import onnx_graphsurgeon as gs

    return gs.import_onnx(to_proto(model, inline_external=True))

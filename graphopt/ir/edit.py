"""Graph edits that keep the model's signature: the building blocks passes use
to bypass or remove nodes."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["bypass", "infer_shapes", "graphs_and_functions"]


def _owner_outputs(value: ir.Value) -> list[ir.Value] | None:
    """The outputs list of the graph or function that owns ``value``'s producer."""
    producer = value.producer()
    graph = producer.graph if producer is not None else value.graph
    return list(graph.outputs) if graph is not None else None


def bypass(node: ir.Node, output: ir.Value, source: ir.Value) -> bool:
    """Make every reader of ``output`` (a value ``node`` produces) read ``source``
    instead, so the node can be removed, keeping the graph's output signature.

    When ``output`` is a graph output, ``source`` takes its place in the
    outputs list and takes its name, dtype and shape (symbolic dims kept) -
    possible only when ``source`` is produced by a node of the same graph and is
    not itself a graph output, graph input or initializer.

    Args:
        node: the node about to be removed.
        output: one of ``node``'s outputs.
        source: the value that carries the same data.

    Returns:
        True when rewired; False when ``output`` is a graph output that
        ``source`` cannot stand in for (the node must stay).
    """
    if not output.is_graph_output():
        output.replace_all_uses_with(source)
        return True
    producer = source.producer()
    if (
        producer is None
        or producer.graph is not node.graph
        or source.is_graph_output()
        or source.is_graph_input()
        or source.is_initializer()
    ):
        return False
    name, vtype, shape = output.name, output.type, output.shape
    output.replace_all_uses_with(source, replace_graph_outputs=True)
    output.name = None
    source.name = name
    if vtype is not None:
        source.type = vtype
    if shape is not None:
        source.shape = shape
    return True


def graphs_and_functions(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies) and every
    model-local function, in that order."""
    result: list[ir.Graph | ir.Function] = [model.graph, *model.graph.subgraphs()]
    for func in model.functions.values():
        result.append(func)
        result.extend(func.subgraphs())
    return result


def infer_shapes(model: ir.Model) -> ir.Model:
    """Run ONNX shape inference (``onnx.shape_inference``, strict off, data
    propagation on) and merge the inferred types and shapes into ``model``.

    Uses onnx-ir's ``ShapeInferencePass``, which serializes the graph without
    large initializer data, so it works on models over 2 GB.

    Raises:
        onnx.shape_inference.InferenceError: inconsistent shapes in the model.
    """
    from onnx_ir.passes.common import ShapeInferencePass

    result = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    return result.model

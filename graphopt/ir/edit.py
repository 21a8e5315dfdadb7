"""Graph edits that keep the model's signature: the building blocks passes use
to bypass or remove nodes."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.ir import shape_io

__all__ = ["bypass", "infer_shapes", "graphs_and_functions", "subgraphs", "all_graphs", "all_nodes", "unique_name"]


def unique_name(name: str, taken: set[str], sep: str = "_", start: int = 1) -> str:
    """``name``, or the first of ``name{sep}{start}``, ``name{sep}{start + 1}``... not in ``taken``; the result is
    added to ``taken`` (a fresh node or value name: ``unique_name("w_lowrank_h", names)`` -> ``w_lowrank_h_1``
    when ``w_lowrank_h`` is taken)."""
    candidate, i = name, start
    while candidate in taken:
        candidate = f"{name}{sep}{i}"
        i += 1
    taken.add(candidate)
    return candidate


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


_GRAPH_KINDS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def subgraphs(container: ir.Graph | ir.Function) -> list[ir.Graph]:
    """Every graph nested in ``container``'s nodes (If/Loop/Scan bodies, any
    GRAPH/GRAPHS attribute), at any depth, in depth-first order.

    A direct recursion over node attributes: onnx-ir's generator-based
    ``Graph.subgraphs()`` walks every node through a recursive iterator, which
    dominated the run time of small passes. The attributes are read from the
    plain dict behind ``node.attributes`` (a ``UserDict``), whose mapping
    protocol costs more than the walk itself. Most models have no subgraph:
    a first unordered scan of the node set (onnx-ir's ``DoublyLinkedSet``
    keeps its live nodes in a dict as well) returns ``[]`` for them without
    the linked-list generator; the ordered walk runs only when some node
    holds a graph.
    """
    if not _has_graph_attr(container):
        return []
    found: list[ir.Graph] = []
    stack = [container]
    graph_kinds = _GRAPH_KINDS
    while stack:
        graph = stack.pop()
        for node in graph:
            attrs = node.attributes.data
            if not attrs:
                continue
            for attr in attrs.values():
                kind = attr.type
                if kind in graph_kinds:
                    if kind == ir.AttributeType.GRAPH:
                        found.append(attr.value)
                        stack.append(attr.value)
                    else:
                        found.extend(attr.value)
                        stack.extend(attr.value)
    return found


def _has_graph_attr(container: ir.Graph | ir.Function) -> bool:
    """Whether some node directly in ``container`` has a GRAPH/GRAPHS attribute
    (True when onnx-ir's internals are not as expected: the caller then walks)."""
    graph = container._graph if isinstance(container, ir.Function) else container  # noqa: SLF001
    boxes = getattr(getattr(graph, "_nodes", None), "_value_ids_to_boxes", None)
    if type(boxes) is not dict:
        return True
    graph_kinds = _GRAPH_KINDS
    for box in boxes.values():
        attrs = box.value._attributes.data  # noqa: SLF001 - the dict behind node.attributes
        if attrs:
            for attr in attrs.values():
                if attr.type in graph_kinds:
                    return True
    return False


def all_graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph and every graph nested in it (not function bodies)."""
    return [model.graph, *subgraphs(model.graph)]


def all_nodes(container: ir.Graph | ir.Function) -> list[ir.Node]:
    """Every node of ``container`` and of the graphs nested in it."""
    nodes = list(container)
    for graph in subgraphs(container):
        nodes.extend(graph)
    return nodes


def graphs_and_functions(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, every subgraph (If/Loop/Scan bodies) and every
    model-local function, in that order."""
    result: list[ir.Graph | ir.Function] = all_graphs(model)
    for func in model.functions.values():
        result.append(func)
        result.extend(subgraphs(func))
    return result


def infer_shapes(model: ir.Model) -> ir.Model:
    """Run ONNX shape inference (``onnx.shape_inference.infer_shapes``, strict
    off, data propagation on) and set the inferred dtypes and shapes on the
    model's values, matched by name (value names are unique across a model
    and its subgraphs: ONNX IR spec, SSA).

    Initializers over 1 KiB are handed to inference as typed graph inputs
    without their bytes, so the serialized graph stays small (as onnx-ir's
    ``ShapeInferencePass`` does) and weights are never read. Values the
    inference leaves unknown keep what they had.

    A model without subgraphs and functions (the common case) is encoded by
    :func:`graphopt.ir.shape_io.encode`: the same ModelProto as onnx-ir's
    serializer followed by the stripping above, written directly with bytes
    reused across calls (the simplifier's fixpoint infers shapes once per
    iteration); other models go through ``onnx_ir.serde``. Inferred shapes
    are frozen ``ir.Shape`` objects, shared by values with equal shapes.

    Returns:
        ``model`` (changed in place). When inference fails on an inconsistent
        model, a warning is logged and the model is left as it was.
    """
    import logging

    import onnx

    encoded = shape_io.encode(model)
    if encoded is None:
        encoded = _serialize_for_inference(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(encoded, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        logging.getLogger(__name__).warning("shape inference failed, shapes left as they were: %s", e)
        return model
    types: dict[str, bytes] = {}
    _collect_types(inferred.graph, types)
    cache = shape_io.cache_of(model)
    old, new = cache.types_read, {}
    for graph in all_graphs(model):
        for node in graph:
            for value in node.outputs:
                data = types.get(value.name or "")
                if data is None:
                    continue
                # equal TypeProtos (most of them, from one inference to the next) are read once
                read = new.get(data) or old.get(data)
                if read is None:
                    read = shape_io.read_type(data, cache)
                new[data] = read
                dtype, shape = read
                if dtype is None:
                    continue  # not a tensor type
                if dtype and value.dtype is None:
                    value.dtype = ir.DataType(dtype)
                if shape is not None:
                    value.shape = shape
    cache.types_read = new
    if len(cache.shapes) > 4 * len(new) + 64:  # keep the shape cache to about what one inference uses
        cache.shapes.clear()
    return model


def _serialize_for_inference(model: ir.Model):  # noqa: ANN202 - onnx.ModelProto
    """The ModelProto for shape inference through onnx-ir's serializer, any
    model (subgraphs, functions), initializers over 1 KiB replaced by typed inputs."""
    from onnx_ir import serde

    big: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for graph in all_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and tensor.nbytes > 1024 and not isinstance(tensor, ir.StringTensor):
                big.append((value, tensor))
    try:
        for value, tensor in big:
            value.const_value = ir.ExternalTensor("__graphopt_shape_inference__", 0, tensor.nbytes, tensor.dtype,
                                                  shape=tensor.shape, name=value.name)
        proto = serde.serialize_model(model)
    finally:
        for value, tensor in big:
            value.const_value = tensor
    _strip_initializers(proto.graph, {v.name for v, _ in big})
    return proto


def _strip_initializers(graph, names: set[str], top=None) -> None:  # noqa: ANN001 - onnx.GraphProto
    """Replace named initializers of a GraphProto (and its subgraphs) by typed
    inputs without data. The inputs go to the main graph (``top``): an If
    branch has no inputs and a Loop/Scan body's are its own, so inference
    refused a subgraph given extra ones (and, strict mode off, left its values
    without shapes); a main-graph input is an outer-scope value every
    subgraph sees, under the same unique name (ONNX IR spec, SSA)."""
    import onnx

    top = graph if top is None else top
    keep = []
    for tensor in graph.initializer:
        if tensor.name in names:
            top.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            keep.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for sub in _proto_subgraphs(graph):
        _strip_initializers(sub, names, top)


def _collect_types(graph, types: dict) -> None:  # noqa: ANN001 - onnx.GraphProto
    """Name -> serialized TypeProto of every value_info and output, subgraphs included."""
    for infos in (graph.value_info, graph.output):
        for vi in infos:
            types[vi.name] = vi.type.SerializeToString()
    for sub in _proto_subgraphs(graph):
        _collect_types(sub, types)


def _proto_subgraphs(graph):  # noqa: ANN001, ANN202 - onnx.GraphProto -> Iterator[onnx.GraphProto]
    """The GraphProtos held directly in a GraphProto's node attributes."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield attr.g
            yield from attr.graphs

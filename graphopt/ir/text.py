"""Canonical text form of a model, for golden tests and ``--dump-dir``.

The text is deterministic and independent of the node list's order and of
internal value names:

* one line per node: ``%3, %4 = Split{axis=1}(%2, %w0)``;
* graph inputs and outputs keep their names (they are the model's signature);
  every other value is renamed ``%0, %1, ...`` in canonical order, and
  initializers ``%w0, %w1, ...`` in order of first use;
* canonical order is a depth-first post-order from the graph outputs (inputs
  visited left to right); nodes that reach no output follow, picked by a
  sorted ready list;
* node names, doc strings and metadata are dropped; attributes are sorted;
* tensors of at most :data:`SMALL_TENSOR` elements are printed exactly (float
  values by their shortest round-trip repr), larger ones as dtype, shape and
  the first 16 hex digits of the SHA-256 of their bytes.

This follows the golden-test conventions of TVM (Before/Expected as IR text)
and LLVM FileCheck, adapted to ONNX.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.ir.edit import all_nodes

__all__ = ["to_text", "tensor_text", "SMALL_TENSOR"]

SMALL_TENSOR = 16
"""Tensors with at most this many elements are printed element by element."""


def _fmt_scalar(x: object) -> str:
    if isinstance(x, (np.floating, float)):
        if isinstance(x, float):
            return repr(x)
        return str(x.item()) if x.dtype == np.float64 else str(x)
    if isinstance(x, (bytes, np.bytes_)):
        return repr(bytes(x))
    if isinstance(x, (np.bool_, bool)):
        return "true" if x else "false"
    return str(int(x)) if isinstance(x, (np.integer, int)) else str(x)


def _shape_text(shape: ir.Shape | Sequence[object] | None) -> str:
    if shape is None:
        return "?"
    dims = []
    for d in shape:
        if isinstance(d, int):
            dims.append(str(d))
        else:
            value = getattr(d, "value", d)
            dims.append(str(value) if value is not None else "?")
    return "[" + ",".join(dims) + "]"


def tensor_text(tensor: ir.TensorProtocol) -> str:
    """Text of a tensor: ``float32[2] = [1.0, 2.5]`` or
    ``float32[512,512] sha256:0123456789abcdef``.

    Args:
        tensor: any IR tensor; large ones are read once to hash their bytes.
    """
    dtype = tensor.dtype.name.lower()
    head = f"{dtype}{_shape_text(tensor.shape)}"
    size = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
    if size <= SMALL_TENSOR:
        if isinstance(tensor, ir.StringTensor):
            items = [repr(bytes(b)) for b in tensor.string_data()]
        else:
            arr = tensor.numpy().reshape(-1)
            items = [_fmt_scalar(v) for v in arr]
        return f"{head} = [{', '.join(items)}]"
    digest = hashlib.sha256(tensor.tobytes()).hexdigest()[:16]
    return f"{head} sha256:{digest}"


def _type_text(value: ir.Value) -> str:
    vtype = value.type
    if vtype is None:
        return "?"
    if isinstance(vtype, ir.TensorType):
        return f"{vtype.dtype.name.lower()}{_shape_text(value.shape)}"
    return str(vtype)


class _Printer:
    """Assigns canonical names and renders graphs; one instance per model."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.counter = 0
        self.weights = 0
        self.lines: list[str] = []

    def name(self, value: ir.Value | None) -> str:
        if value is None:
            return "_"
        key = id(value)
        if key not in self.names:
            if value.is_initializer() and value.graph is not None and not value.is_graph_input():
                self.names[key] = f"%w{self.weights}"
                self.weights += 1
            else:
                self.names[key] = f"%{self.counter}"
                self.counter += 1
        return self.names[key]

    def attr_text(self, attr: ir.Attr, indent: str) -> str:
        if attr.is_ref():
            return f"{attr.name}=@{attr.ref_attr_name}"
        kind = attr.type
        value = attr.value
        if kind == ir.AttributeType.GRAPH:
            return f"{attr.name}=" + self.graph_block(value, indent)
        if kind == ir.AttributeType.GRAPHS:
            return f"{attr.name}=[" + ", ".join(self.graph_block(g, indent) for g in value) + "]"
        if kind == ir.AttributeType.TENSOR:
            return f"{attr.name}=tensor({tensor_text(value)})"
        if kind == ir.AttributeType.TENSORS:
            return f"{attr.name}=[" + ", ".join(f"tensor({tensor_text(t)})" for t in value) + "]"
        if kind == ir.AttributeType.FLOAT:
            return f"{attr.name}={_fmt_scalar(np.float32(value))}"
        if kind == ir.AttributeType.FLOATS:
            return f"{attr.name}=[" + ", ".join(_fmt_scalar(np.float32(v)) for v in value) + "]"
        if kind == ir.AttributeType.STRING:
            return f"{attr.name}={value!r}"
        if kind in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
            return f"{attr.name}=[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value) + "]"
        return f"{attr.name}={value}"

    def node_line(self, node: ir.Node, indent: str) -> str:
        outs = ", ".join(self.name(v) for v in node.outputs)
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if node.overload:
            op += f":{node.overload}"
        attrs = [self.attr_text(node.attributes[k], indent + "  ") for k in sorted(node.attributes)]
        attr_part = "{" + ", ".join(attrs) + "}" if attrs else ""
        ins = ", ".join(self.name(v) for v in node.inputs)
        return f"{indent}{outs} = {op}{attr_part}({ins})"

    def graph_block(self, graph: ir.Graph, indent: str) -> str:
        inner: list[str] = []
        saved, self.lines = self.lines, inner
        self.emit_graph(graph, indent + "  ", keep_io_names=False)
        self.lines = saved
        return "{\n" + "\n".join(inner) + "\n" + indent + "}"

    def emit_graph(self, graph: ir.Graph | ir.Function, indent: str, keep_io_names: bool) -> None:
        inputs = list(graph.inputs)
        for value in inputs:
            if keep_io_names:
                self.names[id(value)] = f"%{value.name}"
            self.lines.append(f"{indent}input {self.name(value)}: {_type_text(value)}")
        if keep_io_names:
            for value in graph.outputs:
                if id(value) not in self.names:
                    self.names[id(value)] = f"%{value.name}"
        order = canonical_order(graph)
        initializers = graph.initializers.values() if isinstance(graph, ir.Graph) else []
        used_first: list[ir.Value] = []
        seen: set[int] = set()
        for node in order:
            for v in node.inputs:
                if v is not None and v.is_initializer() and v.graph is graph and id(v) not in seen:
                    seen.add(id(v))
                    used_first.append(v)
        for v in graph.outputs:
            if v.is_initializer() and v.graph is graph and id(v) not in seen:
                seen.add(id(v))
                used_first.append(v)
        rest = [v for v in initializers if id(v) not in seen and not v.is_graph_input()]
        rest.sort(key=lambda v: tensor_text(v.const_value) if v.const_value is not None else "")
        for value in used_first + rest:
            if value.is_graph_input():
                continue
            body = tensor_text(value.const_value) if value.const_value is not None else _type_text(value)
            self.lines.append(f"{indent}init {self.name(value)}: {body}")
        for node in order:
            self.lines.append(self.node_line(node, indent))
        for value in graph.outputs:
            self.lines.append(f"{indent}output {self.name(value)}: {_type_text(value)}")


def canonical_order(graph: Iterable[ir.Node]) -> list[ir.Node]:
    """Nodes of ``graph`` in canonical order (see module docstring).

    Args:
        graph: an IR graph or function (iterable of nodes, with ``outputs``).

    Returns:
        Every node exactly once, producers before consumers.
    """
    nodes = list(graph)
    members = {id(n) for n in nodes}
    order: list[ir.Node] = []
    done: set[int] = set()

    def visit(root: ir.Node) -> None:
        stack: list[tuple[ir.Node, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if id(node) in done:
                continue
            preds = [v.producer() for v in node.inputs if v is not None]
            preds += _captured_producers(node)
            while i < len(preds):
                p = preds[i]
                i += 1
                if p is not None and id(p) in members and id(p) not in done:
                    stack.append((node, i))
                    stack.append((p, 0))
                    break
            else:
                done.add(id(node))
                order.append(node)

    for value in graph.outputs:  # type: ignore[attr-defined]
        producer = value.producer()
        if producer is not None and id(producer) in members:
            visit(producer)
    remaining = [n for n in nodes if id(n) not in done]
    dead_key = _DeadKeys()
    while remaining:
        remaining.sort(key=dead_key)
        visit(remaining[0])
        remaining = [n for n in remaining if id(n) not in done]
    return order


def _captured_producers(node: ir.Node) -> list[ir.Node | None]:
    """Producers of outer-scope values read inside a node's subgraphs."""
    result: list[ir.Node | None] = []
    for attr in node.attributes.values():
        graphs = []
        if attr.type == ir.AttributeType.GRAPH:
            graphs = [attr.value]
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs = list(attr.value)
        for g in graphs:
            inner = {id(n) for n in all_nodes(g)}
            for n in all_nodes(g):
                for v in n.inputs:
                    if v is not None and v.producer() is not None and id(v.producer()) not in inner:
                        result.append(v.producer())
    return result


class _DeadKeys:
    """Sort keys for nodes that reach no output. A key depends only on the
    structure upstream of the node - its op, attributes, and recursively what
    its inputs are (graph inputs by position, initializers by dtype, shape and
    small values, other values by their producer's key) - never on internal
    value names or the node list's order, so the canonical text does not either.
    """

    def __init__(self) -> None:
        self._keys: dict[int, str] = {}

    def __call__(self, node: ir.Node) -> tuple[str, str]:
        return (f"{node.domain}::{node.op_type}", self._digest(node))

    def _digest(self, root: ir.Node) -> str:
        stack = [root]
        visiting: set[int] = set()
        while stack:  # iterative post-order: dead chains can be long
            node = stack[-1]
            if id(node) in self._keys:
                stack.pop()
                continue
            if id(node) not in visiting:
                visiting.add(id(node))
                pending = [
                    p for v in node.inputs
                    if v is not None and (p := v.producer()) is not None
                    and id(p) not in self._keys and id(p) not in visiting
                ]
                if pending:
                    stack.extend(pending)
                    continue
            stack.pop()
            parts = [node.domain, node.op_type, node.overload or ""]
            parts += [f"{k}={_attr_key(node.attributes[k])}" for k in sorted(node.attributes)]
            parts += [self._value_key(v) for v in node.inputs]
            self._keys[id(node)] = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
        return self._keys[id(root)]

    def _value_key(self, value: ir.Value | None) -> str:
        if value is None:
            return "_"
        producer = value.producer()
        if producer is not None:
            return f"{self._keys.get(id(producer), producer.op_type)}:{value.index()}"
        if value.is_initializer() and not value.is_graph_input() and value.const_value is not None:
            tensor = value.const_value
            size = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
            if size <= SMALL_TENSOR:
                return "init:" + tensor_text(tensor)
            return f"init:{tensor.dtype.name}{_shape_text(tensor.shape)}"
        owner = value.graph
        if value.is_graph_input() and owner is not None:
            return f"in#{list(owner.inputs).index(value)}"  # subgraph inputs are renamed
        return "in:" + (value.name or "")


def _attr_key(attr: ir.Attr) -> str:
    """An attribute's value for sorting, without subgraph value names."""
    if attr.is_ref():
        return f"@{attr.ref_attr_name}"
    if attr.type == ir.AttributeType.GRAPH:
        return f"graph[{len(list(attr.value))}]"
    if attr.type == ir.AttributeType.GRAPHS:
        return "graphs[" + ",".join(str(len(list(g))) for g in attr.value) + "]"
    if attr.type == ir.AttributeType.TENSOR:
        return tensor_text(attr.value)
    if attr.type == ir.AttributeType.TENSORS:
        return ",".join(tensor_text(t) for t in attr.value)
    return repr(attr.value)


def to_text(model: ir.Model | ir.Graph) -> str:
    """The canonical text of a model or graph (see module docstring).

    Args:
        model: an IR model (opsets, main graph, functions) or a lone graph.

    Returns:
        Text ending with a newline. Equal text means equal graphs up to node
        order, internal names, node names and doc strings.
    """
    printer = _Printer()
    graph = model.graph if isinstance(model, ir.Model) else model
    opsets = model.opset_imports
    printer.lines.append("opset " + " ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(opsets.items())))
    printer.lines.append("graph {")
    printer.emit_graph(graph, "  ", keep_io_names=True)
    printer.lines.append("}")
    if isinstance(model, ir.Model):
        for key in sorted(model.functions, key=lambda k: tuple(str(p) for p in k)):
            func = model.functions[key]
            sub = _Printer()
            attrs = ", ".join(sorted(func.attributes)) if func.attributes else ""
            head = f"function {func.domain}::{func.name}"
            if func.overload:
                head += f":{func.overload}"
            sub.lines.append(head + (f" attrs[{attrs}]" if attrs else "") + " {")
            sub.emit_graph(func, "  ", keep_io_names=False)
            sub.lines.append("}")
            printer.lines.extend(sub.lines)
    return "\n".join(printer.lines) + "\n"

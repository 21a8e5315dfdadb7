"""Which nodes TensorRT's ONNX parser will reject, told without TensorRT.

The data is onnx-tensorrt's operator support table (``docs/operators.md``,
the TensorRT 10.15 edition: opsets 9 to 24), transcribed into
``operators.json`` beside this module: per operator whether it is supported,
its documented types, and its restrictions. :func:`check_model` reports, for
every node of the main graph and of control-flow bodies:

- operators of another domain (``com.microsoft`` and friends): the parser
  imports them only as a TensorRT plugin of the same name, which a stock
  TensorRT does not have;
- operators the table marks unsupported (``Unique``,
  ``DynamicQuantizeLinear``, the Sequence ops, ...) or does not list;
- the restrictions that are cheap to check on the graph: Attention's 4-D
  inputs and unsupported inputs/outputs/attributes, LayerNormalization's
  extra outputs, MaxPool's Indices, Dropout's ``is_training``, TopK's
  ``sorted`` and K, ScatterND's ``reduction``, Resize's modes, Q/DQ zero
  points, Reduce* ``axes`` inputs, RotaryEmbedding's ``position_ids`` type,
  LSTM's ``input_forget``/``layout``, string and sparse Constants;
- a default-domain opset outside the parser's range (model level).

The table lists the TensorRT layer types per operator too; they are reported
as-is in :func:`operator_info` but not enforced (the parser casts INT64 and
DOUBLE where it can, so a type outside the list is not a reliable failure).
With TensorRT installed, :mod:`graphopt.codegen.tensorrt.compat` asks the
parser itself, which is authoritative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Issue", "check_model", "operator_info", "table", "DEFAULT_DOMAINS"]

DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_TABLE = Path(__file__).with_name("operators.json")


@dataclass(frozen=True)
class Issue:
    """One reason TensorRT will not build a model.

    Attributes:
        node: the node's name (``""`` for an unnamed node; ``None`` for a
            model-level issue such as the opset).
        op_type: ``domain::op`` for another domain, else the op type.
        reason: what the parser will refuse and what to do.
        source: ``"operators.md"`` (this table) or ``"parser"``.
        index: the node's position in its graph (``None`` for model level).
        graph: the graph holding the node (``"main"`` or the body's path).
    """

    node: str | None
    op_type: str
    reason: str
    source: str = "operators.md"
    index: int | None = None
    graph: str = "main"

    def describe(self) -> str:
        """One line: ``node 'name' (Op): reason``."""
        if self.node is None:
            return f"model: {self.reason}"
        where = f"node '{self.node}'" if self.node else f"unnamed node #{self.index}"
        if self.graph != "main":
            where += f" in {self.graph}"
        return f"{where} ({self.op_type}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason, "source": self.source,
                "index": self.index, "graph": self.graph}


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The vendored table: ``{"tensorrt_version", "opset_min", "opset_max",
    "source", "notes", "operators": {op: {"supported", "types",
    "restrictions"?}}}``."""
    return json.loads(_TABLE.read_text())


def operator_info(op_type: str) -> dict[str, Any] | None:
    """The table's entry for a default-domain operator, or None if unlisted."""
    return table()["operators"].get(op_type)


class _Graph:
    """What the checks need to know about one graph: constant values,
    value types and ranks, and which outputs anyone reads."""

    def __init__(self, graph: onnx.GraphProto, outer: "_Graph | None" = None) -> None:
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.types: dict[str, onnx.TypeProto] = dict(outer.types) if outer else {}
        for v in [*graph.input, *graph.value_info, *graph.output]:
            self.types[v.name] = v.type
        for t in graph.initializer:
            self.types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        self.used = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
        for n in graph.node:  # names read inside bodies count as used
            for a in n.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    self.used |= {i for sub in g.node for i in sub.input if i}
        self.outer = outer

    def is_constant(self, name: str) -> bool:
        if name in self.initializers or name in self.constants:
            return True
        return self.outer.is_constant(name) if self.outer else False

    def value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant with its data in the file."""
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(t)
        if name in self.constants:
            for a in self.constants[name].attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
            return None
        return self.outer.value(name) if self.outer else None

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return len(t.tensor_type.shape.dim)

    def elem_type(self, name: str) -> int | None:
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type"):
            return None
        return t.tensor_type.elem_type or None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
_REDUCE = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare"}


def _restrictions(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterator[str]:
    """The documented restrictions of ``node`` it breaks (those that can be
    told from the graph; unknown ranks or non-constant values pass)."""
    op = node.op_type
    if op == "Attention":
        for i, what in ((0, "Q"), (1, "K"), (2, "V"), (3, "attn_mask")):
            r = g.rank(_input(node, i)) if _input(node, i) else None
            if r is not None and r != 4:
                yield f"{what} is {r}-D; TensorRT takes 4-D [batch, heads, sequence, head_size] only"
        for i, what in ((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")):
            if _input(node, i):
                yield f"input {what} is unsupported"
        for i, what in ((1, "present_key"), (2, "present_value"), (3, "qk_matmul_output")):
            if len(node.output) > i and node.output[i] and node.output[i] in g.used:
                yield f"output {what} is unsupported"
        if _attr(node, "qk_matmul_output_mode", 0) != 0:
            yield "attribute qk_matmul_output_mode is unsupported"
        if _attr(node, "softcap", 0.0) != 0.0:
            yield "attribute softcap is unsupported"
    elif op == "LayerNormalization":
        if any(o and o in g.used for o in node.output[1:]):
            yield "only the first output Y is supported (Mean / InvStdDev are read here)"
    elif op == "MaxPool":
        if len(node.output) > 1 and node.output[1] and node.output[1] in g.used:
            yield "the Indices output is unsupported"
    if op in ("MaxPool", "AveragePool", "LpPool"):
        dilations = _attr(node, "dilations")
        if dilations and any(d != 1 for d in dilations):
            yield f"dilations {list(dilations)} unsupported (empty or all ones only)"
        kernel = _attr(node, "kernel_shape")
        if op != "LpPool" and kernel is not None and len(kernel) not in (2, 3):
            yield f"{len(kernel)}-D pooling unsupported (2-D or 3-D only)"
    elif op == "Dropout":
        name = _input(node, 2)
        if name:
            value = g.value(name)
            if not g.is_constant(name):
                yield "is_training must be an initializer (it is computed at run time)"
            elif value is not None and bool(np.asarray(value).reshape(-1)[0]):
                yield "is_training is true; TensorRT runs inference only"
    elif op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            yield "sorted=0 is unsupported"
        k = g.value(_input(node, 1)) if opset >= 10 else _attr(node, "k")
        if k is not None and int(np.asarray(k).reshape(-1)[0]) >= 3840:
            yield f"K={int(np.asarray(k).reshape(-1)[0])} is too large (below 3840 only)"
    elif op == "ScatterND":
        if _text(_attr(node, "reduction", "none")) != "none":
            yield f"reduction={_text(_attr(node, 'reduction'))} is unsupported (none only)"
    elif op == "Resize":
        coord = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
        mode = _text(_attr(node, "mode", "nearest"))
        nearest = _text(_attr(node, "nearest_mode", "round_prefer_floor"))
        if coord not in _RESIZE_COORDS:
            yield f"coordinate_transformation_mode={coord} is unsupported"
        if mode not in ("nearest", "linear"):
            yield f"mode={mode} is unsupported (nearest or linear only)"
        if mode == "nearest" and nearest not in _RESIZE_NEAREST:
            yield f"nearest_mode={nearest} is unsupported"
        if _attr(node, "antialias", 0):
            yield "antialias is unsupported"
        if _text(_attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
            yield "keep_aspect_ratio_policy other than stretch is unsupported"
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        zp = _input(node, 2)
        value = g.value(zp) if zp else None
        if value is not None and np.any(np.asarray(value).astype(np.float64) != 0):
            yield f"{'y' if op == 'QuantizeLinear' else 'x'}_zero_point must be zero (symmetric quantization only)"
    elif op in _REDUCE:
        axes = _input(node, 1)
        if axes and not g.is_constant(axes):
            yield "axes must be an initializer (it is computed at run time)"
    elif op == "RotaryEmbedding":
        pos = _input(node, 3)
        if pos and g.elem_type(pos) not in (None, onnx.TensorProto.INT64):
            yield "position_ids must be INT64"
    elif op == "LSTM":
        if _attr(node, "input_forget", 0) != 0:
            yield "input_forget must be 0"
        if _attr(node, "layout", 0) != 0:
            yield "layout must be 0"
    elif op == "Constant":
        names = {a.name for a in node.attribute}
        bad = names & {"sparse_value", "value_string", "value_strings"}
        if bad:
            yield f"attribute {sorted(bad)[0]} is unsupported"
    elif op == "Cast":
        to = _attr(node, "to")
        if to in (onnx.TensorProto.STRING, onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
            yield f"cast to {onnx.TensorProto.DataType.Name(to)} is unsupported"
    elif op == "TensorScatter":
        if _attr(node, "axis", -2) != -2:
            yield "axis must be -2"


def _nodes(graph: onnx.GraphProto, outer: _Graph | None,
           path: str) -> Iterator[tuple[onnx.NodeProto, int, _Graph, str]]:
    g = _Graph(graph, outer)
    for i, node in enumerate(graph.node):
        yield node, i, g, path
        for a in node.attribute:
            bodies = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for body in bodies:
                label = f"{node.name or node.op_type}.{a.name}"
                yield from _nodes(body, g, label if path == "main" else f"{path}/{label}")


def check_model(model: onnx.ModelProto | str | Path) -> list[Issue]:
    """Every node (main graph and control-flow bodies) that TensorRT's ONNX
    parser will reject according to onnx-tensorrt's ``docs/operators.md``
    (TensorRT 10.15), and why; an empty list means nothing in the table
    rules the model out.

    Args:
        model: a ModelProto or the path of an ``.onnx`` file (its external
            data is not read; checks needing a weight's value skip it).

    Returns:
        The issues, in graph order; a model-level issue (opset out of range)
        comes first with ``node=None``.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    doc = table()
    issues: list[Issue] = []
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if opset is not None and not doc["opset_min"] <= opset <= doc["opset_max"]:
        issues.append(Issue(None, "", f"default-domain opset {opset} is outside the parser's range "
                                      f"{doc['opset_min']}..{doc['opset_max']} (TensorRT {doc['tensorrt_version']}); "
                                      "convert it (graphopt optimize --opset N, or onnx.version_converter)"))
    functions = {(f.domain, f.name) for f in model.functions}
    for node, index, g, path in _nodes(model.graph, None, "main"):
        if node.domain not in DEFAULT_DOMAINS:
            if (node.domain, node.op_type) in functions:
                continue  # a model-local function: the parser expands its body
            issues.append(Issue(node.name, f"{node.domain}::{node.op_type}",
                                f"operator of domain '{node.domain}': TensorRT's parser takes the default ONNX domain "
                                "only (other ops need a TensorRT plugin of that name); rebuild with --target tensorrt "
                                "so graphopt emits standard operators", index=index, graph=path))
            continue
        info = doc["operators"].get(node.op_type)
        if info is None:
            issues.append(Issue(node.name, node.op_type, f"{node.op_type} is not in TensorRT's operator table "
                                f"(TensorRT {doc['tensorrt_version']})", index=index, graph=path))
        elif not info["supported"]:
            hint = f"; {info['restrictions']}" if info.get("restrictions") else ""
            issues.append(Issue(node.name, node.op_type, f"{node.op_type} is unsupported by TensorRT's ONNX parser "
                                f"(TensorRT {doc['tensorrt_version']}){hint}", index=index, graph=path))
        else:
            for reason in _restrictions(node, g, opset or 0):
                issues.append(Issue(node.name, node.op_type, reason, index=index, graph=path))
    return issues

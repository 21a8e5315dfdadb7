"""Insert QuantizeLinear/DequantizeLinear pairs at planned sites.

Two modes share one code path:

* **final** (``switches=False``): each planned activation gets one
  ``QuantizeLinear -> DequantizeLinear`` pair (shared by every quantized
  reader), constant weights are stored quantized behind a ``DequantizeLinear``,
  Conv biases become int32 with scale ``s_x * s_w``, and com.microsoft
  ``Attention`` becomes ``QAttention`` (target ort). This is the QDQ form of
  the ONNX spec that onnxruntime and TensorRT fuse into integer kernels.
* **switched** (``switches=True``): the same pairs, but each site reads
  ``Where(flag, dequantized, float)`` with one boolean graph input per site, so
  one onnxruntime session evaluates any subset of quantized sites (the
  per-layer sensitivity analysis of mixed precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.errors import InputError
from graphopt.passes.quantization.params import QuantParams, params_from_range, quantize_bias, quantize_weight
from graphopt.passes.quantization.placement import Plan, Site

__all__ = ["QuantConfig", "InsertResult", "activation_names", "insert_qdq", "switch_name"]

_ATTENTION_ATTRS = ("num_heads", "unidirectional", "mask_filter_value", "scale")


@dataclass(frozen=True)
class QuantConfig:
    """How values are quantized.

    Attributes:
        activation_type: ``uint8`` or ``int8``.
        symmetric_activations: zero point at the middle (TensorRT requires it).
        weight_type: ``int8`` or ``uint8``.
        per_channel: weights per output channel (else per tensor).
        symmetric_weights: weight zero point 0 (int8).
        fold_bias: a MatMul whose only reader adds a constant bias becomes
            com.microsoft ``MatMulIntegerToFloat`` with the bias as its input
            (target ort: onnxruntime's QDQ fusion leaves that Add a separate
            node, and lets a following Gelu become the slower BiasGelu).
    """

    activation_type: str = "uint8"
    symmetric_activations: bool = False
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_weights: bool = True
    fold_bias: bool = False


@dataclass
class InsertResult:
    """What :func:`insert_qdq` added.

    Attributes:
        activations: tensor name -> its record (range, scale, zero point, method).
        weights: quantized weights; ``attention``: Attention nodes made QAttention.
        switches: site name -> boolean graph input name (switched mode).
    """

    activations: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: int = 0
    biases: int = 0
    folded_biases: int = 0
    attention: int = 0
    switches: dict[str, str] = field(default_factory=dict)


def switch_name(index: int) -> str:
    """The boolean graph input that turns site ``index`` on in switched mode."""
    return f"graphopt_quantize_site_{index}"


def activation_names(plan: Plan) -> list[str]:
    """Names of the activations whose ranges :func:`insert_qdq` needs (site
    inputs, quantized outputs, TensorRT residual inputs), without repeats."""
    names: dict[str, None] = {}
    for site in plan.sites:
        for idx in site.activations:
            names[site.node.inputs[idx].name] = None
        if site.output is not None:
            names[site.output.name] = None
    for add, idx in plan.residuals:
        names[add.inputs[idx].name] = None
    return list(names)


class _Builder:
    def __init__(self, model: ir.Model, config: QuantConfig) -> None:
        self.model = model
        self.graph = model.graph
        self.config = config
        self.taken = ir.value_names(self.graph)
        self.new_nodes: list[ir.Node] = []
        self.created: set[str] = set()

    def const(self, array: np.ndarray, name: str) -> ir.Value:
        value = ir.add_initializer(self.graph, np.asarray(array), name, self.taken)
        self.created.add(value.name)
        return value

    def node(self, op: str, inputs: list[ir.Value | None], name: str, domain: str = "", **attrs: Any) -> ir.Node:
        attributes = [ir.Attr(k, _attr_type(v), v) for k, v in attrs.items()]
        node = ir.Node(domain, op, inputs, attributes=attributes, num_outputs=1, name=self._unique(name))
        node.outputs[0].name = self._unique(name)
        self.new_nodes.append(node)
        return node

    def _unique(self, name: str) -> str:
        unique, i = name, 1
        while unique in self.taken:
            unique = f"{name}_{i}"
            i += 1
        self.taken.add(unique)
        return unique


def _attr_type(value: Any) -> ir.AttributeType:
    if isinstance(value, float):
        return ir.AttributeType.FLOAT
    if isinstance(value, str):
        return ir.AttributeType.STRING
    return ir.AttributeType.INT


def _record(params: QuantParams, rmin: float, rmax: float, method: str) -> dict[str, Any]:
    return {"method": method, "rmin": rmin, "rmax": rmax, "scale": float(params.scale),
            "zero_point": int(params.zero_point), "dtype": params.qtype}


def _range(ranges: Mapping[str, Any], name: str) -> tuple[float, float]:
    if name not in ranges:
        raise InputError(f"no calibrated range for tensor {name!r}; calibrate the model the sites were planned on")
    rng = ranges[name]
    return (float(rng[0]), float(rng[1])) if isinstance(rng, tuple) else (float(rng.rmin), float(rng.rmax))


def insert_qdq(model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig = QuantConfig(),
               switches: bool = False) -> InsertResult:
    """Quantize ``plan``'s sites of ``model`` in place.

    Args:
        model: the model the plan was made on (opset >= 13: per-channel
            ``DequantizeLinear`` needs ``axis``).
        plan: from :func:`~graphopt.passes.quantization.placement.plan_sites`.
        ranges: tensor name -> ``TensorRange`` (``rmin``/``rmax``/``method``)
            or ``(rmin, rmax)`` for every name of :func:`activation_names`.
        config: quantized types and granularity.
        switches: build the switched model (module doc) instead of the final one.

    Returns:
        An :class:`InsertResult`.

    Raises:
        InputError: the default-domain opset is below 13, or a range is missing.
    """
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < 13:
        raise InputError(f"quantization needs default-domain opset >= 13 (the model has {opset}); "
                         "upgrade it first (upgrade-opset with config opset.upgrade=13; graphopt quantize does)")
    b = _Builder(model, config)
    result = InsertResult()
    pairs: dict[str, tuple[ir.Node, ir.Node, QuantParams]] = {}
    origin: dict[int, ir.Value] = {}  # id of a value this function made -> the float value it stands for

    def pair(value: ir.Value) -> tuple[ir.Node, ir.Node, QuantParams]:
        value = origin.get(id(value), value)
        if value.name not in pairs:
            rmin, rmax = _range(ranges, value.name)
            params = params_from_range(rmin, rmax, config.activation_type, config.symmetric_activations)
            scale = b.const(params.scale, f"{value.name}_scale")
            zero = b.const(params.zero_point, f"{value.name}_zero_point")
            q = b.node("QuantizeLinear", [value, scale, zero], f"{value.name}_quantized")
            dq = b.node("DequantizeLinear", [q.outputs[0], scale, zero], f"{value.name}_dequantized")
            _typed(q.outputs[0], zero.dtype, value.shape)
            _typed(dq.outputs[0], value.dtype, value.shape)
            pairs[value.name] = (q, dq, params)
            origin[id(dq.outputs[0])] = value
            method = getattr(ranges[value.name], "method", "given")
            result.activations[value.name] = _record(params, rmin, rmax, method)
        return pairs[value.name]

    weights: dict[tuple[str, int | None], tuple[ir.Node, QuantParams, ir.Value]] = {}

    def weight(value: ir.Value, axis: int | None) -> tuple[ir.Node, QuantParams, ir.Value]:
        axis = axis if config.per_channel else None
        key = (value.name, axis)
        if key not in weights:
            q, params = quantize_weight(ir.const_tensor(value).numpy(), axis, config.weight_type, config.symmetric_weights)
            wq = b.const(q, f"{value.name}_quantized")
            ws = b.const(params.scale, f"{value.name}_scale")
            wz = b.const(params.zero_point, f"{value.name}_zero_point")
            attrs = {"axis": axis} if axis is not None else {}
            dq = b.node("DequantizeLinear", [wq, ws, wz], f"{value.name}_dequantized", **attrs)
            _typed(dq.outputs[0], value.dtype, value.shape)
            weights[key] = (dq, params, wq)
            result.weights += 1
        return weights[key]

    def feed(site_index: int, node: ir.Node, idx: int, quantized: ir.Value, original: ir.Value) -> None:
        if switches:
            flag = _switch(b, model, result, site_index)
            where = b.node("Where", [flag, quantized, original], f"{original.name}_switch{site_index}")
            origin[id(where.outputs[0])] = origin.get(id(original), original)
            node.replace_input_with(idx, where.outputs[0])
        elif original is not quantized:
            node.replace_input_with(idx, quantized)

    for i, site in enumerate(plan.sites):
        node = site.node
        if node.op_type == "Attention" and node.domain == "com.microsoft" and not switches:
            _to_qattention(b, model, site, pair, weight, result)
            continue
        x_params = None
        for idx in site.activations:
            value = node.inputs[idx]
            _, dq, x_params = pair(value)
            feed(i, node, idx, dq.outputs[0], value)
        if site.weight is not None:
            idx, axis = site.weight
            original = node.inputs[idx]
            dq, w_params, _ = weight(original, axis)
            feed(i, node, idx, dq.outputs[0], original)
            if site.bias is not None and x_params is not None and not switches:
                _quantize_conv_bias(b, node, site.bias, x_params, w_params, result)
            if config.fold_bias and not switches and node.op_type == "MatMul" and _bias_add(node) is not None:
                _matmul_integer_to_float(b, model, node, pair(node.inputs[0])[0],
                                         weight(original, axis)[0], result)
        if site.output is not None:
            out = site.output
            readers = [(u.node, u.idx) for u in out.uses()]
            _, dq, _ = pair(out)
            for reader, idx in readers:
                feed(i, reader, idx, dq.outputs[0], out)
    for add, idx in plan.residuals:
        value = add.inputs[idx]
        _, dq, _ = pair(value)
        add.replace_input_with(idx, dq.outputs[0])
    for node in _used(b.new_nodes):
        model.graph.append(node)
    _drop_unused_initializers(model.graph, b.created)
    for name, _ in weights:
        value = model.graph.initializers.get(name)
        if value is not None and not value.uses() and not value.is_graph_output():
            model.graph.initializers.pop(name)  # the float weight: only its quantized copy is read now
    model.graph.sort()
    return result


def _typed(value: ir.Value, dtype: ir.DataType | None, shape: ir.Shape | None) -> None:
    """Give a new Q/DQ output its dtype and shape (later passes read them before shapes are inferred again)."""
    if dtype is not None:
        value.type = ir.TensorType(dtype)
    if shape is not None:
        value.shape = ir.Shape(list(shape))


def _used(nodes: list[ir.Node]) -> list[ir.Node]:
    """``nodes`` without those whose outputs nothing reads (e.g. the DQ of an
    input that QAttention reads quantized), dropping readers before producers."""
    dropped: set[int] = set()
    for node in reversed(nodes):
        live = any(out.is_graph_output() or any(id(u.node) not in dropped for u in out.uses()) for out in node.outputs)
        if not live:
            dropped.add(id(node))
            for i in range(len(node.inputs)):
                node.replace_input_with(i, None)
    return [n for n in nodes if id(n) not in dropped]


def _drop_unused_initializers(graph: ir.Graph, names: set[str]) -> None:
    for name in names:
        value = graph.initializers.get(name)
        if value is not None and not value.uses() and not value.is_graph_output():
            graph.initializers.pop(name)


def _bias_add(matmul: ir.Node) -> tuple[ir.Node, ir.Value] | None:
    """``(Add, bias)`` when the MatMul's only reader adds a constant ``[N]`` bias."""
    out = matmul.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    bias = add.inputs[1 - uses[0].idx]
    tensor = ir.const_tensor(bias)
    n = matmul.inputs[1].shape[-1] if matmul.inputs[1].shape is not None else None
    if tensor is None or tensor.dtype != ir.DataType.FLOAT:
        return None
    if int(np.prod(tensor.shape)) != n or any(int(d) != 1 for d in list(tensor.shape)[:-1]):
        return None
    return add, bias


def _matmul_integer_to_float(b: _Builder, model: ir.Model, matmul: ir.Node, q: ir.Node, w_dq: ir.Node,
                             result: InsertResult) -> None:
    """``Add(MatMul(DQ(Q(x)), DQ(W)), bias)`` -> ``MatMulIntegerToFloat(Q(x), W, s_x, s_w, zp_x, zp_w, bias)``
    (onnxruntime ContribOperators.md: MatMulIntegerToFloat; per-column ``b_scale``)."""
    add, bias = _bias_add(matmul)
    flat = np.asarray(ir.const_tensor(bias).numpy(), np.float32).reshape(-1)
    bias_value = b.const(flat, f"{bias.name}_flat") if len(bias.shape) != 1 else bias
    wq, ws, wz = w_dq.inputs
    node = b.node("MatMulIntegerToFloat", [q.outputs[0], wq, q.inputs[1], ws, q.inputs[2], wz, bias_value],
                  (matmul.name or "matmul") + "_integer", domain="com.microsoft")
    # A model without any com.microsoft node yet (a plain float classifier) lacks the import: without it
    # onnx.checker and onnxruntime refuse the node ("No opset import for domain 'com.microsoft'").
    model.opset_imports.setdefault("com.microsoft", 1)
    _take_over(b, model, add.outputs[0], node, [add, matmul])
    result.folded_biases += 1
    if bias_value is not bias and bias.name in model.graph.initializers and not bias.uses():
        model.graph.initializers.pop(bias.name)


def _take_over(b: _Builder, model: ir.Model, out: ir.Value, node: ir.Node, remove: list[ir.Node]) -> None:
    """``node``'s output replaces ``out`` everywhere (graph outputs too), with its
    name, shape and type; the ``remove`` nodes go."""
    new = node.outputs[0]
    new.shape, new.type = out.shape, out.type
    name = out.name
    if out.is_graph_output():
        model.graph.outputs[[o is out for o in model.graph.outputs].index(True)] = new
    ir.convenience.replace_all_uses_with(out, new)
    model.graph.remove(remove, safe=True)
    b.taken.discard(new.name)
    new.name = name


def _switch(b: _Builder, model: ir.Model, result: InsertResult, index: int) -> ir.Value:
    name = switch_name(index)
    if name not in result.switches.values():
        value = ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.BOOL))
        model.graph.inputs.append(value)
        result.switches[f"site{index}"] = name
        b.taken.add(name)
    return next(v for v in model.graph.inputs if v.name == name)


def _quantize_conv_bias(b: _Builder, node: ir.Node, idx: int, x: QuantParams, w: QuantParams,
                        result: InsertResult) -> None:
    original = node.inputs[idx]
    bias = ir.const_tensor(original).numpy()
    q, scale = quantize_bias(bias, x.scale, w.scale)
    bq = b.const(q, f"{original.name}_quantized")
    bs = b.const(scale, f"{original.name}_scale")
    dq = b.node("DequantizeLinear", [bq, bs], f"{original.name}_dequantized", axis=0)
    node.replace_input_with(idx, dq.outputs[0])
    if original.name in b.graph.initializers and not original.uses() and not original.is_graph_output():
        b.graph.initializers.pop(original.name)  # the float bias: only its int32 copy is read now
    result.biases += 1


def _to_qattention(b: _Builder, model: ir.Model, site: Site, pair, weight, result: InsertResult) -> None:  # noqa: ANN001
    """com.microsoft ``Attention(x, W, bias, mask)`` -> ``QAttention(Q(x), W_q,
    bias, s_x, s_w, mask, zp_x, zp_w)`` (onnxruntime ContribOperators.md:
    QAttention; its CPU kernel takes uint8 input, int8 weight, per-column
    weight scales of size 3 * hidden)."""
    node = site.node
    q, _, x_params = pair(node.inputs[0])
    _, w_params, wq = weight(node.inputs[1], 1)
    scale_x, zero_x = q.inputs[1], q.inputs[2]
    w_scale = b.const(w_params.scale, f"{node.inputs[1].name}_qattention_scale")
    w_zero = b.const(np.zeros((), np.int8) if w_params.scale.ndim == 0 else np.zeros(w_params.scale.shape, np.int8),
                     f"{node.inputs[1].name}_qattention_zero_point")
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    inputs = [q.outputs[0], wq, node.inputs[2], scale_x, w_scale, mask, zero_x, w_zero]
    attrs = {k: node.attributes[k].value for k in _ATTENTION_ATTRS if k in node.attributes}
    qa = b.node("QAttention", inputs, (node.name or "attention") + "_quantized", domain="com.microsoft", **attrs)
    model.opset_imports.setdefault("com.microsoft", 1)
    _take_over(b, model, node.outputs[0], qa, [node])
    result.attention += 1

"""convert-float16: convert float32 weights and compute to float16 or bfloat16,
keeping blocked ops in float32 with Casts only at the boundaries."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from graphopt import ir
from graphopt.errors import InputError
from graphopt.passes.quantization.float16_ops import (
    CPU_KERNELS, DEFAULT_BLOCK_OPS, ELEMENTWISE_OPS, FOLLOW_OPS, FREE_INPUTS, NEVER_CONVERT, Group, type_groups,
)
from graphopt.passmanager import Pass, PassResult, for_provider, register_pass

__all__ = ["ConvertFloat16", "ConvertFloat16Options", "to_low_precision", "CAST_WEIGHT_MIN_ELEMENTS"]

log = logging.getLogger(__name__)

DT = ir.DataType
LOW, HIGH, ANY, NEUTRAL = "low", "high", "any", None
CAST_WEIGHT_MIN_ELEMENTS = 1024
"""Weights below this size read only in float32 stay float32 under ``cast-weights``
(epsilons and small vectors: exact, and no weight in bytes)."""
SENTINEL = 1e30
"""Constants at least this large in magnitude are "minus infinity" stand-ins (attention masks filled with
``finfo(float32).min``): clipped to the dtype's max under every ``overflow`` setting."""
_SUFFIX = {DT.FLOAT16: "fp16", DT.BFLOAT16: "bf16", DT.FLOAT: "fp32"}


@dataclass(frozen=True)
class ConvertFloat16Options:
    """Options of ``convert-float16``."""

    dtype: str = field(default="float16", metadata={"doc": "float16 or bfloat16"})
    block_ops: tuple[str, ...] = field(default=DEFAULT_BLOCK_OPS, metadata={"doc": (
        "op types kept in float32 (default: numerically sensitive ops and onnxconverter-common's block list)")})
    block_nodes: tuple[str, ...] = field(default=(), metadata={"doc": "node-name glob patterns kept in float32"})
    keep_io_types: bool = field(default=True, metadata={"doc": (
        "graph inputs and outputs stay float32, with one Cast at each boundary value")})
    for_provider: str = field(default="auto", metadata={"doc": (
        "cpu: convert only ops with an onnxruntime CPU kernel in the dtype (in practice: weights are stored "
        "in the dtype and compute stays float32); cuda: convert every op not blocked; auto: cuda for "
        "target tensorrt, else the ort.provider config (graphopt --provider; default cpu)")})
    cast_weights: bool = field(default=True, metadata={"doc": (
        f"store float32 weights (>= {CAST_WEIGHT_MIN_ELEMENTS} elements) read by float32 nodes in the dtype too, "
        "with one Cast to float32 (halves the file; onnxruntime folds the Cast when loading)")})
    overflow: str = field(default="keep", metadata={"doc": (
        "keep: a node reading a constant beyond +-max-finite stays float32 (counted as overflow_kept; e.g. "
        "BatchNormalization variances); clip: the constant is clipped to +-max-finite (counted as clipped). "
        "Either way, magnitudes >= 1e30 (-inf stand-ins of attention masks) are clipped")})
    min_positive: float = field(default=5.96e-08, metadata={"doc": (
        "float16 only: nonzero weights smaller in magnitude become +-min-positive (counted as tiny)")})
    max_finite: float = field(default=65504.0, metadata={"doc": (
        "float16: weights beyond +-max-finite are clipped to it (counted as clipped); bfloat16 clips at its own max")})


def to_low_precision(array: np.ndarray, dtype: ir.DataType, min_positive: float, max_finite: float,
                     ) -> tuple[np.ndarray, int, int]:
    """``array`` (float32) as float16 or bfloat16 without overflow to infinity.

    float16: finite values beyond ``+-max_finite`` become ``+-max_finite``,
    nonzero values below ``min_positive`` in magnitude become
    ``+-min_positive`` (onnxconverter-common's ``convert_np_to_float16``);
    NaN, infinities and zeros are kept. bfloat16 has float32's exponent
    range: only values beyond its largest finite value are clipped.

    Returns:
        ``(converted, clipped, tiny)``: the array and the two counts.
    """
    a = np.asarray(array, dtype=np.float32)
    if dtype == DT.BFLOAT16:
        target, max_finite, min_positive = ml_dtypes.bfloat16, float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 0.0
    else:
        target = np.float16
    magnitude = np.abs(a)
    big = np.isfinite(a) & (magnitude > max_finite)
    tiny = (magnitude > 0) & (magnitude < min_positive)
    out = np.where(big, np.copysign(np.float32(max_finite), a), a)
    out = np.where(tiny, np.copysign(np.float32(min_positive), a), out)
    return out.astype(target), int(big.sum()), int(tiny.sum())


class _Converter:
    """Converts the main graph of one model (subgraph bodies stay float32)."""

    def __init__(self, model: ir.Model, options: ConvertFloat16Options, provider: str, stats: dict) -> None:
        self.model, self.graph, self.o, self.stats = model, model.graph, options, stats
        self.low = DT.FLOAT16 if options.dtype == "float16" else DT.BFLOAT16
        self.cpu = provider == "cpu"
        self.kernels = CPU_KERNELS[options.dtype]
        self.limit = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max) if self.low == DT.BFLOAT16 else options.max_finite
        self.overflow_cache: dict[ir.Value, bool] = {}
        self.nodes = list(self.graph)
        self.decision: dict[ir.Node, str | None] = {}
        self.groups: dict[ir.Node, list[Group]] = {}
        values = [*self.graph.inputs, *self.graph.initializers.values(), *(v for n in self.nodes for v in n.outputs)]
        self.floats: set[ir.Value] = {v for v in values if v.dtype == DT.FLOAT}
        self.sources: set[ir.Node] = set()
        self.unknown: set[ir.Node] = set()
        self.owner: dict[ir.Graph, ir.Node] = {}
        for node in self.nodes:
            for attr in node.attributes.values():
                if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                    for body in attr.value if attr.type == ir.AttributeType.GRAPHS else [attr.value]:
                        for sub in (body, *ir.subgraphs(body)):
                            self.owner[sub] = node
        self.names = set().union(*(ir.value_names(g) for g in ir.all_graphs(model)))
        self.casts: dict[tuple[int, ir.DataType], ir.Value] = {}

    # ---- decisions -------------------------------------------------------
    def float_groups(self, node: ir.Node) -> list[Group]:
        """The node's groups holding a float32 value (its inputs' dtypes, or
        an output typed float32), marking their outputs as float values."""
        if node not in self.groups:
            version = self.model.opset_imports.get(node.domain or "", 1)
            groups = type_groups(node.domain, node.op_type, version, len(node.inputs), len(node.outputs))
            if groups is None:
                self.unknown.add(node)
                groups = []
            found = []
            for g in groups:
                values = [v for v in [node.inputs[i] for i in g.inputs] + [node.outputs[i] for i in g.outputs] if v]
                if any(v in self.floats for v in values):
                    found.append(g)
                    self.floats.update(values)
            self.groups[node] = found
        return self.groups[node]

    def convertible(self, node: ir.Node) -> list[Group]:
        """Float groups a converted node retypes: they type an input and allow the dtype."""
        return [g for g in self.float_groups(node) if g.inputs and self.o.dtype in g.allowed]

    def source(self, node: ir.Node) -> bool:
        """Constant / ConstantOfShape with a float32 value, Cast to float32."""
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Constant", "ConstantOfShape", "Cast"):
            return False
        if node.op_type == "Cast":
            return "to" in node.attributes and node.attributes["to"].as_int() == DT.FLOAT
        attr = node.attributes.get("value")
        if node.op_type == "ConstantOfShape" and attr is None:
            return True  # value defaults to float32 zero
        return attr is not None and attr.type == ir.AttributeType.TENSOR and attr.as_tensor().dtype == DT.FLOAT

    def blocked(self, node: ir.Node) -> str | None:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        if node.op_type in NEVER_CONVERT:
            return "op holds a subgraph or sets its dtype by attribute"
        if node.op_type in self.o.block_ops or key in self.o.block_ops:
            return "block-ops"
        if node.name and any(fnmatch.fnmatchcase(node.name, p) for p in self.o.block_nodes):
            return "block-nodes"
        if self.cpu and key not in self.kernels:
            return f"no onnxruntime CPU {self.o.dtype} kernel"
        return None

    def overflows(self, value: ir.Value | None) -> bool:
        """A float32 constant beyond the dtype's range (not a :data:`SENTINEL`), under ``overflow=keep``."""
        if self.o.overflow != "keep" or value is None or value not in self.floats:
            return False
        if value not in self.overflow_cache:
            tensor = ir.const_tensor(value)
            a = np.asarray(tensor.numpy(), dtype=np.float32) if tensor is not None else np.zeros(0, np.float32)
            magnitude = np.abs(a)
            self.overflow_cache[value] = bool(((magnitude > self.limit) & (magnitude < SENTINEL)).any())
        return self.overflow_cache[value]

    def home(self, value: ir.Value) -> str | None:
        """Where a float value lives now: LOW, HIGH, or NEUTRAL (a constant)."""
        if value.is_graph_input():
            return HIGH if self.o.keep_io_types else LOW
        if value.is_initializer() or value.const_value is not None:
            return NEUTRAL
        producer = value.producer()
        if producer is None or producer.graph is not self.graph:
            return HIGH
        state = self.decision.get(producer, HIGH)
        if state != LOW or producer in self.sources:
            return state
        index = producer.outputs.index(value)
        return LOW if any(index in g.outputs for g in self.convertible(producer)) else HIGH

    def need(self, node: ir.Node, index: int) -> str:
        """What the reader's input ``index`` requires: LOW, HIGH or ANY."""
        if node.graph is not self.graph:
            return HIGH
        if (node.op_type, index) in FREE_INPUTS:
            return ANY
        if self.decision.get(node) == LOW and node not in self.sources:
            return LOW if any(index in g.inputs for g in self.convertible(node)) else HIGH
        return HIGH

    def needs(self, value: ir.Value) -> set[str]:
        out = {self.need(u.node, u.idx) for u in value.uses()}
        if value.is_graph_output():
            out.add(HIGH if self.o.keep_io_types else LOW)
        return out - {ANY}

    def inputs_homes(self, node: ir.Node) -> set[str | None]:
        return {self.home(node.inputs[i]) for g in self.convertible(node) for i in g.inputs
                if node.inputs[i] is not None}

    def decide(self) -> None:
        for node in self.nodes:
            if self.source(node):
                self.sources.add(node)
                self.decision[node] = NEUTRAL
                continue
            groups = self.convertible(node)
            self.decision[node] = HIGH
            if not groups:
                if any(g.inputs for g in self.float_groups(node)) or (node in self.unknown and any(
                        v in self.floats for v in (*node.inputs, *node.outputs) if v is not None)):
                    self.stats["blocked"] += 1  # no schema, or none allowing the dtype
                continue
            if all((node.op_type, i) in FREE_INPUTS for g in groups for i in g.inputs):
                continue  # Cast, Shape, ...: read any float dtype as it is
            reason = self.blocked(node)
            if reason is None and any(self.overflows(node.inputs[i]) for g in groups for i in g.inputs):
                reason = f"a constant input exceeds the {self.o.dtype} range"
                self.stats["overflow_kept"] += 1
            if reason is not None:
                log.debug("convert-float16: %s kept in float32: %s", node.name or node.op_type, reason)
                self.stats["blocked"] += 1
            elif self.cpu or node.op_type in FOLLOW_OPS:
                homes = self.inputs_homes(node) - {NEUTRAL}
                self.decision[node] = LOW if LOW in homes else (HIGH if homes else NEUTRAL)
            else:
                self.decision[node] = LOW
        self.flip_sandwiched()
        for node in reversed(self.nodes):
            if self.decision[node] is NEUTRAL:
                outs = [v for v in node.outputs if v in self.floats or v.dtype == DT.FLOAT]
                needs = set().union(*(self.needs(v) for v in outs)) if outs else {HIGH}
                self.decision[node] = LOW if needs == {LOW} else HIGH

    def flip_sandwiched(self) -> None:
        """Cheap elementwise nodes between float32 producers and float32 readers go back to float32."""
        changed = True
        while changed:
            changed = False
            for node in self.nodes:
                if self.decision[node] != LOW or node.op_type not in ELEMENTWISE_OPS:
                    continue
                homes = self.inputs_homes(node) - {NEUTRAL}
                outs = [node.outputs[i] for g in self.convertible(node) for i in g.outputs]
                if homes == {HIGH} and all(self.needs(v) <= {HIGH} and all(
                        self.decision.get(u.node, HIGH) is not NEUTRAL for u in v.uses()) for v in outs):
                    self.decision[node] = HIGH
                    changed = True

    # ---- rewriting -------------------------------------------------------
    def name(self, base: str) -> str:
        unique, i = base, 1
        while unique in self.names:
            unique, i = f"{base}_{i}", i + 1
        self.names.add(unique)
        return unique

    def convert_tensor(self, tensor: ir.TensorProtocol, name: str | None) -> ir.Tensor:
        array, clipped, tiny = to_low_precision(tensor.numpy(), self.low, self.o.min_positive, self.o.max_finite)
        self.stats["clipped"] += clipped
        self.stats["tiny"] += tiny
        return ir.Tensor(array, name=name)

    def cast(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        """The value cast to ``dtype``: one Cast per value and direction; the
        float16 input of a Cast to float32 when asked for float16 back."""
        key = (id(value), dtype)
        if key in self.casts:
            return self.casts[key]
        producer = value.producer()
        if (producer is not None and producer.op_type == "Cast" and producer.graph is self.graph
                and producer.inputs[0] is not None and producer.inputs[0].dtype == dtype and dtype == self.low):
            return producer.inputs[0]  # low -> float32 -> low is exact
        local = producer is not None and producer.graph is self.graph
        anchor = producer if local else self.first_reader(value)  # before the Cast below reads value
        out = ir.Value(name=self.name(f"{value.name or 'v'}_{_SUFFIX[dtype]}"), shape=value.shape,
                       type=ir.TensorType(dtype))
        node = ir.Node("", "Cast", [value], [ir.Attr("to", ir.AttributeType.INT, int(dtype))],
                       outputs=[out], name=out.name)
        if local:
            self.graph.insert_after(anchor, node)
        else:
            self.graph.insert_before(anchor, node)  # the earliest reader: before every use
        self.stats["casts_inserted"] += 1
        self.casts[key] = out
        return out

    def first_reader(self, value: ir.Value) -> ir.Node:
        readers = {u.node if u.node.graph is self.graph else self.owner[u.node.graph] for u in value.uses()}
        return next(n for n in self.graph if n in readers)

    def storable(self, value: ir.Value) -> bool:
        """``cast-weights`` applies: a large constant read by some node, not a graph output."""
        tensor = value.const_value if value.const_value is not None else ir.const_tensor(value)
        return (self.o.cast_weights and tensor is not None and not value.is_graph_output() and bool(value.uses())
                and not self.overflows(value)
                and int(np.prod(tuple(tensor.shape))) >= CAST_WEIGHT_MIN_ELEMENTS)

    def weights(self) -> None:
        """Convert, duplicate or keep each float32 initializer by its readers."""
        for value in list(self.graph.initializers.values()):
            if value.dtype != DT.FLOAT or value.const_value is None or value.is_graph_input():
                continue
            needs = self.needs(value)
            if needs == {LOW} or (needs and self.storable(value)):
                value.const_value = self.convert_tensor(value.const_value, value.name)
                value.type = ir.TensorType(self.low)
                self.stats["weights_converted"] += 1
            elif LOW in needs:
                copy = ir.add_initializer(self.graph, self.convert_tensor(value.const_value, None),
                                          f"{value.name}_{_SUFFIX[self.low]}", self.names)
                for use in list(value.uses()):
                    if self.need(use.node, use.idx) == LOW:
                        use.node.replace_input_with(use.idx, copy)
                self.stats["weights_duplicated"] += 1

    def retype(self) -> None:
        for node in self.nodes:
            if self.decision[node] != LOW:
                if node in self.sources and node.op_type == "Constant" and self.storable(node.outputs[0]):
                    node.attributes["value"] = ir.Attr("value", ir.AttributeType.TENSOR,
                                                       self.convert_tensor(node.attributes["value"].as_tensor(), None))
                    node.outputs[0].type = ir.TensorType(self.low)
                    self.stats["weights_converted"] += 1
                continue
            self.stats["converted"] += 1
            if node.op_type == "Cast":
                node.attributes["to"] = ir.Attr("to", ir.AttributeType.INT, int(self.low))
            elif node in self.sources:
                attr = node.attributes.get("value")
                tensor = attr.as_tensor() if attr is not None else ir.Tensor(np.zeros(1, np.float32))
                node.attributes["value"] = ir.Attr("value", ir.AttributeType.TENSOR, self.convert_tensor(tensor, None))
            if node in self.sources:
                node.outputs[0].type = ir.TensorType(self.low)
                continue
            for g in self.convertible(node):
                for i in g.outputs:
                    node.outputs[i].type = ir.TensorType(self.low)
        if not self.o.keep_io_types:
            for value in self.graph.inputs:
                if value.dtype == DT.FLOAT:
                    value.type = ir.TensorType(self.low)

    def outputs(self) -> None:
        """Graph outputs keep float32 (keep-io-types) or become the dtype, through one Cast."""
        want = DT.FLOAT if self.o.keep_io_types else self.low
        for k, value in enumerate(list(self.graph.outputs)):
            if value not in self.floats or value.dtype == want or value.is_graph_input() \
                    or value.producer() is None:
                continue
            name = value.name
            value.name = self.name(f"{name}_{_SUFFIX[value.dtype]}")
            self.names.discard(name)
            out = self.cast(value, want)
            out.name = name
            self.graph.outputs[k] = out

    def boundaries(self) -> None:
        values = [v for v in self.graph.inputs] + list(self.graph.initializers.values())
        values += [v for n in list(self.graph) for v in n.outputs]
        for value in values:
            if value not in self.floats:
                continue
            for use in list(value.uses()):
                need = self.need(use.node, use.idx)
                if need == ANY:
                    continue
                dtype = self.low if need == LOW else DT.FLOAT
                if dtype != value.dtype:
                    use.node.replace_input_with(use.idx, self.cast(value, dtype))

    def drop_identity_casts(self) -> None:
        for node in list(self.graph):
            if node.op_type != "Cast" or node.inputs[0] is None or node.outputs[0].is_graph_output():
                continue
            if node.inputs[0].dtype == node.attributes["to"].as_int():
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                self.graph.remove(node, safe=True)
                self.stats["casts_removed"] += 1

    def run(self) -> None:
        self.decide()
        self.weights()
        self.retype()
        self.outputs()
        self.boundaries()
        self.drop_identity_casts()


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for g in ir.all_graphs(model) for v in g.initializers.values()
               if v.const_value is not None)


@register_pass("convert-float16")
class ConvertFloat16(Pass):
    """Convert float32 weights and compute to float16 or bfloat16, with an op block list and Casts at the boundaries.

    Per node of the main graph (float32 values only; shapes are kept):

    - blocked (kept float32): ``block-ops`` (default: exponentials, powers,
      reductions, Softmax and the non-LayerNorm normalizations, plus
      onnxconverter-common's ``DEFAULT_OP_BLOCK_LIST``), ``block-nodes``
      globs, ops with no schema allowing the dtype (e.g. ONNX ``Range``),
      ops holding subgraphs (If/Loop/Scan: their bodies stay float32 and the
      outer values they read are cast back), and, under ``for-provider=cpu``,
      ops without an onnxruntime CPU kernel in the dtype (``float16_ops``:
      on CPU only data movement, Max/Min/Clip and the LayerNorm kernels have
      one, so compute stays float32 and the weights are stored in the dtype);
    - converted: every other compute op; data-movement ops (``FOLLOW_OPS``)
      follow their non-constant inputs; Constant, ConstantOfShape (its
      ``value``) and Cast-to-float32 (its ``to``) are converted when all their
      readers are; a cheap elementwise op between float32 producers and
      float32 readers stays float32.

    A converted node retypes each of its schema's type groups (``onnx.defs``,
    onnxruntime's registry for contrib ops) that types an input and allows
    the dtype, so fixed-type inputs stay float32 (Resize ``scales``,
    LayerNormalization's ``Mean``/``InvStdDev``, contrib masks). Weights read
    only by converted nodes are converted; a weight read by both is stored
    in the dtype with one Cast to float32 (``cast-weights``) or duplicated.
    Casts are inserted only where a value's dtype differs from what a reader
    needs, one per value and direction; Casts that become identities are
    removed. A node reading a constant beyond the dtype's range
    (``max-finite``, 65504 for float16) stays float32 (``overflow=keep``:
    clipping a BatchNormalization variance of 1e7 to 65504 changes the
    result, not its rounding); with ``overflow=clip`` such constants are
    clipped. Constants of magnitude >= 1e30 (``finfo(float32).min`` mask
    fills) are clipped either way, as onnxconverter-common does. Tiny
    nonzero float16 weights are raised to ``+-min-positive`` (all counted).
    ``keep-io-types``: float32 graph inputs/outputs with one Cast each; off:
    they become the dtype. Value shapes are kept; float32 value types become
    the dtype, so ``onnx.checker`` (full check) passes.

    Stats: ``converted``, ``blocked`` (``overflow_kept`` of them) nodes;
    ``casts_inserted``, ``casts_removed``; ``weights_converted``, ``weights_duplicated``;
    ``clipped``, ``tiny`` values; ``bytes_before``, ``bytes_after``
    (initializers); ``provider`` (cpu or cuda).

    Raises:
        InputError: ``dtype`` is not float16/bfloat16, ``for-provider`` not
            auto/cpu/cuda or ``overflow`` not keep/clip; bfloat16 for a model
            below default-domain opset 13.

    Technique: onnxconverter-common's ``float16.convert_float_to_float16``
    and onnxruntime's ``transformers/float16.py`` (block lists, keep-io
    Casts, value clipping), NVIDIA's mixed-precision training guide (which
    ops keep float32).
    """

    Options = ConvertFloat16Options
    lossy = True
    requires = frozenset({"topo-sorted", "shapes-inferred"})
    preserves = frozenset({"topo-sorted"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        o = self.options
        if o.dtype not in ("float16", "bfloat16"):
            raise InputError(f"convert-float16: dtype must be float16 or bfloat16, got '{o.dtype}'")
        if o.overflow not in ("keep", "clip"):
            raise InputError(f"convert-float16: overflow must be keep or clip, got '{o.overflow}'")
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if o.dtype == "bfloat16" and opset < 13:
            raise InputError(f"convert-float16: bfloat16 needs default-domain opset >= 13 (Cast and Constant take "
                             f"bfloat16 from 13), the model has {opset}; run upgrade-opset first")
        provider = for_provider(ctx, o.for_provider, "convert-float16")
        stats: dict = {k: 0 for k in ("converted", "blocked", "overflow_kept", "casts_inserted", "casts_removed",
                                      "weights_converted", "weights_duplicated", "clipped", "tiny")}
        stats["bytes_before"] = _weight_bytes(model)
        converter = _Converter(model, o, provider, stats)
        converter.run()
        stats["bytes_after"] = _weight_bytes(model)
        stats["provider"] = provider
        modified = any(stats[k] for k in ("converted", "casts_inserted", "casts_removed", "weights_converted",
                                          "weights_duplicated"))
        modified = modified or (not o.keep_io_types and any(v.dtype == converter.low for v in model.graph.inputs))
        return PassResult(modified=modified, stats=stats)

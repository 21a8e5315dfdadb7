"""quantize-weights-int4: weight-only 4-bit quantization of MatMul / Gemm weights
(and of Gather embedding tables), block-wise along the reduction axis.

Output forms, by target:

- ``ort``: ``com.microsoft.MatMulNBits(A, B, scales[, zero_points][, "", bias])``
  and ``com.microsoft.GatherBlockQuantized``. MatMulNBits layout (verified
  numerically in onnxruntime 1.32 against numpy's dequantize + matmul, see
  ``tests/passes/quantization/test_int4.py``; schema in onnxruntime's
  ``docs/ContribOperators.md``):

  - ``B``: uint8 ``[N, n_blocks, block_size / 2]``, ``n_blocks = ceil(K / block_size)``;
    for column ``n``, byte ``j`` of block ``b`` holds the codes of rows
    ``b*bs + 2j`` (low nibble) and ``b*bs + 2j + 1`` (high nibble); rows past
    K are padding (code of 0.0).
  - ``scales``: ``[N, n_blocks]``, A's dtype.
  - ``zero_points`` (asymmetric only): uint8 ``[N, ceil(n_blocks / 2)]``,
    block ``b`` in byte ``b // 2``, low nibble first; absent means 8.
  - ``bias`` (input 5): ``[N]``, added to the product.
  - attributes ``K``, ``N``, ``bits=4``, ``block_size``, ``accuracy_level``.

  GatherBlockQuantized: ``data`` int4 (symmetric) or uint4 ``[V, H]`` in
  ONNX's packing (two per byte, low nibble first, row-major), ``scales`` /
  ``zero_points`` ``[V, ceil(H / block_size)]``, ``gather_axis=0``,
  ``quantize_axis=1``.

- ``onnx`` / ``tensorrt``: ``DequantizeLinear`` (opset 21, ONNX spec
  "DequantizeLinear-21": blocked quantization with ``axis`` and
  ``block_size``, ``x_scale`` of ``x``'s shape with ``ceil(dim / block_size)``
  on ``axis``) of an int4 (symmetric) or uint4 (with a uint4 zero point)
  weight, feeding the MatMul / Gemm / Gather. The model must have opset >= 21:
  the pass upgrades it (``upgrade-opset`` machinery) when the config key
  ``opset.upgrade`` allows 21 or more (``graphopt optimize --opset 21``),
  and otherwise quantizes nothing, counts the sites in ``skipped-opset`` and
  logs a warning saying how to allow the upgrade (an upgrade the converter
  cannot do raises ``upgrade-opset``'s ``PassError``). ``tensorrt`` gets
  positive symmetric scales (``max|x| / 7``) and no Gather quantization. A
  DequantizeLinear before a Gather dequantizes the whole table at run time:
  a smaller file, not less memory.

Defaults, measured on ``llama_gqa_600m_ts`` (2.41 GB fp32, random
"trained-like" weights; onnxruntime 1.32 CPU, 2 threads, ORT_ENABLE_ALL,
batch 1 x 128 tokens, AVX512-VNNI; median of 10 interleaved runs): block 32,
asymmetric, accuracy-level 4: 0.161x the size, 0.80 s vs 1.03 s for fp32,
logits cosine 0.852; accuracy-level 0 / 1: 1.07 / 1.04 s (level 4's int8
compute is the fast path, at no measurable cosine cost); block 128: 0.134x,
0.56 s, cosine 0.799. The embedding table is 8% of that model: left in
float (``gather=false``) the file is 0.23x (cosine 0.881, the same as
onnxruntime's own quantizer with the same settings). RTN takes 9.5 s and
0.76 GB peak RSS there. ``method=gptq`` with 64 x 128 random calibration
tokens: cosine 0.873 (19 min on 2 shared cores, 7.7 GB peak RSS, most of it
the Hessians); with only 4 x 128 tokens (fewer than K) GPTQ overfits and
scores 0.794, below RTN: give it several times K tokens.

Peer: onnxruntime's ``MatMulNBitsQuantizer``
(``onnxruntime.quantization.matmul_nbits_quantizer``), whose RTN parameters
are reproduced (see :mod:`graphopt.passes.quantization.gptq`).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.errors import InputError
from graphopt.passes.folding.batchnorm import rank_of, sole_reader, std_op
from graphopt.passes.folding.bias import channel_bias
from graphopt.passes.quantization.gptq import (
    Blockwise, HessianAccumulator, dq_tensors, gptq_quantize, pack_matmulnbits, rtn_quantize,
)
from graphopt.passmanager import Pass, PassResult, register_pass
from graphopt.pattern import default_opset

__all__ = ["QuantizeInt4", "QuantizeInt4Options", "pack_matmulnbits", "dq_tensors"]

log = logging.getLogger(__name__)

ORT_DOMAIN = "com.microsoft"
FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16})
BLOCK_SIZES = (16, 32, 64, 128, 256)
STAT_KEYS = ("quantized-matmul", "quantized-gemm", "quantized-gather", "bias-folded", "skipped-excluded",
             "skipped-small", "skipped-dtype", "skipped-shape", "skipped-gemm", "skipped-opset",
             "skipped-gather-tensorrt", "gptq-rtn-fallback", "bytes-before", "bytes-after")


@dataclass(frozen=True)
class QuantizeInt4Options:
    """Options of ``quantize-weights-int4``."""

    block_size: int = field(default=32, metadata={"doc": (
        "weights per scale along the reduction axis K: 16, 32, 64, 128 or 256 (smaller: more accurate, "
        "larger model)")})
    symmetric: bool = field(default=False, metadata={"doc": (
        "symmetric int4 (zero point 8 / 0); false stores a uint4 zero point per block (more accurate)")})
    method: str = field(default="rtn", metadata={"doc": (
        "rtn (round to nearest) or gptq (GPTQ error compensation; needs the context's calibration data)")})
    accuracy_level: int = field(default=4, metadata={"doc": (
        "MatMulNBits accuracy_level (target ort): 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute "
        "(A quantized to int8 per block: fastest on x86 with VNNI)")})
    min_size: int = field(default=1024, metadata={"doc": (
        "leave weights with fewer elements than this (and any with K or N below 16) in float")})
    exclude: tuple[str, ...] = field(default=(), metadata={"doc": (
        "fnmatch patterns (a|b) of node names, weight names or exporter namespaces to leave in float, "
        "e.g. *lm_head*")})
    gather: bool = field(default=True, metadata={"doc": (
        "also quantize constant 2-D Gather tables (embeddings) along the hidden axis "
        "(ort: GatherBlockQuantized; onnx: DequantizeLinear -> Gather)")})
    bias: bool = field(default=True, metadata={"doc": (
        "target ort: fold the Add of a constant [N] vector after a MatMul into MatMulNBits' bias input")})
    damp: float = field(default=0.01, metadata={"doc": "GPTQ dampening, a fraction of the mean Hessian diagonal"})


@dataclass
class _Site:
    """One node whose constant weight is to be quantized."""

    graph: ir.Graph
    node: ir.Node
    kind: str  # matmul | gemm | gather
    weight: ir.Value
    transposed: bool = False  # the weight is stored [N, K] (Gemm transB=1, Gather tables)
    alpha: float = 1.0
    bias: np.ndarray | None = None  # ort: added by MatMulNBits
    add: ir.Node | None = None  # the bias Add to remove


def _dims(tensor: ir.Tensor, transposed: bool) -> tuple[int, int]:
    """``(K, N)`` of a 2-D weight stored ``[K, N]``, or ``[N, K]`` when ``transposed``."""
    a, b = (int(d) for d in tensor.shape)
    return (b, a) if transposed else (a, b)


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    return node.attributes[name].as_int() if name in node.attributes else default


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    return node.attributes[name].as_float() if name in node.attributes else default


class _Quantizer:
    """One run of the pass: finds the sites, quantizes, rewrites."""

    def __init__(self, model: ir.Model, options: QuantizeInt4Options, ctx: object) -> None:
        self.model, self.options, self.ctx = model, options, ctx
        self.target = getattr(ctx, "target", "ort")
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.names: dict[int, set[str]] = {}
        self.done: dict[tuple, tuple[ir.Value, ...]] = {}  # shared weights: quantized once
        self.seen: set[int] = set()

    # -- finding the sites -------------------------------------------------
    def skip(self, reason: str) -> None:
        self.stats[f"skipped-{reason}"] += 1

    def excluded(self, node: ir.Node, weight: ir.Value) -> bool:
        keys = [node.name or "", weight.name or "", node.metadata_props.get("namespace", "")]
        return any(fnmatch.fnmatchcase(k, p) for p in self.options.exclude for k in keys if k)

    def weight_ok(self, node: ir.Node, weight: ir.Value, k: int, n: int) -> bool:
        """Size / dtype / exclusion checks, counting the reason of a refusal."""
        tensor = ir.const_tensor(weight)
        if self.excluded(node, weight):
            self.skip("excluded")
        elif tensor.dtype not in FLOATS:
            self.skip("dtype")
        elif k * n < self.options.min_size or k < 16 or n < 16:
            self.skip("small")
        else:
            return True
        return False

    def sites(self) -> list[_Site]:
        found = []
        for graph in ir.all_graphs(self.model):
            for node in graph:
                site = self.site(graph, node)
                if site is not None:
                    found.append(site)
        return found

    def site(self, graph: ir.Graph, node: ir.Node) -> _Site | None:
        if std_op(node, "MatMul") and len(node.inputs) == 2:
            weight = node.inputs[1]
            tensor = ir.const_tensor(weight)
            if tensor is None:
                return None  # activation x activation: not a weight
            if len(tensor.shape) != 2 or (rank_of(node.inputs[0]) or 2) < 2:
                self.skip("shape")
                return None
            k, n = (int(d) for d in tensor.shape)
            if not self.weight_ok(node, weight, k, n):
                return None
            site = _Site(graph, node, "matmul", weight)
            if self.target == "ort" and self.options.bias:
                self.find_bias(site, n)
            return site
        if std_op(node, "Gemm") and len(node.inputs) >= 2:
            weight = node.inputs[1]
            tensor = ir.const_tensor(weight)
            if tensor is None:
                return None
            trans_b = _attr_int(node, "transB", 0) == 1
            if len(tensor.shape) != 2:
                self.skip("shape")
                return None
            k, n = _dims(tensor, trans_b)
            if not self.weight_ok(node, weight, k, n):
                return None
            site = _Site(graph, node, "gemm", weight, transposed=trans_b, alpha=_attr_float(node, "alpha", 1.0))
            if _attr_int(node, "transA", 0) != 0:
                self.skip("gemm")
                return None
            if self.target == "ort" and len(node.inputs) > 2 and node.inputs[2] is not None:
                c = ir.const_array(node.inputs[2])
                row = channel_bias(np.asarray(c, np.float64), 2, n, 1) if c is not None else None
                if row is None:
                    self.skip("gemm")  # a full [M, N] or computed C: MatMulNBits has only a row bias
                    return None
                site.bias = row * _attr_float(node, "beta", 1.0)
            return site
        if std_op(node, "Gather") and self.options.gather and len(node.inputs) == 2:
            weight = node.inputs[0]
            tensor = ir.const_tensor(weight)
            if tensor is None or _attr_int(node, "axis", 0) != 0:
                return None
            if len(tensor.shape) != 2:
                self.skip("shape")
                return None
            if self.target == "tensorrt":
                self.skip("gather-tensorrt")
                return None
            v, h = (int(d) for d in tensor.shape)
            if not self.weight_ok(node, weight, h, v):
                return None
            return _Site(graph, node, "gather", weight, transposed=True)
        return None

    def find_bias(self, site: _Site, n: int) -> None:
        """``MatMul -> Add(y, c)`` with c a constant row vector of length N: note c."""
        out = site.node.outputs[0]
        uses = out.uses()
        if len(uses) != 1 or not sole_reader(out, uses[0].node) or not std_op(uses[0].node, "Add"):
            return
        add = uses[0].node
        other = add.inputs[1 - uses[0].idx]
        tensor = ir.const_tensor(other)
        if tensor is None or tensor.dtype != site.weight.dtype or add.graph is not site.graph:
            return
        c = np.asarray(tensor.numpy(), dtype=np.float64)
        rank = rank_of(out) if c.ndim > 1 else 1
        row = channel_bias(c, rank, n, rank - 1) if rank else None
        if row is not None:
            site.bias, site.add = row, add

    # -- quantizing ---------------------------------------------------------
    def weight_array(self, site: _Site) -> tuple[np.ndarray, np.dtype]:
        """The weight as float32 ``[K, N]`` (read once) and its numpy dtype."""
        tensor = ir.const_tensor(site.weight)
        array = tensor.numpy()
        dtype = array.dtype
        w = array.T if site.transposed else array
        w = np.asarray(w, dtype=np.float32)
        if site.alpha != 1.0 and site.kind == "gemm" and self.target == "ort":
            w = w * np.float32(site.alpha)
        return w, dtype

    def quantize(self, site: _Site, hessian: np.ndarray | None) -> Blockwise:
        q = self._quantize(site, hessian)  # the weight's arrays are gone on return
        release = getattr(ir.const_tensor(site.weight), "release", None)
        if callable(release):
            try:
                release()  # drop the memory map: each weight is read once
            except BufferError:  # a view of it is still alive elsewhere: the map stays
                pass
        return q

    def _quantize(self, site: _Site, hessian: np.ndarray | None) -> Blockwise:
        w, dtype = self.weight_array(site)
        positive = self.target == "tensorrt"
        opts = self.options
        if hessian is not None:
            return gptq_quantize(w, hessian, opts.block_size, opts.symmetric, positive, dtype, damp=opts.damp)
        return rtn_quantize(w, opts.block_size, opts.symmetric, positive, dtype)

    def initializer(self, graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
        taken = self.names.get(id(graph))
        if taken is None:
            taken = self.names[id(graph)] = ir.value_names(graph)
        value = ir.add_initializer(graph, array, name, taken)
        self.stats["bytes-after"] += value.const_value.nbytes
        return value

    def count_before(self, site: _Site) -> None:
        if id(site.weight) not in self.seen:
            self.seen.add(id(site.weight))
            self.stats["bytes-before"] += ir.const_tensor(site.weight).nbytes

    # -- rewriting ------------------------------------------------------------
    def rewrite(self, site: _Site, hessian: np.ndarray | None) -> None:
        self.count_before(site)
        if site.kind == "gather":
            self.rewrite_gather(site)
        elif self.target == "ort":
            self.rewrite_nbits(site, hessian)
        else:
            self.rewrite_dq(site, hessian)
        self.stats[f"quantized-{site.kind}"] += 1

    def tensors(self, site: _Site, form: str, make) -> tuple[ir.Value, ...]:  # noqa: ANN001 - a callable
        key = (id(site.weight), id(site.graph), form, site.transposed, site.alpha if form == "nbits" else 1.0)
        if key not in self.done:
            self.done[key] = make()
        return self.done[key]

    def rewrite_nbits(self, site: _Site, hessian: np.ndarray | None) -> None:
        node, graph, name = site.node, site.graph, site.weight.name or "w"
        tensor = ir.const_tensor(site.weight)
        k, n = _dims(tensor, site.transposed)
        dtype = tensor.dtype.numpy()

        def make() -> tuple[ir.Value, ...]:
            b, scales, zp = pack_matmulnbits(self.quantize(site, hessian))
            values = [self.initializer(graph, b, f"{name}_q4"),
                      self.initializer(graph, scales.astype(dtype), f"{name}_scales")]
            if zp is not None:
                values.append(self.initializer(graph, zp, f"{name}_zp"))
            return tuple(values)

        inputs: list[ir.Value | None] = [node.inputs[0], *self.tensors(site, "nbits", make)]
        if site.bias is not None:
            inputs += [None] * (5 - len(inputs))
            inputs.append(self.initializer(graph, site.bias.astype(dtype), f"{name}_bias"))
        attrs = [ir.Attr("K", ir.AttributeType.INT, k), ir.Attr("N", ir.AttributeType.INT, n),
                 ir.Attr("bits", ir.AttributeType.INT, 4),
                 ir.Attr("block_size", ir.AttributeType.INT, self.options.block_size)]
        if self.options.accuracy_level:
            attrs.append(ir.Attr("accuracy_level", ir.AttributeType.INT, self.options.accuracy_level))
        new = ir.Node(ORT_DOMAIN, "MatMulNBits", inputs, attrs, num_outputs=1,
                      name=f"{node.name}_int4" if node.name else None)
        last = site.add if site.add is not None else node
        out, old = new.outputs[0], last.outputs[0]
        out.type, out.shape = old.type, old.shape
        graph.insert_before(node, new)
        ir.bypass(last, old, out)
        graph.remove(last, safe=True)
        if site.add is not None:
            graph.remove(node, safe=True)
            self.stats["bias-folded"] += 1
        self.model.opset_imports.setdefault(ORT_DOMAIN, 1)

    def dq_node(self, site: _Site, arrays: tuple, axis: int, hint: str) -> tuple[ir.Value, ...]:
        """A DequantizeLinear-21 of ``arrays`` (x, scale, zp), inserted before the site's node."""
        graph, name = site.graph, site.weight.name or "w"
        x, scale, zp = arrays
        inputs = [self.initializer(graph, x, f"{name}_q4"), self.initializer(graph, scale, f"{name}_scales")]
        if zp is not None:
            inputs.append(self.initializer(graph, zp, f"{name}_zp"))
        attrs = [ir.Attr("axis", ir.AttributeType.INT, axis),
                 ir.Attr("block_size", ir.AttributeType.INT, self.options.block_size)]
        dq = ir.Node("", "DequantizeLinear", inputs, attrs, num_outputs=1, name=f"{hint}_dq" if hint else None)
        out = dq.outputs[0]
        out.name = f"{name}_dq"
        out.type, out.shape = site.weight.type, site.weight.shape
        graph.insert_before(site.node, dq)
        self.names[id(graph)].add(out.name)
        return (out,)

    def rewrite_dq(self, site: _Site, hessian: np.ndarray | None) -> None:
        dtype = ir.const_tensor(site.weight).dtype.numpy()

        def make() -> tuple[ir.Value, ...]:
            x, scale, zp = dq_tensors(self.quantize(site, hessian), site.transposed)
            return self.dq_node(site, (x, scale.astype(dtype), zp), 1 if site.transposed else 0, site.node.name)

        (value,) = self.tensors(site, "dq", make)
        site.node.replace_input_with(1, value)

    def rewrite_gather(self, site: _Site) -> None:
        node, graph, name = site.node, site.graph, site.weight.name or "table"
        dtype = ir.const_tensor(site.weight).dtype.numpy()
        if self.target != "ort":
            def make_dq() -> tuple[ir.Value, ...]:
                x, scale, zp = dq_tensors(self.quantize(site, None), True)
                return self.dq_node(site, (x, scale.astype(dtype), zp), 1, node.name)

            (value,) = self.tensors(site, "dq", make_dq)
            node.replace_input_with(0, value)
            return

        def make() -> tuple[ir.Value, ...]:
            x, scale, zp = dq_tensors(self.quantize(site, None), True)
            values = [self.initializer(graph, x, f"{name}_q4"), self.initializer(graph, scale.astype(dtype),
                                                                             f"{name}_scales")]
            if zp is not None:
                values.append(self.initializer(graph, zp, f"{name}_zp"))
            return tuple(values)

        data, scales, *zp = self.tensors(site, "gbq", make)
        attrs = [ir.Attr("gather_axis", ir.AttributeType.INT, 0), ir.Attr("quantize_axis", ir.AttributeType.INT, 1),
                 ir.Attr("block_size", ir.AttributeType.INT, self.options.block_size)]
        new = ir.Node(ORT_DOMAIN, "GatherBlockQuantized", [data, node.inputs[1], scales, *zp], attrs,
                      num_outputs=1, name=f"{node.name}_int4" if node.name else None)
        out, old = new.outputs[0], node.outputs[0]
        out.type, out.shape = old.type, old.shape
        graph.insert_before(node, new)
        ir.bypass(node, old, out)
        graph.remove(node, safe=True)
        self.model.opset_imports.setdefault(ORT_DOMAIN, 1)

    def drop_unused(self, sites: list[_Site]) -> None:
        for site in sites:
            value = site.weight
            if value.is_initializer() and not value.uses() and not value.is_graph_output():
                site.graph.initializers.pop(value.name, None)

    # -- GPTQ -------------------------------------------------------------------
    def hessians(self, sites: list[_Site]) -> dict[str, np.ndarray]:
        """``2 X^T X / rows`` of the input of every main-graph MatMul / Gemm site,
        in one pass over the calibration data."""
        from graphopt.passes.quantization.activations import stream_activations

        graph = self.model.graph
        names = sorted({s.node.inputs[0].name for s in sites if s.graph is graph and s.kind != "gather"})
        if not names:
            return {}
        inputs = {v.name for v in graph.inputs}
        exposed = [nm for nm in names if nm not in inputs]
        current: dict[str, np.ndarray] = {}

        def batches():  # noqa: ANN202 - a generator
            for batch in self.ctx.calibration:
                current.clear()
                current.update(batch)
                yield batch

        acc = HessianAccumulator()
        for outputs in stream_activations(self.model, exposed, batches()):
            for nm in names:
                acc.add(nm, outputs[nm] if nm in outputs else np.asarray(current[nm]))
        return {nm: h for nm in names if (h := acc.hessian(nm)) is not None}

    def run(self) -> bool:
        opts = self.options
        if opts.block_size not in BLOCK_SIZES:
            raise InputError(f"quantize-weights-int4: block-size {opts.block_size} is not one of {BLOCK_SIZES}")
        if opts.method not in ("rtn", "gptq"):
            raise InputError(f"quantize-weights-int4: method '{opts.method}' is not rtn or gptq")
        if opts.accuracy_level not in range(5):
            raise InputError(f"quantize-weights-int4: accuracy-level {opts.accuracy_level} is not 0..4")
        if opts.method == "gptq" and getattr(self.ctx, "calibration", None) is None:
            raise InputError("quantize-weights-int4: method=gptq needs calibration data (an iterable of input "
                             "dicts in PassContext(calibration=...)); give it, or use method=rtn")
        if self.target != "ort" and default_opset(self.model) < 21:
            count = len(self.sites())  # counted before any change: an upgrade only when there is work
            self.stats = dict.fromkeys(STAT_KEYS, 0)
            if not count:
                return False
            if not self.upgrade():
                self.stats["skipped-opset"] = count
                log.warning("quantize-weights-int4: DequantizeLinear with block_size needs opset 21 for target %s; "
                            "the model has opset %d (allow an upgrade with --opset 21 or config opset.upgrade=21); "
                            "%d weights left in float", self.target, default_opset(self.model), count)
                return False
        sites = self.sites()
        hessians = self.hessians(sites) if opts.method == "gptq" and sites else {}
        left = {}  # sites still to quantize per Hessian: each is freed after its last site
        for site in sites:
            if site.kind != "gather":
                left[site.node.inputs[0].name] = left.get(site.node.inputs[0].name, 0) + 1
        for site in sites:
            hessian = None
            if opts.method == "gptq" and site.kind != "gather":
                a = site.node.inputs[0].name
                hessian = hessians.get(a) if site.graph is self.model.graph else None
                if hessian is None:
                    self.stats["gptq-rtn-fallback"] += 1
                left[a] -= 1
                if not left[a]:
                    hessians.pop(a, None)
            self.rewrite(site, hessian)
        self.drop_unused(sites)
        return bool(sites)

    def upgrade(self) -> bool:
        """Raise the opset to ``opset.upgrade`` when that allows 21; True when done."""
        from graphopt.passes.convert.opset import UpgradeOpset, UpgradeOpsetOptions

        allowed = self.ctx.get("opset.upgrade") if hasattr(self.ctx, "get") else 0
        if allowed < 21:
            return False
        UpgradeOpset(UpgradeOpsetOptions(version=allowed)).run(self.model, self.ctx)
        return default_opset(self.model) >= 21


@register_pass("quantize-weights-int4")
class QuantizeInt4(Pass):
    """Weight-only INT4 for MatMul / Gemm (and Gather tables), block-wise, RTN or GPTQ.

    Sites: ``MatMul(A, B)`` with B a constant float32/float16 ``[K, N]`` (A of
    any rank >= 2); ``Gemm(A, B[, C])`` with ``transA=0`` (``transB`` and
    ``alpha`` handled; for ``ort`` C must be a row vector, which becomes the
    bias); ``Gather(T, idx, axis=0)`` with T a constant 2-D table (option
    ``gather``). Each weight is read once (memory-mapped weights stay
    unread until their turn and are released after), quantized in blocks of
    ``block-size`` along K (along the hidden axis for tables), and replaced by
    the target's form (module doc). A weight shared by several nodes is
    quantized once. The float initializers left unread are removed.

    ``method=gptq`` runs the model once over ``ctx.calibration`` in
    onnxruntime (:func:`~graphopt.passes.quantization.activations.stream_activations`)
    to accumulate ``X^T X`` of every site's input (float64 ``K x K`` per
    distinct input, e.g. 128 MiB for K=4096), then quantizes with GPTQ
    (:mod:`graphopt.passes.quantization.gptq`); tables and subgraph sites use RTN.

    Stats: ``quantized-matmul|gemm|gather``, ``bias-folded``, ``skipped-<reason>``
    (excluded, small, dtype, shape, gemm, opset, gather-tensorrt),
    ``gptq-rtn-fallback``, ``bytes-before`` / ``bytes-after`` (the float
    weights replaced, the quantized tensors written).

    Raises:
        InputError: an option out of range, or ``method=gptq`` without calibration data.
    """

    Options = QuantizeInt4Options
    lossy = True
    preserves = frozenset({"topo-sorted", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        quantizer = _Quantizer(model, self.options, ctx)
        modified = quantizer.run()
        return PassResult(modified=modified, stats=quantizer.stats)

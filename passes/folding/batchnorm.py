"""fold-batchnorm: fold inference BatchNormalization into the Conv, ConvTranspose,
Gemm or 2-D MatMul that produces its input.

Also home of the helpers shared with ``fold-bias`` (``passes/folding/bias.py``):
reading a node's constant weight, scaling output channels, and replacing a
(producer, reader) pair by the producer alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, mark_stale, same_shape
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["FoldBatchNorm", "FLOAT_TYPES", "GEMM_TYPES", "absorb", "bn_affine", "channel_axis_weights",
           "out_channels", "rank_of", "sole_reader", "std_op", "to_gemm", "float_weight"]

log = logging.getLogger(__name__)

DT = ir.DataType
FLOAT_TYPES = frozenset({DT.FLOAT, DT.FLOAT16, DT.DOUBLE})
"""Weight dtypes the folds rewrite: folded values are computed in float64 and rounded once to these."""
GEMM_TYPES = frozenset({DT.FLOAT, DT.DOUBLE})
"""Dtypes for which a MatMul becomes a Gemm (onnxruntime's CPU Gemm kernels)."""


def std_op(node: ir.Node | None, *op_types: str) -> bool:
    """True when ``node`` is one of ``op_types`` in the default ONNX domain."""
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in op_types


def sole_reader(value: ir.Value, reader: ir.Node) -> bool:
    """True when ``reader`` is the only node reading ``value`` (once) and
    ``value`` is not a graph output, so its producer may change what it computes."""
    uses = value.uses()
    return len(uses) == 1 and uses[0].node is reader and not value.is_graph_output()


def float_weight(value: ir.Value | None) -> np.ndarray | None:
    """A constant of a folded dtype (``FLOAT_TYPES``) as a float64 array, or None."""
    tensor = ir.const_tensor(value)
    if tensor is None or tensor.dtype not in FLOAT_TYPES:
        return None
    return np.asarray(tensor.numpy(), dtype=np.float64)


SMALL_ELEMENTS = 64
"""Weights of at most this many elements are copied freely (fold-constants' ``small-elements``)."""


def shared_weight(value: ir.Value, reader: ir.Node) -> bool:
    """True when a constant weight of more than ``SMALL_ELEMENTS`` elements is
    read by a node other than ``reader`` (or is a graph output): rewriting it
    would store a second, scaled copy beside the one the others read
    (fold-constants' growth rule: stored weights are not inflated)."""
    tensor = ir.const_tensor(value)
    if tensor is None or math.prod(int(d) for d in tensor.shape) <= SMALL_ELEMENTS:
        return False
    return value.is_graph_output() or any(use.node is not reader for use in value.uses())


SHARED = "the weight is read by other nodes too (folding would store a second copy)"


def out_channels(node: ir.Node, w_shape: tuple[int, ...]) -> int:
    """Output channels of a Conv (``W: [M, C/group, k...]``) or ConvTranspose
    (``W: [C, M/group, k...]``), from the weight's shape."""
    if node.op_type == "Conv":
        return int(w_shape[0])
    group = node.attributes["group"].as_int() if "group" in node.attributes else 1
    return int(w_shape[1]) * group


def channel_axis_weights(node: ir.Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``w`` with every output channel ``o`` multiplied by ``s[o]`` (float64).

    Conv: output channel ``o`` is ``W[o]``. ConvTranspose: output channel
    ``g * (M/group) + j`` is ``W[g*C/group:(g+1)*C/group, j]`` (ONNX spec of
    ConvTranspose, grouped weights ``[C, M/group, k...]``).
    """
    kernel = (1,) * (w.ndim - 2)
    if node.op_type == "Conv":
        return w * s.reshape(-1, 1, *kernel)
    group = node.attributes["group"].as_int() if "group" in node.attributes else 1
    c, m_g = w.shape[0], w.shape[1]
    grouped = w.reshape(group, c // group, m_g, *w.shape[2:])
    return (grouped * s.reshape(group, 1, m_g, *kernel)).reshape(w.shape)


def bn_affine(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | str:
    """``(s, t)`` in float64 with ``BatchNormalization(x) == x * s + t`` per
    channel, or the reason it cannot be read.

    ``s = scale / sqrt(var + epsilon)``, ``t = B - mean * s`` (ONNX spec:
    ``Y = (X - input_mean) / sqrt(input_var + epsilon) * scale + B``).
    All four must be constant, 1-D and of one length C.
    """
    arrays = [float_weight(v) for v in bn.inputs[1:5]]
    if len(arrays) < 4 or any(a is None for a in arrays):
        return "scale, B, mean or var is not a float constant"
    scale, bias, mean, var = arrays
    if any(a.ndim != 1 or a.shape != scale.shape for a in arrays):
        return "scale, B, mean and var are not 1-D of one length"
    eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    s = scale / np.sqrt(var + np.float64(np.float32(eps)))
    return s, bias - mean * s


def _ort_float32_fold(bn: ir.Node, conv: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Conv+BN folded in float32 with onnxruntime's own operation order
    (``ConvBNFusion``, run at ORT_ENABLE_BASIC and above): ``s = scale /
    sqrt(var + eps)``, ``W' = W * s``, ``b' = (b - mean) * s + B`` or, without
    a Conv bias, ``b' = B - mean * s``, each step rounded to float32.

    onnxruntime applies exactly this fold to the original model when it loads
    it, so a model folded here runs bit-identically to the original under
    onnxruntime's default optimizations (a float64 fold, rounded once, is
    more accurate in isolation but differs from what onnxruntime computes by
    float32 rounding, which deep CNNs amplify to ~1e-5).

    Returns:
        ``(W', b')`` as float32 arrays, or None when the Conv is not a float32
        ``Conv`` with float32 1-D BN parameters (other cases use the float64 fold).
    """
    if conv.op_type != "Conv":
        return None
    tensors = [ir.const_tensor(v) for v in (conv.inputs[1], *bn.inputs[1:5])]
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    if bias_value is not None:
        tensors.append(ir.const_tensor(bias_value))
    if any(t is None or t.dtype != ir.DataType.FLOAT for t in tensors):
        return None
    w, scale, beta, mean, var = (np.asarray(t.numpy(), dtype=np.float32) for t in tensors[:5])
    eps = np.float32(bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5)
    s = scale / np.sqrt(var + eps)
    new_w = w * s.reshape(-1, *(1,) * (w.ndim - 1))
    if bias_value is not None:
        b = np.asarray(tensors[5].numpy(), dtype=np.float32)
        new_b = (b - mean) * s + beta
    else:
        new_b = beta - mean * s
    return new_w.astype(np.float32), new_b.astype(np.float32)


def inference_bn(bn: ir.Node, opset: int) -> str | None:
    """None when ``bn`` computes the inference formula with only ``Y`` read,
    else the reason.

    Opsets 1-6: ``is_test`` must be 1. Opsets 7-8: ``spatial`` must be 1 (the
    default). Opset 14+: ``training_mode`` must be 0 (the default). Every
    opset: the optional outputs (running or saved statistics, produced only
    in training) must be unread.
    """
    attrs = bn.attributes
    if opset < 7 and ("is_test" not in attrs or attrs["is_test"].as_int() == 0):
        return "is_test is not set (training mode before opset 7)"
    if "spatial" in attrs and attrs["spatial"].as_int() != 1:
        return "spatial=0 (per-activation statistics)"
    if "training_mode" in attrs and attrs["training_mode"].as_int() != 0:
        return "training_mode=1"
    if any(out.uses() or out.is_graph_output() for out in bn.outputs[1:]):
        return "a running or saved statistic is read"
    return None


def absorb(reader: ir.Node, producer: ir.Node, edit: Callable[[], None]) -> bool:
    """Make ``producer`` (edited by ``edit``) compute what ``reader`` computed,
    and remove ``reader``.

    ``producer``'s output must have ``reader`` as sole reader (checked by the
    caller); it takes over ``reader``'s readers, or its place as a graph
    output (name, dtype and shape). Nothing changes when that is impossible
    (``reader`` in another graph).

    Returns:
        True when rewritten.
    """
    if producer.graph is not reader.graph:
        return False
    if not ir.bypass(reader, reader.outputs[0], producer.outputs[0]):
        return False
    edit()
    reader.graph.remove(reader, safe=True)
    return True


def to_gemm(matmul: ir.Node, reader: ir.Node, b: ir.Value, c: ir.Value) -> ir.Node:
    """Replace ``matmul`` (A: 2-D) and its sole ``reader`` by ``Gemm(A, b, c)``
    with the reader's output; ``matmul`` stays, unread, for dce."""
    graph = reader.graph
    gemm = ir.Node("", "Gemm", [matmul.inputs[0], b, c], num_outputs=1)
    out, old = gemm.outputs[0], reader.outputs[0]
    out.shape, out.type = old.shape, old.type
    graph.insert_before(reader, gemm)
    absorb(reader, gemm, lambda: None)
    return gemm


def _cast(array: np.ndarray, like: ir.Value) -> np.ndarray:
    return array.astype(ir.const_tensor(like).dtype.numpy())


def rank_of(value: ir.Value) -> int | None:
    """The rank of ``value``: from its shape, else from the constant target
    of the ``Reshape`` producing it (its shape may be unknown when the
    target was computed and folded after the last shape inference)."""
    if value.shape is not None:
        return len(value.shape)
    producer = value.producer()
    if std_op(producer, "Reshape") and len(producer.inputs) > 1:
        tensor = ir.const_tensor(producer.inputs[1])
        if tensor is not None and len(tensor.shape) == 1:
            return int(tensor.shape[0])
    return None


class _Folder:
    """Folds the BatchNormalization nodes of one graph, in node order."""

    def __init__(self, graph: ir.Graph, opset: int, stats: dict[str, int]) -> None:
        self.graph, self.opset, self.stats = graph, opset, stats
        self.names: set[str] | None = None
        self.stale = False  # a rewrite a new shape inference may tell more from (SHAPES_CURRENT)

    def initializer(self, array, name: str) -> ir.Value:  # noqa: ANN001 - ndarray
        """A new initializer of this graph (``ir.add_initializer`` with the
        graph's names collected once per run, not once per initializer)."""
        if self.names is None:
            self.names = ir.value_names(self.graph)
        return ir.add_initializer(self.graph, array, name, self.names)

    def absorb(self, reader: ir.Node, producer: ir.Node, edit) -> bool:  # noqa: ANN001 - a callable
        """:func:`absorb`, noting whether the reader's readers now see another shape."""
        neutral = same_shape(reader.outputs[0], producer.outputs[0])
        done = absorb(reader, producer, edit)
        self.stale = self.stale or (done and not neutral)
        return done

    def created(self, node: ir.Node) -> None:
        """Note the names of a node this run inserted (taken from now on)."""
        if self.names is not None:
            self.names.update(v.name for v in node.outputs if v.name)

    def skip(self, bn: ir.Node, reason: str) -> None:
        log.debug("fold-batchnorm: %s kept: %s", bn.name or bn.op_type, reason)
        self.stats["kept"] += 1

    def run(self) -> None:
        for bn in list(self.graph):
            if std_op(bn, "BatchNormalization") and bn.graph is self.graph:
                reason = self.fold(bn)
                if reason is not None:
                    self.skip(bn, reason)

    def fold(self, bn: ir.Node) -> str | None:
        """Fold ``bn`` into its producer; the reason when it stays."""
        x = bn.inputs[0]
        producer = x.producer() if x is not None else None
        if not std_op(producer, "Conv", "ConvTranspose", "Gemm", "MatMul"):
            return "the input is not produced by Conv, ConvTranspose, Gemm or MatMul"
        if not sole_reader(x, bn):
            return f"the {producer.op_type} output is read elsewhere or is a graph output"
        reason = inference_bn(bn, self.opset)
        if reason is not None:
            return reason
        affine = bn_affine(bn)
        if isinstance(affine, str):
            return affine
        if producer.op_type in ("Conv", "ConvTranspose"):
            return self.conv(bn, producer, *affine)
        if producer.op_type == "Gemm":
            return self.gemm(bn, producer, *affine)
        return self.matmul(bn, producer, *affine)

    def conv(self, bn: ir.Node, conv: ir.Node, s: np.ndarray, t: np.ndarray) -> str | None:
        """``Conv(x, W, b)`` then BN is ``Conv(x, W * s, b * s + t)`` per output channel."""
        w_value = conv.inputs[1]
        w_tensor = ir.const_tensor(w_value)
        if w_tensor is None or w_tensor.dtype not in FLOAT_TYPES or len(w_tensor.shape) < 3:
            return "the weight is not a float constant of rank >= 3"
        if shared_weight(w_value, conv):
            return SHARED
        channels = out_channels(conv, tuple(int(d) for d in w_tensor.shape))
        b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        b_tensor = ir.const_tensor(b_value) if b_value is not None else None
        if b_value is not None and (b_tensor is None or b_tensor.dtype not in FLOAT_TYPES):
            return "the bias is not constant or the channel counts differ"
        if (b_tensor is not None and tuple(b_tensor.shape) != (channels,)) or s.shape != (channels,):
            return "the bias is not constant or the channel counts differ"
        same = _ort_float32_fold(bn, conv)
        if same is not None:
            new_w, new_b = same
        else:
            b = float_weight(b_value) if b_value is not None else np.zeros(channels)
            new_w = _cast(channel_axis_weights(conv, float_weight(w_value), s), w_value)
            new_b = _cast(b * s + t, w_value)

        def edit() -> None:
            conv.replace_input_with(1, self.initializer(new_w, f"{w_value.name or 'w'}_bn"))
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, self.initializer(new_b, f"{w_value.name or 'w'}_bn_bias"))

        if not self.absorb(bn, conv, edit):
            return f"the {conv.op_type} is in another graph"
        self.stats[conv.op_type.lower()] += 1
        return None

    def gemm(self, bn: ir.Node, gemm: ir.Node, s: np.ndarray, t: np.ndarray) -> str | None:
        """``alpha * A' B' + beta * C`` then BN: the columns of B' times s,
        ``C := beta * C * s + t``, beta 1 (Gemm output ``[M, N]``: BN's channel is N)."""
        b_value = gemm.inputs[1]
        b = float_weight(b_value)
        if b is None or b.ndim != 2 or ir.const_tensor(b_value).dtype not in GEMM_TYPES:
            return "B is not a 2-D float or double constant"
        if shared_weight(b_value, gemm):
            return SHARED
        trans_b = "transB" in gemm.attributes and gemm.attributes["transB"].as_int() == 1
        if (b.shape[0] if trans_b else b.shape[1]) != s.shape[0]:
            return "the channel counts differ"
        c_value = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        c = float_weight(c_value) if c_value is not None else np.zeros(1)
        if c is None or c.ndim > 2:
            return "C is not a float constant"
        beta = gemm.attributes["beta"].as_float() if "beta" in gemm.attributes else 1.0
        new_b = _cast(b * (s[:, None] if trans_b else s[None, :]), b_value)
        new_c = _cast(np.float64(beta) * c * s + t, b_value)  # broadcasts C to [N], [1, N] or [M, N]

        def edit() -> None:
            gemm.replace_input_with(1, self.initializer(new_b, f"{b_value.name or 'b'}_bn"))
            if len(gemm.inputs) < 3:
                gemm.resize_inputs(3)
            gemm.replace_input_with(2, self.initializer(new_c, f"{b_value.name or 'b'}_bn_bias"))
            gemm.attributes["beta"] = ir.Attr("beta", ir.AttributeType.FLOAT, 1.0)

        if not self.absorb(bn, gemm, edit):
            return "the Gemm is in another graph"
        self.stats["gemm"] += 1
        return None

    def matmul(self, bn: ir.Node, matmul: ir.Node, s: np.ndarray, t: np.ndarray) -> str | None:
        """``MatMul(A, W)`` (A 2-D, W a 2-D constant) then BN is ``Gemm(A, W * s, t)``."""
        a, w_value = matmul.inputs
        w = float_weight(w_value)
        if w is None or w.ndim != 2 or rank_of(a) != 2 or ir.const_tensor(w_value).dtype not in GEMM_TYPES:
            return "not a 2-D MatMul by a float or double constant"
        if shared_weight(w_value, matmul):
            return SHARED
        if w.shape[1] != s.shape[0]:
            return "the channel counts differ"
        if matmul.graph is not bn.graph:
            return "the MatMul is in another graph"
        name = w_value.name or "w"
        new_w = self.initializer(_cast(w * s[None, :], w_value), f"{name}_bn")
        new_c = self.initializer(_cast(t, w_value), f"{name}_bn_bias")
        self.stale = True  # a new Gemm: inference has not seen it
        self.created(to_gemm(matmul, bn, new_w, new_c))
        self.graph.remove(matmul, safe=True)
        self.stats["matmul"] += 1
        return None


@register_pass("fold-batchnorm")
class FoldBatchNorm(Pass):
    """Fold inference BatchNormalization into the Conv, ConvTranspose, Gemm or 2-D MatMul before it.

    ``BatchNormalization`` in inference is a per-channel affine map
    ``Y = X * s + t`` with ``s = scale / sqrt(var + epsilon)`` and
    ``t = B - mean * s`` (ONNX operator spec, channel axis 1). When its input
    ``X`` is produced by one of these nodes and read by nothing else:

    - ``Conv(x, W[, b])`` (``W: [M, C/group, k...]``) -> ``Conv(x, W * s[:, None, ...], b * s + t)``;
    - ``ConvTranspose(x, W[, b])`` (``W: [C, M/group, k...]``): output channel
      ``g * M/group + j`` scales ``W[g-th input block, j]``;
    - ``Gemm(A, B[, C])`` (output ``[M, N]``, channel N): the columns of
      ``op(B)`` times s, ``C := beta * C * s + t`` (any C Gemm accepts:
      ``[]``, ``[N]``, ``[1, N]``, ``[M, 1]``, ``[M, N]``), ``beta := 1``;
    - ``MatMul(A, W)`` with A 2-D and W a 2-D constant -> ``Gemm(A, W * s, t)``.

    The new weights are computed in float64 from the stored ones and rounded
    once to the weight's dtype (float32, float16 or float64; Gemm: float32 or
    float64), so each folded weight is the correctly rounded value; outputs
    move by float rounding only (the product ``x * (W * s)`` is summed in a
    different order of roundings than ``(x * W) * s``).

    Kept (counted as ``kept``, reason logged at DEBUG): non-constant weight,
    bias or BN statistics; BN statistics that are not 1-D of the channel
    count; training mode (``training_mode=1`` from opset 14, ``is_test=0``
    before opset 7) or any of BN's optional statistic outputs read;
    ``spatial=0`` (opsets 7-8); the producer's output read elsewhere or a
    graph output; a producer in an outer graph. A BatchNormalization with
    another producer stays (a ``Mul`` + ``Add`` would cost one node more).
    Runs in the main graph and subgraphs, not in function bodies (no
    initializers there). A weight of more than 64 elements read by another
    node too is kept (``SHARED``): a folded copy beside the one the others read would grow the
    stored weights (fold-constants' growth rule, issue 20); an unshared weight
    is replaced by new initializers, and dce drops the old one.

    Prior art: onnxoptimizer's ``fuse_bn_into_conv`` (run by onnxsim),
    onnxslim's Conv+BN fusion, onnxruntime's ``ConvBNFusion``.
    """

    requires = frozenset({"topo-sorted"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})  # cleared by the pass when due

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"conv": 0, "convtranspose": 0, "gemm": 0, "matmul": 0, "kept": 0}
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        folders = [_Folder(graph, opset, stats) for graph in ir.all_graphs(model)]
        for folder in folders:
            folder.run()
        if any(folder.stale for folder in folders):
            mark_stale(ctx, model)
        folded = stats["conv"] + stats["convtranspose"] + stats["gemm"] + stats["matmul"]
        return PassResult(modified=folded > 0, stats=stats)

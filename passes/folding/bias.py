"""fold-bias: fold the constant Add (or Sub) after a Conv, ConvTranspose, Gemm or
2-D MatMul into the node's bias."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, mark_stale, same_shape
from graphopt.passes.folding.batchnorm import (
    GEMM_TYPES, absorb, float_weight, out_channels, rank_of, sole_reader, std_op, to_gemm,
)
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["FoldBias", "FoldBiasOptions", "channel_bias"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldBiasOptions:
    """Options of ``fold-bias``."""

    gemm: bool = field(default=True, metadata={"doc": (
        "turn a 2-D MatMul followed by the Add of a constant row vector into one Gemm")})


def channel_bias(c: np.ndarray, rank: int, channels: int, axis: int) -> np.ndarray | None:
    """The per-channel vector (length ``channels``) that adding ``c`` to a
    tensor of rank ``rank`` adds along ``axis``, or None when ``c`` varies
    along another axis or would broadcast the tensor to a larger shape.

    ``c`` is aligned right (numpy / ONNX multidirectional broadcasting): its
    rank may not exceed ``rank``, its dim on ``axis`` is 1 or ``channels``,
    every other dim is 1.
    """
    if c.ndim > rank:
        return None
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(d != 1 for i, d in enumerate(full.shape) if i != axis) or full.shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(full.reshape(-1), (channels,))


def _addend(node: ir.Node) -> tuple[ir.Value, ir.Value, np.ndarray, float] | None:
    """For ``Add(y, c)``, ``Add(c, y)`` or ``Sub(y, c)`` with c a float
    constant: ``(y, c, c as float64, sign)``; else None."""
    if len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    y, c = node.inputs
    array = float_weight(c)
    if array is None and node.op_type == "Add":
        c, y = y, c
        array = float_weight(c)
    if array is None or ir.const_tensor(y) is not None:
        return None
    return y, c, array, (1.0 if node.op_type == "Add" else -1.0)


class _Folder:
    """Folds the bias Adds of one graph, in node order."""

    def __init__(self, graph: ir.Graph, options: FoldBiasOptions, stats: dict[str, int]) -> None:
        self.graph, self.options, self.stats = graph, options, stats
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

    def run(self) -> None:
        for node in list(self.graph):
            if not std_op(node, "Add", "Sub") or node.graph is not self.graph:
                continue
            found = _addend(node)
            if found is None:
                continue
            y, c_value, c, sign = found
            producer = y.producer()
            if not std_op(producer, "Conv", "ConvTranspose", "Gemm", "MatMul") or not sole_reader(y, node):
                continue
            if len(producer.inputs) < 2 or ir.const_tensor(c_value).dtype != producer.inputs[1].dtype:
                continue  # Add's inputs share one type T; a mismatch means a malformed model
            reason = getattr(self, producer.op_type.lower())(node, producer, c * sign)
            if reason is not None:
                log.debug("fold-bias: %s after %s kept: %s", node.op_type, producer.op_type, reason)
                self.stats["kept"] += 1

    def _bias(self, like: ir.Value, array: np.ndarray, name: str) -> ir.Value:
        """A new initializer: ``array`` rounded once to ``like``'s dtype."""
        return self.initializer(np.ascontiguousarray(array).astype(like.dtype.numpy()), name)

    def conv(self, add: ir.Node, conv: ir.Node, c: np.ndarray) -> str | None:
        """``Conv(x, W, b) + c`` with c per output channel is ``Conv(x, W, b + c)``."""
        w_value = conv.inputs[1]
        w = ir.const_tensor(w_value)
        if w is None or len(w.shape) < 3:
            return "the weight is not a constant of rank >= 3"
        dims = [int(d) for d in w.shape]
        channels = out_channels(conv, dims)
        vector = channel_bias(c, len(dims), channels, 1)
        if vector is None:
            return f"the constant of shape {list(c.shape)} is not per output channel"
        b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        b = float_weight(b_value) if b_value is not None else np.zeros(channels)
        if b is None or b.shape != (channels,):
            return "the bias is not a constant"
        def edit() -> None:
            if len(conv.inputs) < 3:
                conv.resize_inputs(3)
            conv.replace_input_with(2, self._bias(w_value, b + vector, f"{w_value.name or 'w'}_bias"))

        if not self.absorb(add, conv, edit):
            return "the producer is in another graph"
        self.stats[conv.op_type.lower()] += 1
        return None

    convtranspose = conv

    def gemm(self, add: ir.Node, gemm: ir.Node, c: np.ndarray) -> str | None:
        """``Gemm(A, B, C; beta) + c`` is ``Gemm(A, B, beta * C + c; beta=1)``
        when c is a row vector (``[]``, ``[1]``, ``[N]``, ``[1, N]``)."""
        b_value = gemm.inputs[1]
        b_shape = b_value.shape
        if b_value.dtype not in GEMM_TYPES or b_shape is None or len(b_shape) != 2:
            return "B is not float or double with a known 2-D shape"
        trans_b = "transB" in gemm.attributes and gemm.attributes["transB"].as_int() == 1
        n = b_shape[0] if trans_b else b_shape[1]
        row = channel_bias(c, 2, n, 1) if isinstance(n, int) else None
        c_value = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        old = float_weight(c_value) if c_value is not None else np.zeros(1)
        if row is None or old is None or old.ndim > 2:
            return "the addend is not a row vector or C is not constant"
        beta = gemm.attributes["beta"].as_float() if "beta" in gemm.attributes else 1.0
        def edit() -> None:
            if len(gemm.inputs) < 3:
                gemm.resize_inputs(3)
            gemm.replace_input_with(2, self._bias(b_value, np.float64(beta) * old + row, f"{b_value.name or 'b'}_bias"))
            gemm.attributes["beta"] = ir.Attr("beta", ir.AttributeType.FLOAT, 1.0)

        if not self.absorb(add, gemm, edit):
            return "the producer is in another graph"
        self.stats["gemm"] += 1
        return None

    def matmul(self, add: ir.Node, matmul: ir.Node, c: np.ndarray) -> str | None:
        """``MatMul(A, B) + c`` with A and B 2-D and c a row vector is ``Gemm(A, B, c)``."""
        if not self.options.gemm:
            return "option gemm=false"
        a, b = matmul.inputs
        b_shape = b.shape if b.shape is not None else getattr(ir.const_tensor(b), "shape", None)
        if b.dtype not in GEMM_TYPES:
            return "not a float or double MatMul"
        if rank_of(a) != 2 or b_shape is None or len(b_shape) != 2 or not isinstance(b_shape[1], int):
            return "not a 2-D MatMul with a static N"
        row = channel_bias(c, 2, b_shape[1], 1)
        if row is None:
            return f"the constant of shape {list(c.shape)} is not a row vector"
        if matmul.graph is not add.graph:
            return "the producer is in another graph"
        bias = self._bias(b, row, "gemm_bias")
        self.stale = True  # a new Gemm: inference has not seen it
        self.created(to_gemm(matmul, add, b, bias))
        self.graph.remove(matmul, safe=True)
        self.stats["matmul"] += 1
        return None


@register_pass("fold-bias")
class FoldBias(Pass):
    """Fold a constant Add or Sub after Conv, ConvTranspose, Gemm or 2-D MatMul into its bias.

    For ``y = P(...)`` read only by ``Add(y, c)``, ``Add(c, y)`` or
    ``Sub(y, c)`` (then ``-c``), with c a float constant of y's dtype:

    - ``Conv`` / ``ConvTranspose(x, W[, b])`` (output ``[N, M, d...]``): c
      constant along every axis but the channel axis 1 (``[M]``-valued
      ``[1, M, 1, 1]``, ``[M, 1, 1]``, or a scalar; rank at most the output's,
      so it broadcasts nothing) -> ``P(x, W, b + c)`` (ONNX spec: the bias
      is added per output channel);
    - ``Gemm(A, B[, C])`` (float, double) with a row-vector c (``[]``, ``[1]``,
      ``[N]``, ``[1, N]``) -> ``Gemm(A, B, beta * C + c)``, ``beta := 1``;
    - ``MatMul(A, B)`` with A, B and the output 2-D (inferred shapes),
      float or double, and a row-vector c -> ``Gemm(A, B, c)`` (option
      ``gemm``; onnxoptimizer's ``fuse_matmul_add_bias_into_gemm``, which
      onnxsim runs, and onnxruntime's own ``MatMulAddFusion`` do the same,
      so onnxruntime runs the same kernel either way).

    The new bias is computed in float64 and rounded once to the weight's
    dtype. Outputs move by float rounding only: ``(conv + b) + c`` becomes
    ``conv + round(b + c)``.

    Kept: a non-constant bias or C, a c that varies along a non-channel axis
    or would broadcast the output larger, y read elsewhere or a graph
    output, integer dtypes. Runs in the main graph and subgraphs, not in
    function bodies. Prior art: onnxslim's ``ConvAdd`` fusion, onnxoptimizer's
    ``fuse_add_bias_into_conv`` and ``fuse_matmul_add_bias_into_gemm``.
    """

    Options = FoldBiasOptions
    requires = frozenset({"topo-sorted", "shapes-inferred"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})  # cleared by the pass when due

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"conv": 0, "convtranspose": 0, "gemm": 0, "matmul": 0, "kept": 0}
        folders = [_Folder(graph, self.options, stats) for graph in ir.all_graphs(model)]
        for folder in folders:
            folder.run()
        if any(folder.stale for folder in folders):
            mark_stale(ctx, model)
        folded = stats["conv"] + stats["convtranspose"] + stats["gemm"] + stats["matmul"]
        return PassResult(modified=folded > 0, stats=stats)

"""merge-sibling-matmuls: merge the MatMuls (or Gemms) that read one activation
with constant weights into one MatMul by the concatenated weight and a Split
(the horizontal Q/K/V merge)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, mark_stale
from graphopt.passes.folding.batchnorm import rank_of, sole_reader, std_op
from graphopt.passes.folding.bias import channel_bias
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["MergeSiblingMatMuls", "MergeSiblingMatMulsOptions", "Branch", "branch_of", "bias_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeSiblingMatMulsOptions:
    """Options of ``merge-sibling-matmuls``."""

    max_bytes: int = field(default=256 * 2**20, metadata={"doc": (
        "largest total size in bytes of the weights to concatenate in one run; the concatenated weights are "
        "new in-memory tensors while the old ones may be memory-mapped, so above this nothing merges")})


@dataclass
class Branch:
    """One MatMul or Gemm of a sibling group.

    Attributes:
        node: ``MatMul(A, W)`` or ``Gemm(A, W[, C])``.
        weight: the constant W (lazy: not read until merged).
        rows: K, the contracted dim (W's rows; its columns under ``transB=1``).
        cols: N, the branch's output columns.
        trans_b: Gemm's ``transB`` (W stored ``[N, K]``).
        c: Gemm's C as a length-N row (None when absent or a MatMul).
        add: the ``Add`` of a constant row vector that alone reads the output, if any.
        bias: that row vector, length N.
    """

    node: ir.Node
    weight: ir.TensorProtocol
    rows: int
    cols: int
    trans_b: bool = False
    c: np.ndarray | None = None
    add: ir.Node | None = None
    bias: np.ndarray | None = None

    @property
    def key(self) -> tuple:
        """What siblings must share to merge: op, K, dtype and Gemm's other attributes."""
        attrs = self.node.attributes
        if self.node.op_type == "MatMul":
            return ("MatMul", self.rows, self.weight.dtype)
        return ("Gemm", self.rows, self.weight.dtype, _float_attr(self.node, "alpha"), _float_attr(self.node, "beta"),
                attrs["transA"].as_int() if "transA" in attrs else 0)

    @property
    def last(self) -> ir.Node:
        """The node whose output the merged Split replaces."""
        return self.add if self.add is not None else self.node


def _float_attr(node: ir.Node, name: str) -> float:
    return node.attributes[name].as_float() if name in node.attributes else 1.0


def branch_of(node: ir.Node) -> Branch | str:
    """The :class:`Branch` of a MatMul or Gemm by a constant 2-D weight that
    nothing else reads, or the reason it cannot merge.

    MatMul: ``A: [..., K] x W: [K, N]``. Gemm: ``A: [M, K]`` (``[K, M]``
    under ``transA``) ``x W: [K, N]`` (``[N, K]`` under ``transB``), C absent
    or a constant that broadcasts as a row (``[]``, ``[1]``, ``[N]``, ``[1, N]``).
    """
    w_value = node.inputs[1] if len(node.inputs) > 1 else None
    tensor = ir.const_tensor(w_value)
    if tensor is None or len(tensor.shape) != 2:
        return "the weight is not a 2-D constant"
    if len(w_value.uses()) != 1 or w_value.is_graph_output():
        return "the weight is read elsewhere (merging would duplicate it)"
    if ir.is_constant(node.inputs[0]):
        return "both inputs are constant (fold-constants' work)"
    rows, cols = (int(d) for d in tensor.shape)
    if node.op_type == "MatMul":
        return Branch(node, tensor, rows, cols) if cols > 0 else "the weight has no columns"
    trans_b = "transB" in node.attributes and node.attributes["transB"].as_int() == 1
    if trans_b:
        rows, cols = cols, rows
    c = None
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c_tensor = ir.const_tensor(node.inputs[2])
        c = channel_bias(c_tensor.numpy(), 2, cols, 1) if c_tensor is not None else None
        if c is None or c_tensor.dtype != tensor.dtype:
            return "C is not a constant row vector of the weight's dtype"
    return Branch(node, tensor, rows, cols, trans_b, c) if cols > 0 else "the weight has no columns"


def bias_of(branch: Branch) -> tuple[ir.Node, np.ndarray] | None:
    """``(add, row)`` when the branch's output is read only by ``Add(y, c)``
    or ``Add(c, y)`` with c a constant of the weight's dtype that adds one
    value per output column (``[N]``, ``[1, ..., 1, N]``, or a size-1
    constant; never of a higher rank than y, so it broadcasts nothing)."""
    out = branch.node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or not sole_reader(out, uses[0].node):
        return None
    add = uses[0].node
    if not std_op(add, "Add") or len(add.inputs) != 2 or add.graph is not branch.node.graph:
        return None
    other = add.inputs[1 - uses[0].idx]
    tensor = ir.const_tensor(other)
    if tensor is None or tensor.dtype != branch.weight.dtype:
        return None
    row = channel_bias(tensor.numpy(), rank_of(out) or 1, branch.cols, (rank_of(out) or 1) - 1)
    return (add, row) if row is not None else None


class _Merger:
    """Merges the sibling MatMuls and Gemms of one graph."""

    def __init__(self, graph: ir.Graph, opset: int, stats: dict[str, int]) -> None:
        self.graph, self.opset, self.stats = graph, opset, stats
        self.names: set[str] | None = None
        self.stale = False  # a merge a new shape inference may tell more from (SHAPES_CURRENT)

    def initializer(self, array, name: str) -> ir.Value:  # noqa: ANN001 - ndarray
        """A new initializer of this graph (``ir.add_initializer`` with the
        graph's names collected once per run, not once per initializer)."""
        if self.names is None:
            self.names = ir.value_names(self.graph)
        return ir.add_initializer(self.graph, array, name, self.names)

    def created(self, node: ir.Node) -> None:
        """Note the names of a node this run inserted (taken from now on)."""
        if self.names is not None:
            self.names.update(v.name for v in node.outputs if v.name)

    def plan(self) -> list[list[Branch]]:
        """The sibling groups of this graph (two or more branches each, in
        node order); the MatMuls and Gemms left out are counted as kept."""
        order = {node: i for i, node in enumerate(self.graph)}
        readers: dict[ir.Value, list[ir.Node]] = defaultdict(list)
        for node in order:
            if std_op(node, "MatMul", "Gemm") and len(node.inputs) >= 2 and node.inputs[0] is not None:
                readers[node.inputs[0]].append(node)
        found: list[list[Branch]] = []
        for nodes in readers.values():
            if len(nodes) < 2:
                continue
            groups: dict[tuple, list[Branch]] = defaultdict(list)
            for node in nodes:
                branch = branch_of(node)
                if isinstance(branch, str):
                    log.debug("merge-sibling-matmuls: %s kept: %s", node.name or node.op_type, branch)
                else:
                    groups[branch.key].append(branch)
            siblings = [g for g in groups.values() if len(g) >= 2]
            found.extend(sorted(g, key=lambda b: order[b.node]) for g in siblings)
            self.stats["kept"] += len(nodes) - sum(len(g) for g in siblings)
        return found

    def apply(self, group: list[Branch]) -> None:
        reason = self.merge(group)
        if reason is not None:
            log.debug("merge-sibling-matmuls: %d siblings kept: %s", len(group), reason)
            self.stats["kept"] += len(group)

    def axis(self, first: Branch) -> int | str:
        """Split's axis: -1, or the output's last axis before opset 11 (no negative axes then)."""
        if self.opset >= 11:
            return -1
        if self.opset < 7:
            return "opset before 7 (Add broadcasts only with the legacy broadcast attribute)"
        if first.node.op_type == "Gemm":
            return 1
        rank = rank_of(first.node.inputs[0])
        return rank - 1 if rank else "the rank of A is unknown (Split takes no negative axis before opset 11)"

    def merge(self, group: list[Branch]) -> str | None:
        """Replace ``group`` (in node order) by one MatMul or Gemm, an Add
        when every branch has a bias Add, and a Split; the reason when not."""
        axis = self.axis(group[0])
        if isinstance(axis, str):
            return axis
        found = [bias_of(b) for b in group]
        if all(f is not None for f in found):
            for branch, (add, row) in zip(group, found):
                branch.add, branch.bias = add, row
        first = group[0]
        op, a = first.node.op_type, first.node.inputs[0]
        name = first.node.inputs[1].name or "w"
        dtype = first.weight.dtype.numpy()
        all_trans = op == "Gemm" and all(b.trans_b for b in group)
        if all_trans:  # keep the [N, K] layout: stack the rows
            weight = np.concatenate([b.weight.numpy() for b in group], axis=0)
        else:
            weight = np.concatenate([b.weight.numpy().T if b.trans_b else b.weight.numpy() for b in group], axis=1)
        inputs = [a, self.initializer(np.ascontiguousarray(weight), f"{name}_siblings")]
        attrs = []
        if op == "Gemm":
            attrs = [ir.Attr(key, attr.type, attr.value) for key, attr in first.node.attributes.items()
                     if key in ("alpha", "beta", "transA")]
            if all_trans:
                attrs.append(ir.Attr("transB", ir.AttributeType.INT, 1))
            if any(b.c is not None for b in group):
                c = np.concatenate([b.c if b.c is not None else np.zeros(b.cols, dtype) for b in group])
                inputs.append(self.initializer(c.astype(dtype), f"{name}_siblings_c"))
        total = sum(b.cols for b in group)
        nodes = [ir.Node("", op, inputs, attrs, num_outputs=1)]
        _like(nodes[0].outputs[0], first.node.outputs[0], total)
        if first.add is not None:
            bias = self.initializer(np.concatenate([b.bias for b in group]).astype(dtype),
                                      f"{name}_siblings_bias")
            nodes.append(ir.Node("", "Add", [nodes[0].outputs[0], bias], num_outputs=1))
            _like(nodes[1].outputs[0], first.node.outputs[0], total)
        nodes.append(self.split(nodes[-1].outputs[0], [b.cols for b in group], axis))
        self.graph.insert_before(first.node, nodes)
        for node in nodes:
            self.created(node)
        # The Split's outputs take the branches' shapes and the merged
        # product's is a branch shape with the widths summed: what inference
        # gives them when it gave the branches theirs (the readers see the
        # same shapes as before). Without branch shapes, the new values have none.
        self.stale = self.stale or any(b.last.outputs[0].shape is None for b in group)
        for branch, out in zip(group, nodes[-1].outputs):
            old = branch.last.outputs[0]
            out.type, out.shape = old.type, old.shape
            ir.bypass(branch.last, old, out)  # a fresh Split output can always stand in
            for node in (branch.add, branch.node):
                if node is not None:
                    self.graph.remove(node, safe=True)
        self.stats["groups"] += 1
        self.stats["merged"] += len(group)
        self.stats["biases"] += len(group) if first.add is not None else 0
        return None

    def split(self, value: ir.Value, sizes: list[int], axis: int) -> ir.Node:
        """``Split(value)`` into ``sizes`` along ``axis``: sizes as an int64
        input from opset 13, as the ``split`` attribute before (ONNX spec)."""
        attrs = [ir.Attr("axis", ir.AttributeType.INT, axis)]
        inputs = [value]
        if self.opset >= 13:
            inputs.append(self.initializer(np.asarray(sizes, dtype=np.int64), "split_sizes"))
        else:
            attrs.append(ir.Attr("split", ir.AttributeType.INTS, sizes))
        return ir.Node("", "Split", inputs, attrs, num_outputs=len(sizes))


def _like(value: ir.Value, branch_out: ir.Value, total: int) -> None:
    """Give ``value`` the branch output's dtype and shape, last dim ``total``."""
    value.type = branch_out.type
    if branch_out.shape is not None and len(branch_out.shape) > 0:
        value.shape = ir.Shape([*list(branch_out.shape)[:-1], total])


@register_pass("merge-sibling-matmuls")
class MergeSiblingMatMuls(Pass):
    """Merge MatMuls sharing one input and K-row constant weights into one MatMul and a Split.

    For ``k >= 2`` nodes ``Y_i = MatMul(A, W_i)`` reading the same value A
    (``[..., K]``) with ``W_i`` constant 2-D ``[K, N_i]`` of one dtype::

        W = Concat(W_1, ..., W_k, axis=1)              # [K, N_1 + ... + N_k], a new initializer
        Y_1, ..., Y_k = Split(MatMul(A, W), [N_1, ..., N_k], axis=-1)

    When every ``Y_i`` is read only by an ``Add`` of a constant row vector
    ``b_i`` (``[N_i]``, ``[1, .., N_i]`` or size 1, of W's dtype), the Adds
    merge too: ``Split(Add(MatMul(A, W), Concat(b_i)))``; when only some
    are, the Adds stay after the Split. k nodes (2k with biases) become 2
    (3). ``Gemm(A, W_i[, C_i])`` siblings with equal ``alpha``, ``beta`` and
    ``transA`` merge the same way into one Gemm: W stacked on its rows when
    every ``transB`` is 1, else transposed to ``[K, N_i]`` and ``transB := 0``;
    the C rows are concatenated (zeros for a Gemm without C).

    The Split sizes are an int64 initializer input from opset 13, the
    ``split`` attribute before; ``axis`` is -1, or the last axis from the
    rank of A before opset 11 (opsets before 7, whose Add broadcasts only
    with a legacy attribute, are left alone). New values get the old dtypes and shapes, so
    inferred shapes stay valid. Weights, biases and Cs are concatenated
    exactly (no arithmetic), so each output column is the same dot product;
    outputs move by float rounding only where the matrix-multiply kernel
    blocks a wider matrix differently (within 1e-5 relative).

    Kept (counted as ``kept``, reason logged at DEBUG): a weight that is not
    a 2-D constant (an initializer that is also a graph input is not
    constant), or that another node reads or is a graph output (the merged
    copy would duplicate it; a weight read only by its MatMul becomes dead
    and dce removes it, so the model's size does not change); siblings with
    another K, dtype, op or Gemm attributes; a lone MatMul; a Gemm C that is
    not a row vector; A constant (fold-constants folds it); an unknown rank
    before opset 11; every group of the run when together they would
    concatenate more than ``max-bytes`` of weights (default 256 MiB: the
    concatenations are in-memory copies, while a large model's weights are
    memory-mapped and cost no memory until saved - merging all Q/K/V and
    gate/up weights of a 600M-parameter LLaMA would add 2.6 GB of peak
    memory and 7 s). Graph outputs among the ``Y_i`` keep their names
    (``ir.bypass``). Runs in the main graph and subgraphs, not in function
    bodies (no initializers there).

    Prior art: the Q/K/V packing of onnxruntime's transformers optimizer
    (``fusion_attention``: one MatMul by the concatenated Q, K and V
    weights), onnxsim's merged sibling MatMuls, and TVM's
    ``CombineParallelDense`` pass.
    """

    Options = MergeSiblingMatMulsOptions
    requires = frozenset({"topo-sorted"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})  # cleared by the pass when due

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"groups": 0, "merged": 0, "biases": 0, "kept": 0}
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        plans = [(merger, merger.plan()) for merger in (_Merger(g, opset, stats) for g in ir.all_graphs(model))]
        size = sum(b.weight.nbytes for _, groups in plans for group in groups for b in group)
        if size > self.options.max_bytes:
            log.info("merge-sibling-matmuls: merging would hold %.1f MiB of new weights in memory, over "
                     "max-bytes=%d; nothing merged (raise max-bytes to merge)", size / 2**20, self.options.max_bytes)
            stats["kept"] += sum(len(group) for _, groups in plans for group in groups)
            return PassResult(modified=False, stats=stats)
        for merger, groups in plans:
            for group in groups:
                merger.apply(group)
        if any(merger.stale for merger, _ in plans):
            mark_stale(ctx, model)
        return PassResult(modified=stats["groups"] > 0, stats=stats)

"""fold-constants: evaluate nodes whose inputs are all constant."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.passes.folding.evaluate import evaluate_batch
from graphopt.passes.folding.numpy_ops import (
    ANY_DTYPE_OPS, GROWING_OPS, KERNELS, NUMERIC_DTYPES, Unsupported, predict_elements,
)
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["FoldConstants", "FoldConstantsOptions", "SmallFolder", "install_constant"]

log = logging.getLogger(__name__)

MB = 2**20

NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Bernoulli", "Multinomial", "Dropout"})
"""Never folded: their value differs from run to run (Dropout: in training mode)."""

NOT_FOLDED = NON_DETERMINISTIC | {"Identity", "Constant", "If", "Loop", "Scan", "SequenceMap", "DequantizeLinear"}
"""Identity of a constant is an alias, not a new tensor (eliminate-identity
removes it without copying a weight); control flow is ``inline``'s job;
DequantizeLinear of a quantized weight is the QDQ form runtimes fuse into
integer kernels (folding it would store the float weight again; onnxruntime's
constant folding skips it too)."""


@dataclass(frozen=True)
class FoldConstantsOptions:
    """Options of ``fold-constants``."""

    max_output_mb: float = field(default=64.0, metadata={"doc": (
        "skip a fold whose output is larger than this many MiB AND larger than its inputs "
        "(ConstantOfShape/Expand/Tile/Range blow-ups); folds that do not grow data are not capped")})
    max_growth: float = field(default=1.0, metadata={"doc": (
        "skip a fold whose output is more than this many times the bytes of its constant inputs (stat "
        "skipped_growth): stored weights are not inflated, e.g. int8 weights dequantized by Cast -> Mul stay int8; "
        "'inf' folds whatever the growth (within max-output-mb)")})
    small_elements: int = field(default=64, metadata={"doc": (
        "outputs of at most this many elements (shape tensors, scalars, small masks) fold whatever their growth")})
    constant_nodes: bool = field(default=True, metadata={"doc": "turn Constant nodes into initializers"})
    onnxruntime: bool = field(default=True, metadata={"doc": (
        "evaluate ops without a numpy kernel in one onnxruntime session per graph "
        "(onnx.reference as fallback); off: numpy kernels only")})


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def _nbytes(tensor: ir.TensorProtocol) -> int:
    try:
        return int(tensor.nbytes)
    except Exception:  # noqa: BLE001 - string tensors have no fixed itemsize
        return int(np.prod(tensor.shape.numpy())) * 8


def _owned_bytes(node: ir.Node) -> float:
    """The bytes of ``node``'s constant inputs that are its own share: each
    distinct constant counts its size divided by the number of nodes reading
    it (a graph output counts as one more reader). A constant read by this
    node alone is freed when the node is folded; one read by k nodes is freed
    only when all k are folded, so each fold is charged 1/k of it (a tied
    embedding table read by a Gather and a Transpose owns half of itself to
    each, so folding the Transpose, a second copy, doubles the table)."""
    total, seen = 0.0, set()
    for value in node.inputs:
        if value is None or id(value) in seen:
            continue
        seen.add(id(value))
        tensor = ir.const_tensor(value)
        if tensor is None:
            continue
        readers = len({id(use.node) for use in value.uses()}) + (1 if value.is_graph_output() else 0)
        total += _nbytes(tensor) / max(readers, 1)
    return total


def _used(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def _has_ref_or_graph_attr(node: ir.Node) -> bool:
    attrs = node.attributes.data  # the plain dict behind the UserDict: no mapping-protocol overhead
    if not attrs:
        return False
    for attr in attrs.values():
        if attr.is_ref() or attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return True
    return False


def _constant_node_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """``ir.constant_node_tensor`` with the common ``value`` attribute read
    directly: ``Attr.as_tensor`` checks a runtime-checkable Protocol with
    ``isinstance``, which costs tens of microseconds per call."""
    attr = node.attributes.data.get("value")
    if attr is not None and attr.type == ir.AttributeType.TENSOR and not attr.is_ref():
        return attr.value
    return ir.constant_node_tensor(node)


_SMALL_CONSTANT = 4096
"""Constant nodes up to this many bytes are merged with an equal one (see ``_Folder._constant_node``)."""


def _small_key(tensor: ir.TensorProtocol) -> tuple | None:
    """(dtype, shape, bytes) of an in-memory numeric tensor of at most
    ``_SMALL_CONSTANT`` bytes, else None."""
    if type(tensor) not in (ir.ProtoTensor, ir.Tensor) or tensor.dtype == ir.DataType.STRING:
        return None
    try:
        if tensor.nbytes > _SMALL_CONSTANT:
            return None
        return tensor.dtype, tuple(tensor.shape.numpy()), tensor.tobytes()
    except (TypeError, ValueError):
        return None


def install_constant(container: ir.Graph | ir.Function, node: ir.Node, output: ir.Value,
                     tensor: ir.TensorProtocol, as_initializer: bool) -> ir.Value:
    """Replace every use of ``output`` (produced by ``node``) by a constant
    holding ``tensor`` and return the new value, which takes ``output``'s name.

    In a graph the constant is an initializer; in a function body, or where
    ``as_initializer`` is False, it is a ``Constant`` node inserted before
    ``node``. A graph output keeps its declared type and shape (symbolic dims
    included), so the signature does not change. ``node`` is not removed.
    """
    name = output.name
    graph_output = output.is_graph_output()
    dtype = tensor.dtype
    shape = output.shape if graph_output and output.shape is not None else ir.Shape(tensor.shape)
    if as_initializer and isinstance(container, ir.Graph):
        base = name or f"{node.op_type.lower()}_folded"
        unique, i = base, 1
        while unique in container.initializers:
            unique, i = f"{base}_{i}", i + 1
        output.name = None
        tensor.name = unique
        new = ir.Value(name=unique, shape=shape, type=ir.TensorType(dtype), const_value=tensor)
        container.register_initializer(new)
    else:
        output.name = None
        const = ir.Node("", "Constant", [], attributes=[ir.Attr("value", ir.AttributeType.TENSOR, tensor)],
                        num_outputs=1)
        new = const.outputs[0]
        new.name, new.shape, new.type = name, shape, ir.TensorType(dtype)
        container.insert_before(node, const)
    output.replace_all_uses_with(new, replace_graph_outputs=True)
    return new


class _Folder:
    """Folds one graph or function body, nodes in topological order."""

    def __init__(self, model: ir.Model, container: ir.Graph | ir.Function, options: FoldConstantsOptions,
                 stats: dict[str, int], in_function: bool) -> None:
        self.model, self.container, self.options, self.stats = model, container, options, stats
        self.in_function = in_function  # a function body or a subgraph inside one: no initializers
        self.opset = _opset(model)
        self.cap = int(options.max_output_mb * MB)
        self.is_main = container is model.graph
        self.pending: set[ir.Value] = set()    # outputs of nodes waiting for the batch
        self.constants: dict[tuple, ir.Value] = {}  # _small_key -> initializer made from a Constant node
        self.batch: list[ir.Node] = []
        self.batch_input_bytes = 0

    # -- decisions ------------------------------------------------------------------------------
    def _too_big(self, out_bytes: int, in_bytes: int) -> bool:
        return out_bytes > self.cap and out_bytes > in_bytes

    def _grows(self, node: ir.Node, out_bytes: float, elements: int) -> bool:
        """The size rule: more than ``small_elements`` elements and more than
        ``max_growth`` times the constant input bytes the node owns (see :func:`_owned_bytes`)."""
        if elements <= self.options.small_elements or math.isinf(self.options.max_growth):
            return False
        return out_bytes > self.options.max_growth * _owned_bytes(node)

    def _refused(self, node: ir.Node, out_bytes: float, in_bytes: int, elements: int) -> bool:
        """True (and counted) when the cap or the growth rule refuses a fold."""
        if self._too_big(out_bytes, in_bytes):
            self.stats["skipped_size"] += 1
            return True
        if self._grows(node, out_bytes, elements):
            self.stats["skipped_growth"] = self.stats.get("skipped_growth", 0) + 1
            return True
        return False

    def _static_elements(self, node: ir.Node) -> int | None:
        """Elements of the node's largest output from the declared static shapes, or None."""
        largest = 0
        for out in node.outputs:
            if out.shape is None or not out.shape.is_static():
                return None
            largest = max(largest, math.prod(int(d) for d in out.shape))
        return largest

    def _static_bytes(self, node: ir.Node) -> int | None:
        """Total bytes of the node's outputs from their declared static shapes, or None."""
        total = 0
        for out in node.outputs:
            if out.shape is None or out.dtype is None or not out.shape.is_static():
                return None
            total += math.prod(int(d) for d in out.shape) * max(out.dtype.itemsize, 1)
        return total

    def _as_initializer(self, output: ir.Value) -> bool:
        # An initializer that is a subgraph's output is legal ONNX but poorly
        # supported by runtimes; such outputs stay Constant nodes.
        return not self.in_function and (self.is_main or not output.is_graph_output())

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> None:
        for node in list(self.container):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Constant":
                self._constant_node(node)
                continue
            if node.op_type in NOT_FOLDED or _has_ref_or_graph_attr(node):
                continue
            if not any(_used(out) for out in node.outputs):
                continue  # dead: dce removes it without reading its inputs
            tensors, waits = [], False
            for value in node.inputs:
                if value is None:
                    tensors.append(None)
                elif value in self.pending:
                    tensors.append(None)
                    waits = True
                else:
                    tensor = ir.const_tensor(value)
                    if tensor is None:
                        break
                    tensors.append(tensor)
            else:
                self._fold(node, tensors, waits)
        self._flush()

    def _constant_node(self, node: ir.Node) -> None:
        out = node.outputs[0]
        if not self.options.constant_nodes or self.in_function or _has_ref_or_graph_attr(node):
            return
        if not self._as_initializer(out):
            return
        tensor = _constant_node_tensor(node)
        if tensor is None or not _used(out):
            return
        tensor = ir.cached_tensor(tensor)
        # TorchScript exports write one Constant per use: equal small ones
        # become one initializer here (what cse would merge them into later,
        # the first in node order), rather than one each.
        key = _small_key(tensor) if not out.is_graph_output() else None
        twin = self.constants.get(key) if key is not None else None
        if twin is not None:
            out.replace_all_uses_with(twin)
        else:
            new = install_constant(self.container, node, out, tensor, as_initializer=True)
            if key is not None:
                self.constants[key] = new
        self.container.remove(node, safe=True)
        self.stats["constant_nodes"] += 1

    def _fold(self, node: ir.Node, tensors: list, waits: bool) -> None:
        in_bytes = sum(_nbytes(t) for t in tensors if t is not None)
        kernel = KERNELS.get(node.op_type)
        dtypes_ok = all(t is None or t.dtype.numpy() in NUMERIC_DTYPES for t in tensors) if kernel else False
        if not waits and kernel is not None and (dtypes_ok or node.op_type in ANY_DTYPE_OPS):
            try:
                if self._numpy(node, tensors, in_bytes):
                    return
            except Unsupported as e:
                log.debug("fold-constants: numpy kernel of %s declined: %s", node.op_type, e)
        self._defer(node, tensors, in_bytes)

    def _numpy(self, node: ir.Node, tensors: list, in_bytes: int) -> bool:
        """Fold with a numpy kernel; False when declined for size or dtype."""
        attrs = {k: a.value for k, a in node.attributes.items() if not a.is_ref()}
        elements = predict_elements(node.op_type, tensors, attrs)
        if elements is None and node.op_type == "Cast" and tensors and tensors[0] is not None:
            elements = math.prod(int(d) for d in tensors[0].shape.numpy())
        if elements is not None:
            itemsize = max((t.dtype.itemsize for t in tensors if t is not None), default=8)
            if node.op_type == "ConstantOfShape":
                value = node.attributes.get("value")
                itemsize = value.as_tensor().dtype.itemsize if value is not None else 4
            elif node.op_type == "Cast" and "to" in attrs and attrs["to"] != ir.DataType.STRING:
                itemsize = ir.DataType(attrs["to"]).itemsize  # int8 -> float32: four times the bytes
            if self._refused(node, elements * max(itemsize, 1), in_bytes, elements):
                return True  # refused: do not evaluate it elsewhere either
        arrays = [None if t is None else t.numpy() for t in tensors]
        with np.errstate(all="ignore"):
            results = KERNELS[node.op_type](node, arrays, self.opset)
        self._install(node, dict(zip(node.outputs, results)), in_bytes)
        return True

    def _defer(self, node: ir.Node, tensors: list, in_bytes: int) -> None:
        """Queue the node for the batched onnxruntime evaluation."""
        if not self.options.onnxruntime:
            return
        static = self._static_bytes(node)
        if static is None and node.op_type in GROWING_OPS:
            return  # could be arbitrarily large and its size is unknown
        if static is not None and self._refused(node, static, in_bytes, self._static_elements(node) or 0):
            return
        if self.batch_input_bytes + in_bytes > 16 * self.cap:
            return  # keep the evaluation model (and memory) bounded
        self.batch_input_bytes += in_bytes
        self.batch.append(node)
        self.pending.update(node.outputs)

    def _flush(self) -> None:
        if not self.batch:
            return
        wanted = [v for n in self.batch for v in n.outputs if _used(v)]
        results = evaluate_batch(self.batch, wanted, dict(self.model.opset_imports), self.model.ir_version)
        self.stats["batched"] += len(self.batch)
        for node in self.batch:
            in_bytes = sum(_nbytes(t) for v in node.inputs if v is not None
                           for t in [ir.const_tensor(v)] if t is not None)
            self._install(node, {v: results.get(v) for v in node.outputs if _used(v)}, in_bytes)
        self.batch, self.pending = [], set()

    def _install(self, node: ir.Node, results: dict[ir.Value, np.ndarray | None],
                 in_bytes: int) -> list[ir.Value] | None:
        """Replace the node's used outputs by their folded values and remove
        it; the new constant values, or None when it is kept."""
        used = [v for v in node.outputs if _used(v)]
        for value in used:
            array = results.get(value)
            if isinstance(array, np.generic):  # numpy ufuncs give a scalar for a 0-d input (Not of a bool[])
                array = results[value] = np.asarray(array)
            if array is None or not isinstance(array, np.ndarray) or array.dtype.kind in "OUS":
                return None
            if value.dtype is not None and ir.DataType.from_numpy(array.dtype) != value.dtype:
                log.debug("fold-constants: %s gave %s, graph says %s; not folded", node.op_type, array.dtype, value.dtype)
                self.stats["skipped_dtype"] += 1
                return None
            if self._refused(node, array.nbytes, in_bytes, array.size):
                return None
            if value.is_graph_output() and value.shape is not None and (
                    len(value.shape) != array.ndim or any(isinstance(d, int) and d != s
                                                          for d, s in zip(value.shape, array.shape))):
                return None  # the declared output shape disagrees: keep the node
        new = [install_constant(self.container, node, value, ir.Tensor(np.ascontiguousarray(results[value])),
                                as_initializer=self._as_initializer(value)) for value in used]
        if all(not _used(v) for v in node.outputs):
            self.container.remove(node, safe=True)
        self.stats["folded"] += 1
        return new


class SmallFolder:
    """Folds single nodes with small constant outputs, for a pass whose own
    folds make new constants in the middle of its walk (``fold-shapes``: the
    exporters' ``ConstantOfShape(Shape(x)) -> Mul -> Equal -> Where`` guard
    reads a shape value it folds). The node is evaluated by its numpy kernel
    (``passes/folding/numpy_ops.py``, the same as ``fold-constants``) when
    every input is a constant and its output has at most ``max_elements``
    elements (predicted before evaluation); no onnxruntime session, no size
    cap beyond that. Nodes ``fold-constants`` never folds are not folded.

    Args:
        model: the model (its default-domain opset picks the kernels' semantics).
        container: the graph whose nodes are folded (results become initializers
            in the main graph, ``Constant`` nodes where an initializer cannot be).
        max_elements: the largest output folded.
    """

    def __init__(self, model: ir.Model, container: ir.Graph, max_elements: int = 64) -> None:
        self.stats = {"folded": 0, "constant_nodes": 0, "batched": 0, "skipped_size": 0, "skipped_growth": 0,
                      "skipped_dtype": 0}
        self._folder = _Folder(model, container, FoldConstantsOptions(onnxruntime=False), self.stats, False)
        self._max = max_elements

    def fold(self, node: ir.Node) -> list[ir.Value] | None:
        """Fold ``node`` when it qualifies; the constants that replaced its
        outputs (the node is removed), else None (nothing changed).

        Raises nothing: a kernel that declines (``Unsupported``) or fails on
        inconsistent inputs leaves the node as it is.
        """
        kernel = KERNELS.get(node.op_type)
        if kernel is None or node.op_type in NOT_FOLDED or node.domain not in ("", "ai.onnx"):
            return None
        if _has_ref_or_graph_attr(node) or not any(_used(v) for v in node.outputs):
            return None
        tensors = []
        for value in node.inputs:
            tensor = None if value is None else ir.const_tensor(value)
            if value is not None and tensor is None:
                return None
            tensors.append(tensor)
        if not (all(t is None or t.dtype.numpy() in NUMERIC_DTYPES for t in tensors)
                or node.op_type in ANY_DTYPE_OPS):
            return None
        attrs = {k: a.value for k, a in node.attributes.items() if not a.is_ref()}
        try:
            elements = predict_elements(node.op_type, tensors, attrs)
            if elements is None or elements > self._max:
                return None
            arrays = [None if t is None else t.numpy() for t in tensors]
            with np.errstate(all="ignore"):
                results = kernel(node, arrays, self._folder.opset)
        except (Unsupported, ValueError, TypeError, IndexError):
            return None
        in_bytes = sum(_nbytes(t) for t in tensors if t is not None)
        return self._folder._install(node, dict(zip(node.outputs, results)), in_bytes)  # noqa: SLF001 - same module


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Evaluate every node whose inputs are all constant and store the result as an initializer.

    Walks each graph in topological order - the main graph, then If/Loop/Scan
    bodies (where outer-scope constants count as constants), then function
    bodies (results become ``Constant`` nodes: functions have no
    initializers). Common ops run as numpy kernels that follow the ONNX spec
    per opset (see ``passes/folding/numpy_ops.py``); the rest of a graph's
    foldable nodes are evaluated together in one onnxruntime session
    (``onnx.reference`` as fallback; see ``passes/folding/evaluate.py``).
    ``Constant`` nodes become initializers (in subgraphs too, except one that is
    the subgraph's output); equal ones of at most 4 KiB (dtype, shape and
    bytes) become one, the first in node order, unless they are graph
    outputs (``cse`` would merge them later; TorchScript exports write one
    Constant per use).

    Never folded: non-deterministic ops (Random*, Bernoulli, Multinomial,
    Dropout), non-default domains, nodes with subgraph attributes (If with a
    constant condition is ``inline``'s job), nodes referencing function
    attributes, Identity (an alias: ``eliminate-identity`` removes it without
    copying a weight), and dead nodes (``dce`` removes them without reading
    their inputs). Weights are read lazily: only when a node that reads them
    is folded (a Transpose of a weight is folded, as onnxsim and onnxslim do:
    it removes a node at run time and does not grow the data).

    Size cap: a fold whose output exceeds ``max-output-mb`` (default 64 MiB)
    and is larger than its inputs is skipped, checked before anything is
    allocated where the size is computable (ConstantOfShape, Expand, Tile,
    Range, broadcasting elementwise ops, MatMul, Gather; other growing ops only
    with a static output shape). Folds that do not grow data (Transpose,
    Reshape, Slice, Cast to a narrower type) are not capped. 64 MiB holds any
    shape tensor and a causal mask for 4096 positions, yet a model of a few
    thousand such folds could not pass the 2 GB protobuf limit unnoticed in a
    single step.

    Growth rule (stored weights are never inflated): a fold whose output has
    more than ``small-elements`` (default 64) elements and more than
    ``max-growth`` (default 1.0) times the bytes of the constant inputs it owns
    is skipped and counted as ``skipped_growth``. A node owns a constant read
    by k nodes for 1/k of its bytes (a graph output counts as a reader): a
    constant read by this node alone disappears with the fold; one read by
    others stays stored. So ``Cast(int8 weight -> float)`` (four times the
    bytes: a weight stored int8 and dequantized in the graph by Cast -> Mul by
    scale) stays as it is, as does a ``Transpose`` of a tied embedding table
    that a Gather also reads (a second copy), and ``ConstantOfShape`` /
    ``Expand`` / ``Range`` weights built from a few shape bytes stay unfolded
    (their outputs are thousands of times their inputs); onnxruntime folds
    them in memory when it loads the model, so nothing runs slower, and the
    file keeps its size. Shape tensors, scalars and small masks (at most
    ``small-elements`` elements) fold whatever their growth.
    ``fold-constants{max-growth=inf}`` (or any factor) allows growing folds.
    The other folders keep to the rule: ``fold-shapes`` (``SmallFolder``)
    folds outputs of at most 64 elements; ``fold-batchnorm``, ``fold-bias``
    and ``merge-sibling-matmuls`` rewrite weights that are already constants,
    in their own dtype, into tensors of the same size (a merged weight is the
    concatenation of weights that nothing else reads; ``fold-batchnorm``
    keeps a BatchNormalization whose producer's weight of more than 64
    elements is read by other nodes too, rather than store a scaled copy).

    A folded value keeps its name; a folded graph output keeps its declared
    type and shape. Results are checked against the graph's declared dtype (a
    mismatch is not folded). Prior art: onnxsim, onnxslim and Polygraphy
    (fold-constants via onnxruntime), onnxscript's optimizer (per-op folding
    with size limits).
    """

    Options = FoldConstantsOptions
    requires = frozenset({"topo-sorted"})
    preserves = frozenset({"topo-sorted", "shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"folded": 0, "constant_nodes": 0, "batched": 0, "skipped_size": 0, "skipped_growth": 0,
                 "skipped_dtype": 0}
        in_functions = {id(g) for f in model.functions.values() for g in [f, *ir.subgraphs(f)]}
        for container in ir.graphs_and_functions(model):
            _Folder(model, container, self.options, stats, id(container) in in_functions).run()
        return PassResult(modified=stats["folded"] + stats["constant_nodes"] > 0, stats=stats)

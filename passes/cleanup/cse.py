"""cse: common-subexpression elimination of nodes and duplicate initializers."""

from __future__ import annotations

import hashlib
import logging
import struct
from collections import ChainMap, defaultdict
from collections.abc import Hashable, Iterator, MutableMapping
from dataclasses import dataclass, field

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, mark_stale, same_shape
from graphopt.passes.cleanup.unify_dims import DimEqualities
from graphopt.passmanager import Pass, PassResult, register_pass

_LOG = logging.getLogger(__name__)

NON_DETERMINISTIC = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Bernoulli", "Multinomial", "Dropout",
})
"""Default-domain ops whose outputs may differ between two identical nodes
(Dropout: in training mode; inference Dropout is removed by ``eliminate-dropout``)."""

_CHUNK = 16 * 2**20
"""Bytes read at a time when hashing or comparing weights (stream, never whole)."""
_PREFIX = 64 * 2**10
"""Bytes hashed first: weights of equal shape almost always differ here, so most
are never read past their first 64 KiB."""
_INLINE_BYTES = 256
"""Tensor attributes up to this size are keyed by their bytes, larger by SHA-256."""
_SMALL = 4096
"""Initializers up to this size keep their bytes between runs (compared directly)."""

Table = MutableMapping[Hashable, ir.Node]


@dataclass(frozen=True)
class CseOptions:
    """Options of ``cse``."""

    initializers: bool = field(default=True, metadata={"doc": "merge initializers with equal dtype, shape and bytes"})
    nodes: bool = field(default=True, metadata={"doc": "merge nodes with equal op, attributes and inputs"})


# --------------------------------------------------------------------------- tensors


def _chunks(tensor: ir.TensorProtocol, limit: int | None = None) -> Iterator[bytes | memoryview]:
    """The bytes of a tensor (ONNX little-endian raw layout) in chunks, at most
    ``limit`` bytes. External data is read from its file, so the weight is never
    memory-mapped or held whole; other tensors yield their buffer."""
    if ir.ExternalTensor in type(tensor).__mro__:  # isinstance() through typing's Protocol meta is slow
        left = tensor.length if tensor.length is not None else tensor.nbytes
        if limit is not None:
            left = min(left, limit)
        with open(tensor.path, "rb") as f:
            f.seek(tensor.offset or 0)
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        return
    if tensor.dtype == ir.DataType.STRING:
        data = b"\x00".join(len(s).to_bytes(8, "little") + bytes(s) for s in tensor.string_data())
    else:
        data = tensor.tobytes()
    view = memoryview(data)
    yield view if limit is None else view[:limit]


def _digest(tensor: ir.TensorProtocol, limit: int | None = None) -> bytes:
    sha = hashlib.sha256()
    for chunk in _chunks(tensor, limit):
        sha.update(chunk)
    return sha.digest()


def _same_bytes(a: ir.TensorProtocol, b: ir.TensorProtocol) -> bool:
    """Byte-for-byte equality, streamed chunk by chunk."""
    left, right = _chunks(a), _chunks(b)
    buf_a = buf_b = b""
    while True:
        if not buf_a:
            buf_a = bytes(next(left, b""))
        if not buf_b:
            buf_b = bytes(next(right, b""))
        if not buf_a or not buf_b:
            return not buf_a and not buf_b
        n = min(len(buf_a), len(buf_b))
        if buf_a[:n] != buf_b[:n]:
            return False
        buf_a, buf_b = buf_a[n:], buf_b[n:]


def _shape_key(tensor: ir.TensorProtocol) -> tuple:
    return tuple(tensor.shape.numpy()) if tensor.shape is not None else ()


def _tensor_key(tensor: ir.TensorProtocol) -> tuple:
    """A hashable identity of a small in-memory tensor (attribute of a node)."""
    head = (tensor.dtype, _shape_key(tensor))
    if tensor.nbytes <= _INLINE_BYTES:
        return (*head, b"".join(bytes(c) for c in _chunks(tensor)))
    return (*head, _digest(tensor))


# ---------------------------------------------------------------------- initializers


_CACHE_KEY = "graphopt.cse.tensors"
"""``model.meta`` key of the per-tensor facts kept between runs (see :func:`_tensor_facts`)."""


def _tensor_facts(model: ir.Model) -> tuple[dict, dict]:
    """(facts kept from the last run, facts of this run): tensor id ->
    ``[tensor, (dtype, shape, nbytes), {stage: digest} | None, bytes | None]``
    (digests once the tensor met a same-shaped one; the bytes of a tensor of
    at most ``_SMALL`` bytes, compared directly). Tensors are immutable, so a
    fixpoint's repeated cse reads and hashes each weight once; an entry holds
    its tensor, so its id cannot be reused, and only the tensors the last run
    saw are kept."""
    old = model.meta.get(_CACHE_KEY)
    return (old if isinstance(old, dict) else {}), {}


def _dedupe_initializers(graph: ir.Graph, old: dict | None = None, new: dict | None = None) -> int:
    """Merge equal initializers of one graph; return how many were removed.

    Initializers of at most ``_SMALL`` bytes held in memory are keyed by
    (dtype, shape, bytes). Others are grouped by (dtype, shape); a weight alone in its
    group is never read. Inside a group: SHA-256 of the first 64 KiB, then
    of all bytes, then a byte comparison. The first of equal initializers (in
    graph order) stays. Initializers that are graph inputs (overridable) or
    graph outputs stay. ``old``/``new``: see :func:`_tensor_facts`.
    """
    old = {} if old is None else old
    new = {} if new is None else new
    groups: dict[tuple, list[ir.Value]] = defaultdict(list)
    facts: dict[ir.Value, list] = {}
    small: dict[tuple, ir.Value] = {}  # (dtype, shape, nbytes, bytes) -> the first such initializer
    removed = 0
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is None or value.is_graph_input():
            continue
        key = id(tensor)
        entry = old.get(key)
        if entry is None or entry[0] is not tensor:
            entry = [tensor, (tensor.dtype, _shape_key(tensor), tensor.nbytes), None, None]
        new[key] = entry
        if entry[1][2] <= _SMALL and ir.ExternalTensor not in type(tensor).__mro__:
            # small and in memory: compared by their bytes directly, no hashing
            if entry[3] is None:
                entry[3] = b"".join(bytes(c) for c in _chunks(tensor))
            twin = small.setdefault((entry[1], entry[3]), value)
            if twin is not value and not value.is_graph_output():
                value.replace_all_uses_with(twin)
                del graph.initializers[value.name]
                removed += 1
            continue
        facts[value] = entry
        groups[entry[1]].append(value)
    for members in groups.values():
        if len(members) < 2:
            continue
        for value in members:
            entry = facts[value]
            if entry[2] is None:
                entry[2] = {}
                if entry[1][2] <= _SMALL:  # within the prefix: one hash serves both stages
                    entry[3] = b"".join(bytes(c) for c in _chunks(entry[0]))
                    entry[2][_PREFIX] = entry[2][None] = hashlib.sha256(entry[3]).digest()
        for stage in (_PREFIX, None):
            buckets: dict[bytes, list[ir.Value]] = defaultdict(list)
            for value in members:
                digests = facts[value][2]
                digest = digests.get(stage)
                if digest is None:
                    digest = digests[stage] = _digest(value.const_value, stage)
                buckets[digest].append(value)
            members = [v for bucket in buckets.values() if len(bucket) > 1 for v in bucket]
            if not members:
                break
        for bucket in buckets.values() if members else ():
            survivors: list[ir.Value] = []
            for value in bucket:
                data = facts[value][3]
                twin = next((s for s in survivors if (data == facts[s][3] if data is not None
                                                       else _same_bytes(s.const_value, value.const_value))), None)
                if twin is None or value.is_graph_output():
                    survivors.append(value)
                    continue
                value.replace_all_uses_with(twin)
                del graph.initializers[value.name]
                removed += 1
    return removed


# ----------------------------------------------------------------------------- nodes


_GRAPH_KINDS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _has_subgraph(node: ir.Node) -> bool:
    attrs = node.attributes.data  # the dict behind the UserDict: no mapping-protocol overhead
    return bool(attrs) and any(a.type in _GRAPH_KINDS and not a.is_ref() for a in attrs.values())


def _attr_key(attr: ir.Attr) -> Hashable:
    """A hashable, exact identity of an attribute (floats by their bits, so
    0.0 and -0.0 differ and NaN equals NaN)."""
    if attr.is_ref():
        return ("@", attr.ref_attr_name, attr.type)
    kind, value = attr.type, attr.value
    if kind == ir.AttributeType.FLOAT:
        return (kind, struct.pack("<f", value))
    if kind == ir.AttributeType.FLOATS:
        return (kind, struct.pack(f"<{len(value)}f", *value))
    if kind in (ir.AttributeType.INTS, ir.AttributeType.STRINGS):
        return (kind, tuple(value))
    if kind == ir.AttributeType.TENSOR:
        return (kind, _tensor_key(value))
    if kind == ir.AttributeType.TENSORS:
        return (kind, tuple(_tensor_key(t) for t in value))
    if kind in (ir.AttributeType.INT, ir.AttributeType.STRING):
        return (kind, value)
    return (kind, str(value))  # TYPE_PROTO(S), SPARSE_TENSOR(S): their text


def _node_key(node: ir.Node) -> Hashable:
    """(domain, op, overload, #outputs, attributes, input values). A Constant is
    keyed by the tensor it makes, whichever attribute holds it."""
    op = (node.domain, node.op_type, node.overload, len(node.outputs))
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        tensor = ir.constant_node_tensor(node)
        if tensor is not None:
            return (*op, "tensor", _tensor_key(tensor))
    attrs = node.attributes.data
    keys = tuple(sorted((name, _attr_key(a)) for name, a in attrs.items())) if attrs else ()
    return (*op, keys, tuple(node.inputs))


def _tensor_attrs(node: ir.Node) -> list[ir.TensorProtocol]:
    if node.op_type == "Constant" and (tensor := ir.constant_node_tensor(node)) is not None:
        return [tensor]
    out: list[ir.TensorProtocol] = []
    for attr in node.attributes.values():
        if attr.is_ref():
            continue
        if attr.type == ir.AttributeType.TENSOR:
            out.append(attr.value)
        elif attr.type == ir.AttributeType.TENSORS:
            out.extend(attr.value)
    return out


def _confirmed(node: ir.Node, twin: ir.Node) -> bool:
    """Byte-compare tensor attributes keyed by digest (guards a hash collision)."""
    return all(a.nbytes <= _INLINE_BYTES or _same_bytes(a, b)
               for a, b in zip(_tensor_attrs(node), _tensor_attrs(twin)))


def _merge(node: ir.Node, twin: ir.Node, equal: DimEqualities) -> tuple[bool, bool]:
    """Rewire the readers of ``node``'s outputs to ``twin``'s (an equal node
    earlier in topological order). A graph output keeps its name: when only
    ``node``'s output is one, the twin's value takes its place (``ir.bypass``);
    when both are, ``node`` stays for that output. Returns (removable:
    ``node`` has no reader left, neutral: the readers see to shape inference
    what they saw, the dims each pair of outputs proves equal recorded in
    ``equal``; the contents of shape values are the same, computed by equal
    nodes from the same inputs)."""
    removable = neutral = True
    for out, source in zip(node.outputs, twin.outputs):
        neutral = equal.equate(out, source) and same_shape(out, source, equal.find, carried=True) and neutral
        if not out.is_graph_output():
            out.replace_all_uses_with(source)
        elif not ir.bypass(node, out, source):
            for user, index in list(out.uses()):  # other readers; the graph output stays
                user.replace_input_with(index, source)
            removable = False
    return removable, neutral


def _non_deterministic_functions(model: ir.Model) -> set[tuple[str, str, str]]:
    """Model-local functions that (transitively) call a non-deterministic op."""
    result: set[tuple[str, str, str]] = set()
    changed = True
    while changed:
        changed = False
        for key, func in model.functions.items():
            if key not in result and any(_non_deterministic(n, result) for n in ir.all_nodes(func)):
                result.add(key)
                changed = True
    return result


def _non_deterministic(node: ir.Node, functions: set[tuple[str, str, str]]) -> bool:
    if node.domain in ("", "ai.onnx") and node.op_type in NON_DETERMINISTIC:
        return True
    return (node.domain, node.op_type, node.overload) in functions


class _NodeCse:
    """Value numbering over one model: one table per scope, chained so a
    subgraph node may reuse an equal node of an enclosing graph that precedes
    the subgraph's owner."""

    def __init__(self, random_functions: set[tuple[str, str, str]]) -> None:
        self.random_functions = random_functions
        self.removed = 0
        self.stale = False  # a merge a new shape inference may tell more from (SHAPES_CURRENT)
        self.equal = DimEqualities()

    def run(self, container: ir.Graph | ir.Function, table: Table) -> None:
        for node in list(container):
            if _has_subgraph(node):
                for attr in node.attributes.values():
                    if attr.is_ref():
                        continue
                    if attr.type == ir.AttributeType.GRAPH:
                        graphs = [attr.value]
                    elif attr.type == ir.AttributeType.GRAPHS:
                        graphs = list(attr.value or ())
                    else:  # Scan's num_scan_inputs, Loop/If have none: not bodies
                        continue
                    for sub in graphs:
                        if isinstance(sub, ir.Graph):
                            self.run(sub, ChainMap({}, table))
                continue  # nodes with subgraphs are never merged (see the pass docstring)
            if not node.outputs or _non_deterministic(node, self.random_functions):
                continue
            key = _node_key(node)
            twin = table.get(key)
            if twin is None or not _confirmed(node, twin):
                table.setdefault(key, node)
                continue
            removable, neutral = _merge(node, twin, self.equal)
            self.stale = self.stale or not neutral
            if removable:
                container.remove(node, safe=True)
                self.removed += 1


# ------------------------------------------------------------------------------ pass


@register_pass("cse")
class CommonSubexpressionElimination(Pass):
    """Merge nodes with the same op, attributes and inputs, and initializers with the same dtype, shape and bytes.

    Value numbering (Cocke, "Global common subexpression elimination", 1970)
    over a topological order: a node's key is (domain, op_type, overload,
    number of outputs, attributes, input values); the first node with a key
    survives and later equal nodes are removed, their readers rewired to the
    survivor's outputs. Inputs are compared by identity after rewiring, so
    chains of equal nodes collapse in one pass. Attributes compare exactly
    (floats by their bits); attributes left at their default are not filled
    in, so ``Softmax(x)`` and ``Softmax{axis=-1}(x)`` stay apart. ``Constant``
    nodes are keyed by the tensor they make (``value_float=1.0`` equals a
    float scalar ``value``). Prior art: onnx-ir's
    ``CommonSubexpressionEliminationPass`` and ``DeduplicateInitializersPass``,
    onnxslim's dead-code/CSE step.

    Never merged: non-deterministic ops (RandomNormal, RandomUniform, their
    ``*Like`` forms, Bernoulli, Multinomial, Dropout) and model-local
    functions that call them; nodes with subgraph attributes (If, Loop, Scan):
    their bodies are compared neither by name nor by text, because the
    canonical text of a body does not tell which outer values it captures.
    Their bodies are value-numbered too, in a scope nested in the enclosing
    graph's, so a body node can reuse an equal node computed before the owner.

    Graph outputs keep their names: when the duplicate's output is a graph
    output and the survivor's is not, the survivor's value takes its name
    (``ir.bypass``); when both are graph outputs, both nodes stay (other
    readers are still rewired).

    Duplicate initializers (per graph, subgraphs included): grouped by
    (dtype, shape, nbytes); a weight alone in its group is never read. Within
    a group, SHA-256 of the first 64 KiB, then of all bytes, then a streamed
    byte comparison; external data is read from its file in 16 MiB chunks and
    released, so peak memory stays one chunk per tensor pair, not the model.
    Initializers that are graph inputs (overridable at run time) or graph
    outputs stay. Works on any dtype (strings by their elements) and shape,
    and on function bodies. Exact: outputs are bit-identical.

    Stats: ``nodes`` and ``initializers`` removed.
    """

    Options = CseOptions
    requires = frozenset({"topo-sorted"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"nodes": 0, "initializers": 0}
        if self.options.initializers:
            old, new = _tensor_facts(model)
            for graph in ir.all_graphs(model):
                stats["initializers"] += _dedupe_initializers(graph, old, new)
            model.meta[_CACHE_KEY] = new
        if self.options.nodes:
            cse = _NodeCse(_non_deterministic_functions(model))
            for container in [model.graph, *model.functions.values()]:
                cse.run(container, {})
            stats["nodes"] = cse.removed
            cse.equal.apply(ir.graphs_and_functions(model))
            if cse.stale:
                mark_stale(ctx, model)  # see SHAPES_CURRENT: the merged dims were not equal up to renaming
        _LOG.debug("cse: %s", stats)
        return PassResult(modified=any(stats.values()), stats=stats)

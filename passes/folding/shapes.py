"""fold-shapes: fold shape computations whose dims are static; keep symbolic dims symbolic."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, ShapesCurrent, shapes_current
from graphopt.passes.folding.constants import install_constant
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["FoldShapes", "FoldShapesOptions"]

log = logging.getLogger(__name__)

Dim = int | str | None
"""One element of a shape value: a known int, a symbolic dim's name, or unknown."""


@dataclass(frozen=True)
class SymValue:
    """A small integer tensor (scalar or 1-D) known element by element.

    Attributes:
        dims: the elements: int when known, the dim_param's name when it is a
            symbolic dim of some tensor, None when unknown.
        scalar: True for a rank-0 tensor (then ``len(dims) == 1``).
        boolean: True for a bool tensor (``Equal`` of shape values): the
            elements are then True/False/None.
    """

    dims: tuple[Dim, ...]
    scalar: bool = False
    boolean: bool = False

    @property
    def known(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


@dataclass(frozen=True)
class FoldShapesOptions:
    """Options of ``fold-shapes``."""

    infer: bool = field(default=True, metadata={"doc": (
        "re-run ONNX shape inference (from the declared input shapes) before folding")})
    reshape: bool = field(default=True, metadata={"doc": (
        "give Reshape a constant shape when its unknown entries are the input's own dims (0) "
        "or a single remaining dim (-1)")})


_SMALL = 64
_INT = (np.dtype(np.int64), np.dtype(np.int32))


def _dims_of(value: ir.Value) -> tuple[Dim, ...] | None:
    shape = value.shape
    if shape is None:
        return None
    dims: list[Dim] = []
    for d in shape:
        if isinstance(d, int):
            dims.append(d)
        else:
            name = getattr(d, "value", None)
            dims.append(name if isinstance(name, str) and name else None)
    return tuple(dims)


_MAX_ROUNDS = 4
"""Inference + folding rounds in one run of the pass (see ``FoldShapes.run``)."""

_META_KEY = "graphopt.fold_shapes.inferred"
"""``model.meta`` key: the graph fingerprint at this pass's last inference."""


def _fingerprint(model: ir.Model, graphs: list[ir.Graph]) -> int:
    """A cheap fingerprint of what shape inference reads: the declared input
    shapes, the initializers' tensors and each node with the values it reads
    (by identity). Rewrites (a node removed, an input
    replaced by a new constant) change it; a model that did not change keeps
    it, so inference is not repeated for nothing. Identities of removed
    objects are not reused within a pipeline run: the pass manager turns the
    cyclic collector off and IR nodes live in reference cycles."""
    parts: list[object] = [(id(v), str(v.shape), v.dtype) for v in model.graph.inputs]
    for graph in graphs:
        parts.extend(id(v.const_value) for v in graph.initializers.values())
        for node in graph:
            parts.append(id(node))
            parts.extend(map(id, node.inputs))
    return hash(tuple(parts))


def _infer(model: ir.Model) -> None:
    """ONNX shape inference from the graph inputs' declared shapes only.

    Shapes of intermediate values are cleared first, so a stale ``value_info``
    left by an exporter (a traced batch size written as a static dim) cannot
    freeze a dynamic dim. If inference fails, the old shapes come back.
    """
    saved: dict[ir.Value, ir.Shape] = {}
    for graph in ir.all_graphs(model):
        for node in graph:
            for value in node.outputs:
                if value.shape is not None and not value.is_graph_output():
                    saved[value] = value.shape
                    value.shape = None
    ir.infer_shapes(model)
    if saved and all(v.shape is None for v in saved):
        for value, shape in saved.items():
            value.shape = shape


def _normalize(i: int, n: int) -> int | None:
    i = i + n if i < 0 else i
    return i if 0 <= i < n else None


def _attr(node: ir.Node, name: str, default: object = None) -> object:
    attr = node.attributes.get(name)
    return default if attr is None or attr.is_ref() else attr.value


_VISITED = frozenset({"Shape", "Size", "Identity", "Cast", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
                      "Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Where"})
"""The ops :meth:`_Propagator.visit` gives a value for (every other op: None)."""


class _Propagator:
    """Symbolic values of shape tensors, node by node (one instance per model,
    so subgraphs see the outer graph's values)."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.values: dict[ir.Value, SymValue] = {}

    def get(self, value: ir.Value | None) -> SymValue | None:
        if value is None:
            return None
        if value in self.values:
            return self.values[value]
        tensor = ir.const_tensor(value)
        if tensor is None or tensor.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            return None
        if len(tensor.shape) > 1 or math.prod(tensor.shape.numpy()) > _SMALL:
            return None
        array = tensor.numpy()
        sym = SymValue(tuple(int(x) for x in array.reshape(-1)), array.ndim == 0)
        self.values[value] = sym
        return sym

    def _ints(self, value: ir.Value | None) -> list[int] | None:
        sym = self.get(value)
        return list(sym.dims) if sym is not None and sym.known else None  # type: ignore[arg-type]

    def visit(self, node: ir.Node) -> SymValue | None:  # noqa: C901 - one case per op
        """The symbolic value of the node's first output, or None."""
        op = node.op_type
        if op not in _VISITED or node.domain not in ("", "ai.onnx") or not node.outputs:
            return None
        ins = node.inputs
        if op == "Shape":
            dims = _dims_of(ins[0])
            if dims is None:
                return None
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            return SymValue(dims[slice(start, end)])
        if op == "Size":
            dims = _dims_of(ins[0])
            if dims is None or not all(isinstance(d, int) for d in dims):
                return None
            return SymValue((math.prod(dims),), scalar=True)  # type: ignore[arg-type]
        if op in ("Identity", "Cast"):
            if op == "Cast" and _attr(node, "to") not in (ir.DataType.INT64.value, ir.DataType.INT32.value):
                return None
            sym = self.get(ins[0])
            if op == "Cast" and sym is not None and sym.boolean:  # bool -> int: True/False become 1/0
                return SymValue(tuple(None if d is None else int(d) for d in sym.dims), sym.scalar)
            return sym
        data = self.get(ins[0]) if ins else None
        if data is None:
            return None
        if op == "Gather" and _attr(node, "axis", 0) in (0, -1) and not data.scalar:
            idx = self.get(ins[1])
            if idx is None or not idx.known:
                return None
            picked = [_normalize(int(i), len(data.dims)) for i in idx.dims]  # type: ignore[arg-type]
            if any(p is None for p in picked):
                return None
            return SymValue(tuple(data.dims[p] for p in picked), idx.scalar)  # type: ignore[index]
        if op == "Unsqueeze" and data.scalar:
            axes = _attr(node, "axes") if self.opset < 13 else self._ints(ins[1] if len(ins) > 1 else None)
            return SymValue(data.dims) if axes is not None and list(axes) in ([0], [-1]) else None
        if op == "Squeeze" and not data.scalar and len(data.dims) == 1:
            return SymValue(data.dims, scalar=True)
        if op == "Concat" and not data.scalar:
            parts = [self.get(v) for v in ins]
            if any(p is None or p.scalar for p in parts):
                return None
            return SymValue(tuple(d for p in parts for d in p.dims))  # type: ignore[union-attr]
        if op == "Slice" and not data.scalar:
            if self.opset >= 10:
                starts, ends = self._ints(ins[1]), self._ints(ins[2])
                axes = self._ints(ins[3]) if len(ins) > 3 and ins[3] is not None else [0]
                steps = self._ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1]
            else:  # opset 1-9: starts/ends/axes are attributes (older paddle2onnx exports)
                starts, ends = _attr(node, "starts"), _attr(node, "ends")
                axes, steps = _attr(node, "axes", [0]), [1]
                starts, ends, axes = (None if a is None else list(a) for a in (starts, ends, axes))
            if not starts or not ends or axes not in ([0], [-1]) or not steps or steps[0] == 0:
                return None
            return SymValue(tuple(data.dims[slice(*_py_slice(starts[0], ends[0], steps[0], len(data.dims)))]))
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(ins) == 2 and not data.boolean:
            return self._arith(op, data, self.get(ins[1]))
        if op == "Equal" and len(ins) == 2 and not data.boolean:
            return self._equal(data, self.get(ins[1]))
        if op == "Where" and data.boolean and len(ins) == 3:
            return self._where(data, self.get(ins[1]), self.get(ins[2]))
        return None

    @staticmethod
    def _pairs(a: SymValue, b: SymValue) -> list[tuple[Dim, Dim]] | None:
        """Elementwise pairs under 1-D broadcasting (a length-1 side repeats)."""
        n = max(len(a.dims), len(b.dims))
        if len(a.dims) not in (1, n) or len(b.dims) not in (1, n):
            return None
        return list(zip(a.dims * n if len(a.dims) == 1 else a.dims, b.dims * n if len(b.dims) == 1 else b.dims))

    def _equal(self, a: SymValue, b: SymValue | None) -> SymValue | None:
        """Equal of shape values: a dim is never negative, so ``Equal(dim, -1)``
        is False even for a symbolic dim (the exporters' ``Where(Equal(shape,
        -1), 1, shape)`` guard of Expand); the same symbol is equal to itself."""
        pairs = None if b is None or b.boolean else self._pairs(a, b)
        if pairs is None:
            return None
        out: list[Dim] = []
        for x, y in pairs:
            if isinstance(x, int) and isinstance(y, int):
                out.append(x == y)
            elif isinstance(x, int) and x < 0 or isinstance(y, int) and y < 0:
                out.append(False)
            elif isinstance(x, str) and x == y:
                out.append(True)
            else:
                out.append(None)
        return SymValue(tuple(out), a.scalar and b.scalar, boolean=True)  # type: ignore[union-attr]

    def _where(self, c: SymValue, x: SymValue | None, y: SymValue | None) -> SymValue | None:
        if x is None or y is None or x.boolean != y.boolean:
            return None
        xy = self._pairs(x, y)
        if xy is None:
            return None
        cxy = self._pairs(c, SymValue(tuple(range(len(xy)))))
        if cxy is None or len(cxy) != len(xy):
            return None
        out: list[Dim] = []
        for (cond, i) in cxy:
            a, b = xy[i]  # type: ignore[index]
            out.append(a if cond is True else b if cond is False else a if a == b and a is not None else None)
        return SymValue(tuple(out), c.scalar and x.scalar and y.scalar, boolean=x.boolean)

    @staticmethod
    def _arith(op: str, a: SymValue, b: SymValue | None) -> SymValue | None:
        if b is None:
            return None
        n = max(len(a.dims), len(b.dims))
        if len(a.dims) not in (1, n) or len(b.dims) not in (1, n):
            return None
        xs = a.dims * n if len(a.dims) == 1 else a.dims
        ys = b.dims * n if len(b.dims) == 1 else b.dims
        out: list[Dim] = []
        for x, y in zip(xs, ys):
            if not isinstance(x, int) or not isinstance(y, int) or (op == "Div" and y == 0):
                out.append(x if op in ("Mul", "Div") and y == 1 or op in ("Add", "Sub") and y == 0 else None)
                continue
            if op == "Div":
                q = abs(x) // abs(y)
                out.append(q if (x < 0) == (y < 0) else -q)
            else:
                out.append({"Add": x + y, "Sub": x - y, "Mul": x * y, "Max": max(x, y), "Min": min(x, y)}[op])
        return SymValue(tuple(out), a.scalar and b.scalar)


def _py_slice(start: int, end: int, step: int, n: int) -> tuple[int, int | None, int]:
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return min(max(start, 0), n), min(max(end, 0), n), step
    start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return start, (None if end < 0 else end), step


def _reshape_target(node: ir.Node, shape: SymValue) -> list[int] | None:
    """A constant shape for ``Reshape(data, shape)`` with the same meaning:
    an entry equal to the data's own symbolic dim at that position becomes 0
    (copy), and a single entry still unknown becomes -1. Literal entries keep
    their meaning: 0 copies (``allowzero`` is off), a literal -1 takes the one
    inferred slot, so no other entry may stay unknown."""
    if _attr(node, "allowzero", 0) or shape.scalar:
        return None
    data_dims = _dims_of(node.inputs[0])
    out: list[int | None] = []
    for i, d in enumerate(shape.dims):
        if isinstance(d, int):
            if d < -1 or (d == -1 and -1 in out):
                return None  # invalid target: leave it to the runtime
            out.append(d)
        elif isinstance(d, str) and data_dims is not None and i < len(data_dims) and data_dims[i] == d:
            out.append(0)
        else:
            out.append(None)
    unknown = [i for i, d in enumerate(out) if d is None]
    if len(unknown) > 1 or (unknown and -1 in out):
        return None
    for i in unknown:
        out[i] = -1
    return out  # type: ignore[return-value]


def _known(dim: Dim) -> Dim:
    """A dim as inference knows it: ONNX shape inference names the dims it
    cannot relate to anything ``unk__N``, which says no more than None."""
    return None if isinstance(dim, str) and dim.startswith("unk__") else dim


def _sharper(node: ir.Node, target: SymValue) -> bool:
    """Whether the Reshape's target (its symbolic value) tells more about the
    output's shape than the output has: a dim known as an int, or as a named
    symbolic dim, where the output's is unknown."""
    out = _dims_of(node.outputs[0])
    data = _dims_of(node.inputs[0])
    if out is None or len(out) != len(target.dims):
        return True
    for i, (have, want) in enumerate(zip(out, target.dims)):
        if want == 0:  # copies the data's dim
            want = data[i] if data is not None and i < len(data) else None
        elif isinstance(want, int) and want < 0:
            want = None
        have, want = _known(have), _known(want)
        if want is not None and not isinstance(have, int) and have != want:
            return True
    return False


_SHAPE_VALUE_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL})


def _fully_known(value: ir.Value) -> bool:
    """Whether every dim of the value's shape is an int or a named symbolic dim."""
    dims = _dims_of(value)
    return dims is not None and all(isinstance(d, int) or _known(d) is not None for d in dims)


_ONNX_DATA_PROPAGATION = frozenset({"Shape", "Size", "Cast", "Concat", "Gather", "Slice", "Squeeze", "Unsqueeze",
                                    "Add", "Sub", "Mul", "Div", "Identity", "Reshape"})
"""Ops through which ONNX shape inference carries the values of shape tensors
(``PartialDataPropagationFunction`` in onnx/defs, with a margin: Div, Identity
and Reshape are listed whether or not they propagate, which only makes
:func:`_may_sharpen` more cautious). Where, Equal, Max, Min are not."""


def _may_sharpen(constants: list[ir.Value], budget: int = 256) -> bool:
    """Whether a new inference could tell more now that ``constants`` hold
    what were computed shape values. A reader of a constant reads its value
    (a Reshape target, say): it could, if some output of it has a shape that
    is not fully known. A reader that ONNX's data propagation passes values
    through may now have a known value too: its readers are asked the same.
    (Inference may have known the folded values already, by its own data
    propagation; this does not ask.) True as well past ``budget`` readers."""
    seen: set[ir.Node] = set()
    stack = list(constants)
    while stack:
        for node, _ in stack.pop().uses():
            if node in seen:
                continue
            seen.add(node)
            budget -= 1
            if budget < 0:
                return True
            propagates = node.op_type in _ONNX_DATA_PROPAGATION and node.domain in ("", "ai.onnx")
            for out in node.outputs:
                if not _fully_known(out):
                    return True
                if propagates and out.dtype in _SHAPE_VALUE_TYPES:
                    stack.append(out)
    return False


@register_pass("fold-shapes")
class FoldShapes(Pass):
    """Fold Shape/Size computations whose dims are static; symbolic dims stay symbolic.

    Runs ONNX shape inference (data propagation on) from the graph inputs'
    declared shapes, then propagates the value of every small integer tensor
    element by element - each a known int, a symbolic dim name (``batch``) or
    unknown - through Shape (``start``/``end`` of opset 15), Size, Gather,
    Slice, Concat, Unsqueeze/Squeeze of scalars, Cast/Identity and integer
    Add/Sub/Mul/Div/Max/Min. A value whose elements are all known ints, and
    that is not constant yet, becomes an initializer: ``Shape(x)`` with ``x:
    [batch, 128, 64]`` followed by ``Gather(1)`` folds to 128 while
    ``Gather(0)`` stays. A dim is folded only when inference proves it static,
    so dynamic input dims are never frozen.

    With ``reshape`` on, a ``Reshape`` whose shape input is partly symbolic gets
    a constant shape when each unknown entry is the data's own dim at that
    position (written 0, "copy") except at most one (written -1): the exporter
    pattern ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` of
    TorchScript exports then leaves dead nodes for ``dce``. ``Equal`` of a
    shape value with a negative constant is False even for a symbolic dim
    (dims are never negative), and a ``Where`` whose known condition picks one
    branch entirely is bypassed: the exporters' ``Where(Equal(shape, -1), 1,
    shape)`` guard in front of ``Expand`` disappears.

    When a run bypassed a Where or gave a Reshape a target that tells more of
    its output's shape than inference found, it infers and folds again at
    once (up to 4 rounds), rather than leaving that to the next round of the
    enclosing fixpoint, which would run every other pass again first.

    It does not infer again when nothing changed that a new inference could
    tell more from: the ``shapes-current`` analysis (see
    ``graphopt.passes.cleanup.shapes``) survives ``dce`` and ``cse``'s
    initializer merges, and this pass keeps it after folds whose readers
    have fully known shapes already.

    Works in the main graph and If/Loop/Scan bodies (outer values visible).
    Prior art: onnxsim and onnxslim (shape folding with ONNX shape inference),
    onnxscript's optimizer (symbolic shape values in constant folding).
    """

    Options = FoldShapesOptions
    requires = frozenset({"topo-sorted"})
    preserves = frozenset({"topo-sorted", SHAPES_CURRENT})  # kept up to date by the pass itself
    establishes = frozenset({"shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"folded": 0, "reshapes": 0, "wheres": 0, "inferred": 0}
        current = shapes_current(ctx, model)
        # A bypassed Where (the exporters' guard in front of Expand) hands the
        # Expand a known shape, and a Reshape given a constant target may
        # tell more of its output's shape than inference found: only a new
        # inference passes that on to the Reshapes and Shapes below. Infer
        # and fold again at once rather than in the next round of the
        # fixpoint (which would run every other pass once more first).
        for _ in range(_MAX_ROUNDS):
            graphs = ir.all_graphs(model)
            shape_ops = any(n.op_type in ("Shape", "Size") for g in graphs for n in g)
            stats["inferred"] += self._infer_if_changed(model, graphs, shape_ops, current)
            if not shape_ops:
                break
            counts, constants = self._fold(model, graphs)
            for key in ("folded", "reshapes", "wheres"):
                stats[key] += counts[key]
            if counts["wheres"] or counts["sharper"]:
                if current is not None:
                    current.ok = False
                continue
            # Folded values a new inference could learn from leave the shapes
            # stale (the next run infers again); a Reshape target that is not
            # sharper tells inference nothing new.
            if current is not None and constants and current.ok:
                current.ok = not _may_sharpen(constants)
            break
        return PassResult(modified=stats["folded"] + stats["reshapes"] + stats["wheres"] > 0, stats=stats)

    def _infer_if_changed(self, model: ir.Model, graphs: list[ir.Graph], shape_ops: bool,
                          current: ShapesCurrent | None) -> int:
        """Re-infer shapes unless they are current; return 1 when it did.

        The pass establishes "shapes-inferred" even with nothing to fold, so
        it re-infers when the graph changed since its last inference (another
        pass may have made a Reshape target constant): unless the
        :data:`SHAPES_CURRENT` analysis survived the changes since (they
        were made by passes that preserve it) or the graph is the one it
        inferred last (the fingerprint in ``model.meta``). Without
        Shape/Size to fold, that is only worth it when some value has no
        shape yet: rewrites keep the shapes of the values they keep."""
        if not self.options.infer or not (shape_ops or any(
                v.shape is None for g in graphs for n in g for v in n.outputs)):
            return 0
        if current is not None and current.ok:
            return 0
        fingerprint = _fingerprint(model, graphs)
        if model.meta.get(_META_KEY) == fingerprint:
            return 0
        _infer(model)
        model.meta[_META_KEY] = fingerprint
        if current is not None:
            current.ok = True
        return 1

    def _fold(self, model: ir.Model, graphs: list[ir.Graph]) -> tuple[dict[str, int], list[ir.Value]]:
        """One walk over every graph: propagate shape values, fold the known
        ones, give Reshapes constant targets, bypass decided Wheres. Returns
        the counts and the constants that replaced folded values."""
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        prop = _Propagator(opset)
        folded = reshapes = wheres = sharper = 0
        constants: list[ir.Value] = []
        for graph in graphs:
            for node in list(graph):
                sym = prop.visit(node)
                out = node.outputs[0] if node.outputs else None
                if sym is not None:
                    prop.values[out] = sym
                if node.op_type == "Reshape" and self.options.reshape and len(node.inputs) == 2:
                    done = self._reshape(graph, node, prop)
                    reshapes += done > 0
                    sharper += done == 2
                if node.op_type == "Where" and sym is not None and not sym.known and self._where(graph, node, prop):
                    wheres += 1
                    continue
                if sym is None or not sym.known or ir.is_constant(out) or len(node.outputs) != 1:
                    continue
                if not (out.uses() or out.is_graph_output()):
                    continue
                dtype = np.bool_ if sym.boolean else np.int32 if out.dtype == ir.DataType.INT32 else np.int64
                array = np.array(sym.dims[0] if sym.scalar else list(sym.dims), dtype=dtype)
                if out.dtype is not None and out.dtype != ir.DataType.from_numpy(array.dtype):
                    continue
                as_init = graph is model.graph or not out.is_graph_output()
                new = install_constant(graph, node, out, ir.Tensor(array), as_initializer=as_init)
                prop.values[new] = sym
                constants.append(new)
                graph.remove(node, safe=True)
                folded += 1
        return {"folded": folded, "reshapes": reshapes, "wheres": wheres, "sharper": sharper}, constants

    @staticmethod
    def _where(graph: ir.Graph, node: ir.Node, prop: _Propagator) -> bool:
        """Bypass a ``Where`` whose condition is known and picks one branch
        entirely, when that branch already has the output's length."""
        cond = prop.get(node.inputs[0])
        if cond is None or not cond.known or len(set(cond.dims)) != 1:
            return False
        branch = node.inputs[1] if cond.dims[0] else node.inputs[2]
        picked, out = prop.get(branch), prop.get(node.outputs[0])
        if picked is None or out is None or picked.scalar != out.scalar or len(picked.dims) != len(out.dims):
            return False
        if ir.bypass(node, node.outputs[0], branch):
            graph.remove(node, safe=True)
            return True
        return False

    @staticmethod
    def _reshape(graph: ir.Graph, node: ir.Node, prop: _Propagator) -> int:
        """Give the Reshape a constant target (see :func:`_reshape_target`).
        Returns 0 when it does not, 1 when it does, 2 when it does and the
        target tells more about the output's shape than it has now (a new
        inference would pass that on)."""
        shape_value = node.inputs[1]
        sym = prop.get(shape_value)
        if sym is None or sym.known or ir.is_constant(shape_value):
            return 0
        target = _reshape_target(node, sym)
        if target is None:
            return 0
        sharper = _sharper(node, sym)
        name = f"{shape_value.name or 'shape'}_static"
        unique, i = name, 1
        while unique in graph.initializers:
            unique, i = f"{name}_{i}", i + 1
        tensor = ir.Tensor(np.array(target, dtype=np.int64), name=unique)
        new = ir.Value(name=unique, shape=ir.Shape([len(target)]), type=ir.TensorType(ir.DataType.INT64),
                       const_value=tensor)
        graph.register_initializer(new)
        node.replace_input_with(1, new)
        prop.values[new] = SymValue(tuple(target))
        return 2 if sharper else 1

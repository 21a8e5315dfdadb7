"""fold-shapes: fold shape computations whose dims are static; keep symbolic dims symbolic."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from graphopt import ir
from graphopt.passes.cleanup.shapes import SHAPES_CURRENT, ShapesCurrent, shapes_current
from graphopt.passes.folding.constants import SmallFolder, install_constant
from graphopt.passes.folding.shape_dims import model_dims
from graphopt.passes.folding.shape_sharpen import sharpen_downstream
from graphopt.passes.folding.shape_worlds import pin_if_outputs
from graphopt.passes.folding.shape_values import Dim, Propagator, SymValue, dims_of, known_dim, node_attr
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["FoldShapes", "FoldShapesOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldShapesOptions:
    """Options of ``fold-shapes``."""

    infer: bool = field(default=True, metadata={"doc": (
        "re-run ONNX shape inference (from the declared input shapes) before folding")})
    reshape: bool = field(default=True, metadata={"doc": (
        "give Reshape a constant shape when its unknown entries are the input's own dims (0) "
        "or a single remaining dim (-1)")})
    symbolic: bool = field(default=True, metadata={"doc": (
        "rederive the dims ONNX shape inference leaves unknown (unk__N) from the producers' shape rules "
        "and the values of shape tensors, strictly (no dims merged that are not proved equal)")})
    valid_runs: bool = field(default=True, metadata={"doc": (
        "give an If's output the dims of its one branch with which the graph can run, when the other "
        "branch's make a later op fail its ONNX spec (an LSTM input not of rank 3): exact on every input "
        "the original model runs")})


_MAX_ROUNDS = 4
"""Inference + folding rounds in one run of the pass (see ``FoldShapes.run``)."""

_SMALL_FOLD = 64
"""The largest output (elements) of a node evaluated in the walk because this
walk's folds made its inputs constant (see ``FoldShapes._fold``)."""

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


def _fill_missing(model: ir.Model, missing: list[ir.Value]) -> bool:
    """Give the values without a shape (``missing``, in topological order)
    their dims by the producers' shape rules (:class:`NativeDims`: ints and
    the graph inputs' dim names, strictly), when that names every dim of
    every one and each has a dtype; else change nothing and return False.

    With no Shape/Size left to fold, a new ONNX inference would only give
    shapes to the values a rewrite made after the last one (a Reshape whose
    target was folded, a Gemm that replaced MatMul + Add): where the rules
    name them all, they are what inference would give."""
    _, native = model_dims(model)
    shapes = []
    for value in missing:
        dims = native(value) if value.dtype is not None else None
        if dims is None or any(d is None for d in dims):
            return False
        shapes.append(dims)
    for value, dims in zip(missing, shapes):
        value.shape = ir.Shape(list(dims), frozen=True)
    return True


def _walk_reads(node: ir.Node) -> bool:
    """Whether a walk of this pass reads ``node``'s input dims: a Shape, a
    Size, or a Reshape whose target is not a constant yet."""
    if node.op_type in ("Shape", "Size"):
        return True
    return node.op_type == "Reshape" and len(node.inputs) > 1 and not ir.is_constant(node.inputs[1])


def _reshape_target(node: ir.Node, shape: SymValue, data_dims: tuple[Dim, ...] | None) -> list[int] | None:
    """A constant shape for ``Reshape(data, shape)`` with the same meaning:
    an entry equal to the data's own symbolic dim at that position
    (``data_dims``) becomes 0 (copy), and a single entry still unknown becomes
    -1. Literal entries keep their meaning: 0 copies (``allowzero`` is off), a
    literal -1 takes the one inferred slot, so no other entry may stay
    unknown."""
    if node_attr(node, "allowzero", 0) or shape.scalar:
        return None
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


def _may_match(target: SymValue, data: tuple[Dim, ...] | None) -> bool:
    """Whether a named entry of the Reshape target sits where the data's dim
    is unknown (so that the data's strict symbolic dims, from
    :class:`NativeDims`, might make it a copy, 0)."""
    return data is not None and any(
        isinstance(t, str) and known_dim(t) is not None and i < len(data) and known_dim(data[i]) is None
        for i, t in enumerate(target.dims))


def _sharper(node: ir.Node, target: SymValue) -> bool:
    """Whether the Reshape's target (its symbolic value) tells more about the
    output's shape than the output has: a dim known as an int, or as a named
    symbolic dim, where the output's is unknown."""
    out = dims_of(node.outputs[0])
    data = dims_of(node.inputs[0])
    if out is None or len(out) != len(target.dims):
        return True
    for i, (have, want) in enumerate(zip(out, target.dims)):
        if want == 0:  # copies the data's dim
            want = data[i] if data is not None and i < len(data) else None
        elif isinstance(want, int) and want < 0:
            want = None
        have, want = known_dim(have), known_dim(want)
        if want is not None and not isinstance(have, int) and have != want:
            return True
    return False


_SHAPE_VALUE_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.BOOL})


def _fullyknown_dim(value: ir.Value) -> bool:
    """Whether every dim of the value's shape is an int or a named symbolic dim."""
    dims = dims_of(value)
    return dims is not None and all(isinstance(d, int) or known_dim(d) is not None for d in dims)


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
                if not _fullyknown_dim(out):
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
    Slice, Concat, Unsqueeze/Squeeze of scalars, Cast/Identity, integer
    Add/Sub/Mul/Div/Max/Min and Reshape of a 1-D value to 1-D or of one
    element to a scalar. A value whose elements are all known ints, and
    that is not constant yet, becomes an initializer: ``Shape(x)`` with ``x:
    [batch, 128, 64]`` followed by ``Gather(1)`` folds to 128 while
    ``Gather(0)`` stays. A dim is folded only when inference proves it static,
    so dynamic input dims are never frozen. A node whose inputs this walk's
    folds made constant is evaluated at once when its output has at most 64
    elements (``fold-constants``' numpy kernels, see
    :class:`~graphopt.passes.folding.constants.SmallFolder`): the
    ``ConstantOfShape(Shape(x)) * -1`` of the exporters' Expand guard then
    folds in the same walk as the Shape it reads.

    With ``reshape`` on, a ``Reshape`` whose shape input is partly symbolic gets
    a constant shape when each unknown entry is the data's own dim at that
    position (written 0, "copy") except at most one (written -1): the exporter
    pattern ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` of
    TorchScript exports then leaves dead nodes for ``dce``. ``Equal`` of a
    shape value with a negative constant is False even for a symbolic dim
    (dims are never negative), and a ``Where`` whose known condition picks one
    branch entirely is bypassed: the exporters' ``Where(Equal(shape, -1), 1,
    shape)`` guard in front of ``Expand`` disappears, and so does a
    ``Reshape(shape, [-1])`` of a 1-D shape value (ONNX inference carries no
    values through Reshape).

    When a walk bypassed a Where or a Reshape, or gave a Reshape a target
    that tells more of its output's shape than inference found, the dims
    that became knowable are carried downstream by the shape rules
    (:func:`~graphopt.passes.folding.shape_sharpen.sharpen_downstream`) and
    the pass walks again where a Shape, Size or Reshape reads a sharper
    value, all in the same run (up to 4 walks), rather than in the next
    round of the enclosing fixpoint. Where that cone reaches an op without
    a shape rule, ONNX inference runs again instead.

    It does not infer again when nothing changed that a new inference could
    tell more from: the ``shapes-current`` analysis (see
    ``graphopt.passes.cleanup.shapes``) survives ``dce``, ``cse``,
    ``eliminate-noops`` and the folds whose rewrites inference would see the
    same, and this pass keeps it after folds of values inference had
    already (carried through Shape, Gather, Concat, Slice, ...) or whose
    readers have fully known shapes. With no Shape or Size left, values a
    rewrite left without a shape get it from the shape rules when they
    name every dim, else from a new inference.

    With ``symbolic`` on, a dim ONNX inference leaves unknown (``unk__N``:
    it does not carry dims through Range, nor broadcast a named dim against an
    unknown one, nor solve a computed Reshape target's -1) in a value that a
    Shape/Size or a Reshape reads is rederived from its producer's shape rule
    over its inputs' dims and the shape values this pass propagates
    (:class:`~graphopt.passes.folding.shape_dims.NativeDims`), strictly: no
    two dims are taken as equal unless the rules prove it. The Q/K/V of a
    TorchScript SDPA export are then ``[batch, heads, sequence, 16]``, and
    the Reshapes that read their Shape get constant targets. It is asked only
    where an unknown element is read.

    Works in the main graph and If/Loop/Scan bodies (outer values visible).
    Guards of control flow fold too: ``Not``, ``And``/``Or`` and the order
    comparisons of shape values (``Greater(Size(Shape(x)), 2)``, decided for
    ints only) join ``Equal``, and an If's output whose rank ONNX inference
    loses (branches of different rank: ``Unsqueeze`` in one, ``Identity`` in
    the other) takes the taken branch's dims once the condition is known
    (``NativeDims``' If rule, ONNX If spec), so a chain of rank guards in a
    branch, each reading the previous guard's output, folds in one walk and
    ``inline`` splices every decided If in the same fixpoint round.
    With ``valid-runs`` on, an If decided only at run time whose branches
    differ in rank (Silero VAD's squeeze of a length-1 time axis) gets the
    dims of the one branch with which the rest of its graph can run, when
    the other's make a later live op fail its ONNX spec (an LSTM input not
    of rank 3; :mod:`~graphopt.passes.folding.shape_worlds`), and that
    branch as a constant condition (stat ``ifs``): the If and the guards
    below it fold, exactly on every input the original model runs.
    Prior art: onnxsim and onnxslim (shape folding with ONNX shape inference),
    onnxscript's optimizer (symbolic shape values in constant folding).
    """

    Options = FoldShapesOptions
    requires = frozenset({"topo-sorted"})
    preserves = frozenset({"topo-sorted", SHAPES_CURRENT})  # kept up to date by the pass itself
    establishes = frozenset({"shapes-inferred"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"folded": 0, "reshapes": 0, "wheres": 0, "bypassed": 0, "inferred": 0, "sharpened": 0, "refined": 0}
        current = shapes_current(ctx, model)
        # A bypassed Where (the exporters' guard in front of Expand) hands the
        # Expand a known shape, and a Reshape given a constant target may
        # tell more of its output's shape than inference found: the shape
        # rules carry that to the Reshapes and Shapes below (a new inference
        # where they cannot), and the pass walks again at once rather than in
        # the next round of the fixpoint (which would run every other pass
        # once more first).
        for _ in range(_MAX_ROUNDS):
            graphs = ir.all_graphs(model)
            shape_ops = any(n.op_type in ("Shape", "Size") for g in graphs for n in g)
            stats["inferred"] += self._infer_if_changed(model, graphs, shape_ops, current)
            if not shape_ops:
                break
            counts, constants, touched = self._fold(model, graphs)
            for key in ("folded", "reshapes", "wheres", "bypassed", "refined"):
                stats[key] += counts[key]
            if counts["ifs"]:  # only where shape_worlds decided an If: the stats of other models stay as they were
                stats["ifs"] = stats.get("ifs", 0) + counts["ifs"]
                if current is not None:
                    current.ok = False  # inference reads the If's taken branch now
            if counts["wheres"] or counts["bypassed"] or counts["sharper"]:
                sharpened = sharpen_downstream(model, graphs, touched) if self.options.symbolic else None
                if sharpened is None:
                    if current is not None:
                        current.ok = False
                    continue  # infer again and walk again
                # The shape rules carried what the walk made knowable: as good
                # as a new inference. Another walk can only fold more where a
                # Shape or a Size reads a value they sharpened, or a Reshape
                # with a computed target does.
                stats["sharpened"] += 1
                model.meta[_META_KEY] = _fingerprint(model, graphs)
                if current is not None:
                    current.ok = True
                if any(_walk_reads(u) for v in sharpened for u, _ in v.uses()):
                    continue
                break
            # Folded values a new inference could learn from leave the shapes
            # stale (the next run infers again); a Reshape target that is not
            # sharper tells inference nothing new.
            if current is not None and constants and current.ok:
                current.ok = not _may_sharpen(constants)
            break
        return PassResult(modified=stats["folded"] + stats["reshapes"] + stats["wheres"] + stats["bypassed"]
                          + stats.get("ifs", 0) > 0, stats=stats)

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
        if not self.options.infer:
            return 0
        if not shape_ops:
            missing = [v for g in graphs for n in g for v in n.outputs if v.shape is None]
            if not missing or (self.options.symbolic and _fill_missing(model, missing)):
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

    def _fold(self, model: ir.Model, graphs: list[ir.Graph]) -> tuple[dict[str, int], list[ir.Value], set[ir.Value]]:
        """One walk over every graph: propagate shape values, fold the known
        ones, give Reshapes constant targets, bypass decided Wheres. Returns
        the counts, the constants that replaced folded values inference did
        not have, and the values whose readers changed (see
        ``sharpen_downstream``)."""
        prop, native = model_dims(model)
        ifs = 0
        if self.options.symbolic:
            prop.set_refine(native)
            if self.options.valid_runs:
                taken: dict[ir.Node, bool] = {}
                native.pinned.update(pin_if_outputs(model, graphs, taken))
                ifs = sum(self._take(node, branch) for node, branch in taken.items())
        folded = reshapes = wheres = bypassed = sharper = 0
        constants: list[ir.Value] = []
        made: set[ir.Value] = set()  # the constants of this walk
        touched: set[ir.Value] = set()  # values whose readers this walk changed
        for graph in graphs:
            small = None
            for node in list(graph):
                sym = prop.visit(node)
                if sym is None and made and any(v in made for v in node.inputs):
                    # A node this walk's folds made constant (the exporters'
                    # ConstantOfShape(shape) -> Mul -> Equal -> Where guard):
                    # evaluated now, so that what reads it folds in this walk.
                    small = small or SmallFolder(model, graph, _SMALL_FOLD)
                    new_values = small.fold(node)
                    if new_values:
                        constants.extend(new_values)
                        made.update(new_values)
                        touched.update(new_values)
                        folded += 1
                        continue
                out = node.outputs[0] if node.outputs else None
                if sym is not None:
                    prop.values[out] = sym
                operands = [v for v in node.inputs if v is not None]  # a removed node has none
                if node.op_type == "Reshape" and sym is not None and self._flat(graph, node, prop):
                    bypassed += 1
                    touched.update(operands)
                    continue
                if node.op_type == "Reshape" and self.options.reshape and len(node.inputs) == 2:
                    done = self._reshape(graph, node, prop)
                    reshapes += done > 0
                    sharper += done == 2
                    if done:
                        touched.add(node.inputs[1])
                if node.op_type == "Where" and sym is not None and not sym.known and self._where(graph, node, prop):
                    wheres += 1
                    touched.update(operands)
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
                unseen = out in prop.unseen
                new = install_constant(graph, node, out, ir.Tensor(array), as_initializer=as_init)
                prop.values[new] = sym
                if unseen:  # inference had this value: its readers cannot learn from the constant
                    constants.append(new)
                made.add(new)
                touched.add(new)
                graph.remove(node, safe=True)
                folded += 1
        return {"refined": prop.refined, "folded": folded, "reshapes": reshapes, "wheres": wheres, "bypassed": bypassed,
                "sharper": sharper, "ifs": ifs}, constants, touched

    @staticmethod
    def _take(node: ir.Node, branch: bool) -> int:
        """Give an If a constant condition: the branch every run of the
        original takes (``shape_worlds.pin_if_outputs``); ``inline``
        splices it. Returns 1, or 0 when the condition is constant already."""
        if ir.is_constant(node.inputs[0]) or node.graph is None:
            return 0
        graph = node.graph
        name, i = f"{node.inputs[0].name or 'cond'}_taken", 1
        unique = name
        while unique in graph.initializers:
            unique, i = f"{name}_{i}", i + 1
        tensor = ir.Tensor(np.array(branch), name=unique)
        const = ir.Value(name=unique, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.BOOL), const_value=tensor)
        graph.register_initializer(const)
        node.replace_input_with(0, const)
        return 1

    @staticmethod
    def _flat(graph: ir.Graph, node: ir.Node, prop: Propagator) -> bool:
        """Bypass a ``Reshape`` of a 1-D shape value to its own length (the
        exporters' ``Reshape(Concat(...), [-1])`` in front of Expand's guard):
        ONNX inference carries no contents through Reshape, so its readers
        (the Expand) learn them from the new inference only without it."""
        data = prop.get(node.inputs[0])
        out = prop.get(node.outputs[0])
        dims = dims_of(node.inputs[0])
        if data is None or out is None or data.scalar or out.scalar or dims is None or len(dims) != 1:
            return False
        if ir.bypass(node, node.outputs[0], node.inputs[0]):
            graph.remove(node, safe=True)
            return True
        return False

    @staticmethod
    def _where(graph: ir.Graph, node: ir.Node, prop: Propagator) -> bool:
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
    def _reshape(graph: ir.Graph, node: ir.Node, prop: Propagator) -> int:
        """Give the Reshape a constant target (see :func:`_reshape_target`).
        Returns 0 when it does not, 1 when it does, 2 when it does and the
        target tells more about the output's shape than it has now (a new
        inference would pass that on)."""
        shape_value = node.inputs[1]
        sym = prop.get(shape_value)
        if sym is None or sym.known or ir.is_constant(shape_value):
            return 0
        data = node.inputs[0]
        target = _reshape_target(node, sym, dims_of(data))
        if target is None and _may_match(sym, dims_of(data)):
            target = _reshape_target(node, sym, prop.dims(data))
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

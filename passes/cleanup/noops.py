"""eliminate-noops: remove nodes whose output equals their input, and fold
pairs of nodes that cancel or compose into one."""

from __future__ import annotations

from graphopt import ir
from graphopt.passes.cleanup.dce import is_dead
from graphopt.passes.cleanup.noop_rules import RULES, Site, match
from graphopt.passes.cleanup.shapes import DATA_CARRIED, SHAPES_CURRENT, mark_stale, same_shape
from graphopt.passes.cleanup.unify_dims import DimEqualities
from graphopt.passmanager import Pass, PassResult, register_pass

_FAMILIES = ("identity", "dropout", "cast", "reshape", "transpose", "expand", "slice", "pad",
             "concat", "split", "arith")
_MAX_EDITS_PER_NODE = 64  # a chain of pairs folds one producer per edit


def _remove_if_dead(container: ir.Graph | ir.Function, node: ir.Node | None, owner: ir.Graph | None) -> None:
    """Remove a producer a rewrite left without readers (only from ``owner``,
    the graph being rewritten: an outer-scope producer is left to dce)."""
    if node is None or node.graph is None or node.graph is not owner:
        return
    if is_dead(node):
        container.remove(node, safe=True)


@register_pass("eliminate-noops")
class EliminateNoops(Pass):
    """Remove no-op nodes: Identity, inference Dropout, Casts, shape ops, Transposes, unit arithmetic.

    Each rule, with its source (the ONNX operator spec; prior art: the
    ``eliminate_nop_*`` / ``fuse_consecutive_*`` passes of onnxoptimizer that
    onnxsim runs, onnxslim's dead-node elimination, and onnxscript's
    ``no_op`` and ``basic_rules`` rewrite rules). Stats count matches by family.

    - ``identity``: ``Identity`` (spec: copies its input).
    - ``dropout``: ``Dropout`` in inference mode with its mask unread (spec;
      shares ``eliminate-dropout``'s mode test).
    - ``cast``: ``Cast`` to the input's own dtype; ``Cast(Cast(x: A, to=B),
      to=A)`` when B holds every value of A (float16/bfloat16 -> float32 ->
      float64, narrower -> wider integers, integers into floats with enough
      significand bits, bool into any number); ``Cast(Cast(x: A, to=B), to=C)``
      -> ``Cast(x, to=C)`` under the same condition when the direct cast
      gives the same values. float32 -> float16 -> float32 or int64 -> int32
      -> int64 are lossy and stay.
    - ``reshape``: ``Reshape`` whose target is the input's shape (0 copies a
      dim unless ``allowzero``, one -1 takes the rest), the target constant or
      computed by Concat/Gather/Unsqueeze of ``Shape`` slices whose dims match
      the input's (as dynamo exports write ``view``); ``Flatten``
      of a rank-2 tensor at axis 1; any of Reshape/Flatten/Squeeze/Unsqueeze
      whose inferred output shape is the input's; two of them in a row whose
      result has the first one's input shape, or Unsqueeze/Squeeze pairs with
      the same axes (attribute before opset 13, input from 13); a Reshape
      after one of them reads the first's input directly when its 0 entries
      copy dims that input shares; two Unsqueezes merge into one (a new axes
      initializer from opset 13, not in function bodies).
    - ``transpose``: identity ``perm``; ``Transpose(Transpose(x, p1), p2)``
      is x when ``p1[p2[i]] == i``, else one Transpose of x with that perm.
    - ``expand``: ``Expand`` to a shape (constant or computed as above) that
      broadcasts to the input's own shape; ``Tile`` with all repeats 1.
    - ``slice``: ``Slice`` from 0 to the end (the dim or an INT32/INT64 max
      sentinel) with step 1 on every axis it names.
    - ``pad``: ``Pad`` with all pads 0.
    - ``concat`` / ``split``: ``Concat`` of one input, ``Split`` into one output.
    - ``arith``: ``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1``,
      ``x**1``, ``And(x, True)``, ``Or(x, False)``, ``Xor(x, False)`` (either
      side where the op commutes) with a constant whose every element is the
      unit and whose shape does not broadcast x to a larger one (the dtype
      cannot change: the operators take one type T). ``-0.0 + 0.0`` is ``+0.0``, so
      removing ``x + 0`` can flip the sign of a zero: equal as numbers, and
      within the 1e-5 tolerance of exact passes.

    Shape equality trusts the value shapes (inferred, or declared by the
    model for its inputs and outputs): equal ints, or symbolic dims of the
    same name (shape inference gives one name to one run-time size). A node whose output is a graph output is removed only when its
    input can take over the output's name (``graphopt.ir.bypass``); otherwise
    it stays and counts as ``kept``. Works in subgraphs and function bodies
    (where shape inference gives no shapes, only shape-free rules fire).
    Producers a rewrite leaves unread are removed.
    """

    requires = frozenset({"shapes-inferred", "topo-sorted"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", SHAPES_CURRENT})  # cleared by the pass when due

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = dict.fromkeys(_FAMILIES, 0)
        stats["kept"] = 0
        stats["stale"] = 0  # rewrites a new shape inference may tell more from (see SHAPES_CURRENT)
        default = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        equal = DimEqualities()
        containers = ir.graphs_and_functions(model)
        for container in containers:
            imports = container.opset_imports if isinstance(container, ir.Function) else {}
            site = Site(imports.get("", imports.get("ai.onnx", default)), not isinstance(container, ir.Function))
            for node in list(container):
                if node.op_type not in RULES or node.graph is None:
                    continue
                self._rewrite(container, node, site, stats, equal)
        equal.apply(containers)
        modified = any(stats[f] for f in _FAMILIES)
        if stats["stale"]:
            mark_stale(ctx, model)
        del stats["stale"]
        return PassResult(modified=modified, stats=stats)

    @staticmethod
    def _rewrite(container: ir.Graph | ir.Function, node: ir.Node, site: Site, stats: dict[str, int],
                 equal: DimEqualities) -> None:
        """Apply rules to ``node`` until none matches or it is removed. A
        bypass records the dims it proves equal in ``equal``: it is neutral
        to shape inference when the readers see the same dims up to them."""
        owner = node.graph
        for _ in range(_MAX_EDITS_PER_NODE):
            found = match(node, site)
            if found is None:
                return
            producer = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
            if found.edit is not None:
                out = node.outputs[0]
                # An edit keeps the node's output; it tells inference nothing
                # new when the rule says the new form gives the same dims and
                # contents and the shapes it read were inferred.
                neutral = found.neutral and out.shape is not None and all(
                    v is None or v.shape is not None for v in (*node.inputs, producer and producer.inputs[0]))
                found.edit()
                stats[found.family] += 1
                stats["stale"] += not neutral
                _remove_if_dead(container, producer, owner)
                continue
            old = node.outputs[0]
            neutral = equal.equate(old, found.source) and same_shape(
                old, found.source, equal.find, carried=node.op_type in DATA_CARRIED)
            if not ir.bypass(node, node.outputs[0], found.source):
                stats["kept"] += 1
                return
            stats["stale"] += not neutral
            container.remove(node, safe=True)
            stats[found.family] += 1
            _remove_if_dead(container, producer, owner)
            return

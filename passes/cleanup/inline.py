"""inline: inline model-local functions, fold If with a constant condition,
remove unused functions."""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field


from graphopt import ir
from graphopt.errors import PassError
from graphopt.passes.cleanup.dce import used_functions
from graphopt.passmanager import Pass, PassResult, register_pass

_LOG = logging.getLogger(__name__)

FunctionId = tuple[str, str, str]


@dataclass(frozen=True)
class InlineOptions:
    """Options of ``inline``."""

    functions: bool = field(default=True, metadata={"doc": "inline calls of model-local functions"})
    constant_if: bool = field(default=True, metadata={"doc": "replace an If whose condition is a constant by its branch"})
    remove_unused: bool = field(default=True, metadata={"doc": "remove model-local functions no node calls"})


# ------------------------------------------------------------------------ functions


def _opsets_agree(model: ir.Model, func: ir.Function) -> bool:
    return all(model.opset_imports.get(domain, version) == version
               for domain, version in func.opset_imports.items())


def _separate_outputs(func: ir.Function) -> None:
    """Give each output of ``func`` its own producer inside the body: an output
    that is a function input, or the same value as an earlier output, gets an
    Identity. onnx-ir's inliner renames the value that replaces a call output,
    which would rename the caller's input (possibly a graph input) or merge
    two call outputs into one."""
    seen: set[int] = set()
    for i, value in enumerate(list(func.outputs)):
        if value.producer() is None or id(value) in seen:
            identity = ir.Node("", "Identity", [value], num_outputs=1)
            identity.outputs[0].name = f"{value.name or 'out'}__out{i}"
            func.append(identity)
            func.outputs[i] = identity.outputs[0]
            value = identity.outputs[0]
        seen.add(id(value))


def _inline_functions(model: ir.Model) -> int:
    """Inline every call of a model-local function (nested calls included);
    return how many call sites of the input model were inlined (calls that
    inlined bodies bring along are inlined too but not counted)."""
    if not model.functions:
        return 0
    # A function whose opsets differ from the model's is left as a function:
    # its body's ops would be read at the model's opset.
    # A function called with a graph-valued attribute is left too (onnx-ir's
    # inliner refuses it; checked here so the model is never half inlined).
    inlinable = {key for key, func in model.functions.items() if _opsets_agree(model, func)}
    for container in [model.graph, *model.functions.values()]:
        for node in ir.all_nodes(container):
            if node.op_identifier() in inlinable and any(
                    a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                inlinable.discard(node.op_identifier())
    called = Counter(n.op_identifier() for g in [model.graph, *model.functions.values()]
                     for n in ir.all_nodes(g) if n.op_identifier() in inlinable)
    calls = sum(called.values())
    if not calls:
        return 0  # nothing changed: an uncalled function is dce's (or remove-unused's) business
    try:
        ir.inline_functions(model, inlinable, prepare=lambda: [_separate_outputs(model.functions[k]) for k in called])
    except ValueError as e:
        raise PassError(f"inline: cannot inline model-local functions: {e}; "
                        "run inline{functions=false} to keep them as functions", "inline") from e
    left = sum(1 for g in [model.graph, *model.functions.values()] for n in ir.all_nodes(g)
               if n.op_identifier() in inlinable)
    return calls - left


# ----------------------------------------------------------------------- constant If


def _condition(node: ir.Node) -> bool | None:
    """The value of a constant bool condition with one element, else None."""
    cond = node.inputs[0] if node.inputs else None
    tensor = ir.const_tensor(cond)
    if tensor is None or tensor.dtype != ir.DataType.BOOL:
        return None
    if tensor.shape is None or math.prod(tensor.shape.numpy()) != 1:
        return None
    return bool(tensor.numpy().reshape(-1)[0])


class _Names:
    """Value names of one top-level scope (graph or function, subgraphs
    included), to keep spliced names unique."""

    def __init__(self, top: ir.Graph | ir.Function) -> None:
        graphs = [top.graph if isinstance(top, ir.Function) else top, *ir.subgraphs(top)]
        self.count: Counter[str] = Counter()
        self.last: dict[str, int] = {}
        for graph in graphs:
            self.count.update(v.name for v in graph.inputs if v.name)
            self.count.update(iter(graph.initializers))
            for node in graph:
                self.count.update(v.name for v in node.outputs if v.name)

    def forget(self, graph: ir.Graph) -> None:
        """Drop the names of a discarded branch."""
        self.count.subtract(iter(graph.initializers))
        for node in ir.all_nodes(graph):
            self.count.subtract(v.name for v in node.outputs if v.name)

    def fresh(self, name: str) -> str:
        """``name`` if no other value has it, else ``name_1``, ``name_2``, ..."""
        if self.count[name] <= 1:
            self.count[name] = 1
            return name
        i = self.last.get(name, 0) + 1
        while self.count[f"{name}_{i}"] > 0:
            i += 1
        self.last[name] = i  # next clash of this name probes from here: O(1) amortized
        self.count[f"{name}_{i}"] = 1
        self.count[name] -= 1
        return f"{name}_{i}"


def _branches(node: ir.Node) -> tuple[ir.Graph, ir.Graph] | None:
    then_attr, else_attr = node.attributes.get("then_branch"), node.attributes.get("else_branch")
    if then_attr is None or else_attr is None or then_attr.is_ref() or else_attr.is_ref():
        return None
    return then_attr.value, else_attr.value


def _detach(graph: ir.Graph) -> None:
    """Make a discarded branch stop reading outer values (they may become dead)."""
    graph.outputs.clear()
    for node in ir.all_nodes(graph):
        for i in range(len(node.inputs)):
            node.replace_input_with(i, None)


def _splice(node: ir.Node, chosen: ir.Graph, other: ir.Graph, names: _Names, in_function: bool) -> bool:
    """Replace ``node`` (an If) by the nodes of ``chosen``. False when the
    branch cannot be spliced (initializers, inside a function body)."""
    parent = node.graph
    if chosen.initializers and in_function:
        return False
    if len(chosen.outputs) != len(node.outputs):
        return False
    names.forget(other)
    _detach(other)
    for key, init in list(chosen.initializers.items()):
        del chosen.initializers[key]
        init.name = names.fresh(key)
        if init.const_value is not None:
            init.const_value.name = init.name
        parent.register_initializer(init)
    sources = list(chosen.outputs)
    chosen.outputs.clear()
    moved = list(chosen)
    chosen.remove(moved)  # unsafe removal keeps their inputs: outer values stay read
    for inner in moved:
        for value in inner.outputs:
            if value.name:
                value.name = names.fresh(value.name)
    parent.insert_before(node, moved)
    for out, source in zip(node.outputs, sources):
        if not out.is_graph_output():
            out.replace_all_uses_with(source)
            continue
        if not ir.bypass(node, out, source):  # source is an input/initializer/outer value/output
            identity = ir.Node("", "Identity", [source], num_outputs=1)
            identity.outputs[0].name = names.fresh(f"{out.name}__if")
            parent.insert_before(node, identity)
            ir.bypass(node, out, identity.outputs[0])
    parent.remove(node, safe=True)
    return True


def _fold_constant_ifs(model: ir.Model) -> int:
    """Replace each If whose condition is a constant by its chosen branch."""
    folded = 0
    for top in [model.graph, *model.functions.values()]:
        candidates = [n for n in ir.all_nodes(top) if n.op_type == "If" and n.domain in ("", "ai.onnx")]
        if not candidates:
            continue
        names: _Names | None = None
        dead: set[int] = set()
        for node in candidates:  # outer Ifs come first: a discarded branch's Ifs are skipped
            if id(node) in dead or node.graph is None:
                continue
            cond, branches = _condition(node), _branches(node)
            if cond is None or branches is None:
                continue
            chosen, other = branches if cond else branches[::-1]
            discarded = {id(n) for n in ir.all_nodes(other)}
            names = names or _Names(top)
            if _splice(node, chosen, other, names, isinstance(top, ir.Function)):
                dead |= discarded
                folded += 1
    return folded


# ------------------------------------------------------------------------------ pass


@register_pass("inline")
class Inline(Pass):
    """Inline model-local functions, replace If with a constant condition by its branch, and remove unused functions.

    Functions: every call of a model-local function, in the main graph, in
    If/Loop/Scan bodies and in other functions' bodies, is replaced by a copy
    of the body (nested calls are inlined in turn). Attribute references
    (``alpha = @alpha``) take the call's value or the function's default; a
    reference with neither is dropped (ONNX's optional attributes). Inlined
    values keep their names when free and get a ``_2``, ``_3`` suffix
    otherwise; names used in any scope of the graph are reserved. Inlining is
    onnx-ir's ``InlinePass`` (the reference inliner of the ONNX project),
    wrapped to reserve names across scopes and to give pass-through outputs
    their own Identity (removed later by ``eliminate-identity``). A function
    whose opset imports disagree with the model's is left as a function.

    Constant If: an If whose condition is an initializer (not a graph input)
    or a Constant node, of dtype bool with one element, is replaced by the
    nodes of the branch it takes; the branch's initializers move to the
    parent graph. Branch values that clash with a name in the parent's scopes
    are renamed; outer-scope values the branch read stay the same values. The
    If's outputs map to the branch's outputs; a graph output keeps its name
    (``ir.bypass``, or an Identity when the branch output is an outer value).
    Nested constant Ifs fold too. An If in a function body whose branch holds
    initializers is left alone (functions have no initializers).

    Unused functions: removed with ``dce``'s reachability (functions no node
    of the main graph reaches, transitively), the same rule ``dce`` applies.

    Exact: outputs and the output signature are unchanged. O(n) in nodes:
    onnx-ir's name probing (quadratic in calls of one function) is replaced
    for the call by one that remembers suffixes. Dead values left behind (the
    condition, outer values only the discarded branch read, opset imports of
    inlined domains) are ``dce``'s to remove.

    Stats: ``inlined`` (call sites of the input model), ``ifs`` (If nodes
    folded), ``functions`` (unused functions removed).

    Raises:
        PassError: the model-local functions call each other recursively
            (checked before anything changes). A call with a graph-valued
            attribute is not inlined (onnx-ir's inliner refuses it).
    """

    Options = InlineOptions
    preserves = frozenset({"topo-sorted"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        stats = {"inlined": 0, "ifs": 0, "functions": 0}
        if self.options.functions:
            stats["inlined"] = _inline_functions(model)
        if self.options.constant_if:
            stats["ifs"] = _fold_constant_ifs(model)
        if self.options.remove_unused and model.functions:
            used = used_functions(model)
            for key in [k for k in model.functions if k not in used]:
                del model.functions[key]
                stats["functions"] += 1
        _LOG.debug("inline: %s", stats)
        return PassResult(modified=any(stats.values()), stats=stats)

"""``apply_pruning``: remove units of coupled groups from a model, validated first.

The whole plan is checked before anything changes (Torch-Pruning's rule:
validate the group, then mutate). Each constant is sliced once, with the
union of every group's removed elements in original coordinates, so groups
that share a tensor (sections of one Concat, packed QKV) compose. A
constant read by nodes that need different edits (O1's shared Split sizes
and Reshape targets, a weight tied to an embedding) is copied per reader
(copy-on-write). Residual branches are bypassed and their dead nodes
removed. The shapes of intermediate values are cleared and inferred again;
graph inputs and outputs keep their signature.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from graphopt import ir
from graphopt.analysis.groups.find import find_groups
from graphopt.analysis.groups.model import KINDS, CoupledGroup, GroupAnalysis
from graphopt.errors import InputError

__all__ = ["apply_pruning"]


class _Mods:
    """What one reader needs done to one constant: removed indices per axis, decrements per entry."""

    def __init__(self) -> None:
        self.remove: dict[int, set[int]] = defaultdict(set)
        self.dec: dict[int, int] = defaultdict(int)

    def key(self) -> tuple:
        return (tuple(sorted((a, tuple(sorted(v))) for a, v in self.remove.items() if v)),
                tuple(sorted((i, d) for i, d in self.dec.items() if d)))

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = array
        for axis, idx in sorted(self.remove.items()):
            if idx:
                out = np.delete(out, sorted(idx), axis=axis)
        if any(self.dec.values()):
            out = np.array(out, copy=True)
            flat = out.reshape(-1)
            for i, d in self.dec.items():
                flat[i] -= d
        return np.ascontiguousarray(out).reshape(out.shape)  # (ascontiguousarray makes a scalar 1-D)


def _check_keep(g: CoupledGroup, indices: Sequence[int], allow_empty: bool) -> list[int]:
    """The removed unit indices of ``g`` for the kept ``indices`` (validated)."""
    try:
        kept = [int(i) for i in indices]
    except (TypeError, ValueError) as e:
        raise InputError(f"group {g.name}: keep must be a list of unit indices, got {indices!r}") from e
    if any(i != j for i, j in zip(kept, indices)) or kept != sorted(set(kept)):
        raise InputError(f"group {g.name}: keep must be sorted, unique integers, got {list(indices)!r}")
    if kept and (kept[0] < 0 or kept[-1] >= g.size):
        raise InputError(f"group {g.name}: unit indices must lie in [0, {g.size}), got {kept!r}")
    if g.kind == "layer":
        if kept not in ([], [0]):
            raise InputError(f"group {g.name} is a layer: keep [] removes it, [0] keeps it; got {kept!r}")
    elif not kept and not allow_empty:
        raise InputError(f"group {g.name}: keeping no unit removes the whole {g.kind} group; keep at least one "
                         "(or remove the layer)")
    keep_set = set(kept)
    return [u for u in range(g.size) if u not in keep_set]


def _values(graph: ir.Graph) -> tuple[dict[str, ir.Value], dict[str, ir.Node]]:
    values: dict[str, ir.Value] = dict(graph.initializers)
    nodes: dict[str, ir.Node] = {}
    for node in graph:
        if node.name:
            nodes[node.name] = node
        for out in node.outputs:
            if out.name:
                values.setdefault(out.name, out)
    return values, nodes


def apply_pruning(model: ir.Model, keep: Mapping[str, Sequence[int]], analysis: GroupAnalysis | None = None,
                  *, allow_empty: bool = False, images: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Keep only the listed units of each named group; the model changes in place.

    Args:
        model: the IR model the groups were found on.
        keep: group name -> sorted unit indices to keep (``range(size)``
            keeps all; kind ``layer``: ``[]`` removes the residual branch,
            ``[0]`` keeps it). Groups not named are kept whole.
        analysis: the :func:`find_groups` result for ``model`` (all kinds);
            None finds it here.
        allow_empty: accept an empty keep list for non-layer groups (the
            projections then have zero columns; onnxruntime may refuse such a model).
        images: passed to :func:`find_groups` when ``analysis`` is None (the sample image sizes the groups
            were found at).

    Raises:
        InputError: an unknown group name, indices out of range, unsorted or
            repeated, an empty keep list, units removed from two exclusive
            groups (:attr:`CoupledGroup.exclusive`), a tensor or node of the plan missing
            or of other dims than the analysis saw, a count that would drop
            below one. Raised before anything is modified.
    """
    if analysis is None:
        analysis = find_groups(model, KINDS, images=images)
    by_name = {g.name: g for g in analysis.groups}
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        names = ", ".join(sorted(by_name)[:12]) + (" ..." if len(by_name) > 12 else "")
        raise InputError(f"unknown group(s) {', '.join(unknown)}; the model's groups are: {names or 'none'}")
    removed = {name: _check_keep(by_name[name], idx, allow_empty) for name, idx in keep.items()}
    removed = {name: units for name, units in removed.items() if units}
    for name in removed:
        both = sorted(set(by_name[name].exclusive) & set(removed))
        if both:
            raise InputError(f"groups {name} and {', '.join(both)} prune the same tensors in two forms (a KV head "
                             "with its query group, query heads within every group); remove units of one of them")
    if not removed:
        return
    graph = model.graph
    values, nodes = _values(graph)
    tensor_mods: dict[ir.Value, dict[str, _Mods]] = defaultdict(lambda: defaultdict(_Mods))
    attr_mods: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    layers: list[CoupledGroup] = []
    for name, units in removed.items():
        g = by_name[name]
        if g.kind == "layer":
            _check_layer(g, nodes, values)
            layers.append(g)
            continue
        for s in g.slices:
            value = values.get(s.tensor)
            array_shape = None if value is None or not ir.is_constant(value) else tuple(ir.const_tensor(value).shape)
            if array_shape is None or s.axis >= len(array_shape) or array_shape[s.axis] < s.start + g.size * s.unit:
                raise InputError(f"group {name}: constant {s.tensor} is missing or not of the dims the analysis saw "
                                 f"(axis {s.axis} needs {s.start + g.size * s.unit}); find the groups again")
            for reader in s.readers or tuple(u.node.name for u in value.uses()):
                idx = tensor_mods[value][reader].remove[s.axis]
                for u in units:
                    idx.update(range(s.start + u * s.unit, s.start + (u + 1) * s.unit))
        for e in g.edits:
            if e.attribute is None or e.attribute == "value":
                value = values.get(e.target) if e.attribute is None else (
                    nodes[e.target].outputs[0] if e.target in nodes else None)
                if value is None or ir.const_array(value) is None:
                    raise InputError(f"group {name}: shape constant {e.target} is missing; find the groups again")
                for reader in e.readers or tuple(u.node.name for u in value.uses()):
                    tensor_mods[value][reader].dec[e.index] += e.per_unit * len(units)
            else:
                node = nodes.get(e.target)
                if node is None or e.attribute not in node.attributes:
                    raise InputError(f"group {name}: node {e.target} or its attribute {e.attribute} is missing")
                attr_mods[e.target, e.attribute][e.index] += e.per_unit * len(units)
    _check_counts(tensor_mods, attr_mods, nodes, allow_empty)
    # -- mutate ---------------------------------------------------------------
    already_dead = {n for n in graph if _dead(n)}
    clones = _private_concats(graph, tensor_mods, nodes)
    for value, per_reader in tensor_mods.items():
        _rewrite_constant(graph, value, per_reader)
    for (target, attribute), decs in attr_mods.items():
        _rewrite_attribute(nodes[target], attribute, decs)
    for g in layers:
        _drop_branch(graph, g, nodes, values)
    if layers:  # what only dropped branches read (shared shape arithmetic, copied Concats) goes too
        read: set[ir.Value] = set()
        for node in reversed(list(graph)):
            if node not in already_dead and _dead(node):
                read.update(v for v in node.inputs if v is not None)
                graph.remove(node, safe=True)
        _drop_unread(graph, read)
    _refresh_shapes(model)


def _dead(node: ir.Node) -> bool:
    return not any(out.uses() or out.is_graph_output() for out in node.outputs)


def _check_layer(g: CoupledGroup, nodes: dict[str, ir.Node], values: dict[str, ir.Value]) -> None:
    add = nodes.get(g.residual_add or "")
    y = values.get(g.consumer_input)
    if add is None or y is None or y not in add.inputs:
        raise InputError(f"group {g.name}: residual Add {g.residual_add} or its branch input is missing; "
                         "find the groups again")


def _check_counts(tensor_mods: dict, attr_mods: dict, nodes: dict[str, ir.Node], allow_empty: bool) -> None:
    floor = 0 if allow_empty else 1
    for value, per_reader in tensor_mods.items():
        array = ir.const_array(value)
        for reader, mods in per_reader.items():
            for i, d in mods.dec.items():
                if i >= array.size or int(array.reshape(-1)[i]) - d < floor:
                    raise InputError(f"shape constant {value.name}: entry {i} would drop below {floor}")
    for (target, attribute), decs in attr_mods.items():
        current = nodes[target].attributes[attribute].value
        entries = list(current) if isinstance(current, (list, tuple)) else [current]
        for i, d in decs.items():
            if i >= len(entries) or int(entries[i]) - d < floor:
                raise InputError(f"attribute {attribute} of {target}: entry {i} would drop below {floor}")


def _private_concats(graph: ir.Graph, tensor_mods: dict, nodes: dict[str, ir.Node]) -> list[ir.Node]:
    """Resolve ``"concat|reshape"`` readers: the Concat itself when every
    Reshape reading it needs the same edits, else a copy of the Concat per
    Reshape. Returns the copies."""
    clones: list[ir.Node] = []
    paths: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for value, per_reader in tensor_mods.items():
        for reader, mods in per_reader.items():
            if "|" in reader:
                concat, rest = reader.split("|", 1)
                reshape, position = _position(rest)
                paths[concat][reshape].append((value, position, mods.key()))
    taken = ir.value_names(graph)
    for concat_name, by_reshape in paths.items():
        concat = nodes[concat_name]
        readers = {u.node.name for u in concat.outputs[0].uses()}
        keys = {tuple(sorted((v.name, p, k) for v, p, k in items)) for items in by_reshape.values()}
        shared = readers <= set(by_reshape) and len(keys) == 1 and not concat.outputs[0].is_graph_output()
        for reshape_name in by_reshape:
            target = concat_name
            if not shared:
                reshape = nodes[reshape_name]
                clone = ir.Node(concat.domain, concat.op_type, list(concat.inputs),
                                attributes=list(concat.attributes.values()), name=f"{concat_name}/{reshape_name}")
                out = clone.outputs[0]
                out.name = ir.unique_name(f"{concat.outputs[0].name}_pruned", taken)
                out.dtype = concat.outputs[0].dtype
                graph.insert_before(reshape, clone)
                for use in list(concat.outputs[0].uses()):
                    if use.node is reshape:
                        reshape.replace_input_with(use.idx, out)
                target = clone.name
                nodes[target] = clone
                clones.append(clone)
            for value, position, _ in by_reshape[reshape_name]:
                per_reader = tensor_mods[value]
                suffix = "" if position is None else f"#{position}"
                mods = per_reader.pop(f"{concat_name}|{reshape_name}{suffix}", None)
                if mods is not None:
                    merged = per_reader[target + suffix]
                    if not shared or not merged.key()[0] and not merged.key()[1]:
                        for axis, idx in mods.remove.items():
                            merged.remove[axis].update(idx)
                        for i, d in mods.dec.items():
                            merged.dec[i] += d
    for concat_name in paths:
        concat = nodes[concat_name]
        if not concat.outputs[0].uses() and not concat.outputs[0].is_graph_output():
            graph.remove(concat, safe=True)
    return clones


def _position(reader: str) -> tuple[str, int | None]:
    """``("node", k)`` for a reader ``"node#k"`` (input ``k`` of the node only), else ``(reader, None)``."""
    name, sep, tail = reader.rpartition("#")
    return (name, int(tail)) if sep and tail.isdigit() else (reader, None)


def _mods_of(per_reader: dict[str, _Mods], node: ir.Node, idx: int) -> _Mods | None:
    """The edit input ``idx`` of ``node`` needs: by ``"node#idx"`` first, then by node name."""
    return per_reader.get(f"{node.name}#{idx}") or per_reader.get(node.name)


def _rewrite_constant(graph: ir.Graph, value: ir.Value, per_reader: dict[str, _Mods]) -> None:
    """Edit ``value`` in place when every reader needs the same edit; else a copy per reader
    (readers ``"node#k"`` name one input of a node that reads ``value`` at several)."""
    array = ir.const_array(value)
    uses = value.uses()
    needed = [_mods_of(per_reader, u.node, u.idx) for u in uses]
    keys = {mods.key() for mods in per_reader.values()}
    producer = value.producer()
    if (len(keys) == 1 and all(m is not None for m in needed) and value.is_initializer()
            and not value.is_graph_output() and not value.is_graph_input()):
        new = next(iter(per_reader.values())).apply(array)
        value.const_value = ir.Tensor(new, name=value.name)
        value.shape = ir.Shape(new.shape)
        return
    by_key: dict[tuple, ir.Value] = {}
    taken = ir.value_names(graph)
    for use in list(uses):
        mods = _mods_of(per_reader, use.node, use.idx)
        if mods is None:
            continue
        key = mods.key()
        if key not in by_key:
            by_key[key] = ir.add_initializer(graph, mods.apply(array), f"{value.name}_pruned", taken)
        use.node.replace_input_with(use.idx, by_key[key])
    if producer is not None and producer.op_type == "Constant" and not value.uses() and not value.is_graph_output():
        graph.remove(producer, safe=True)


def _rewrite_attribute(node: ir.Node, attribute: str, decs: dict[int, int]) -> None:
    attr = node.attributes[attribute]
    if attr.type == ir.AttributeType.INTS:
        entries = [int(v) for v in attr.value]
        for i, d in decs.items():
            entries[i] -= d
        node.attributes[attribute] = ir.Attr(attribute, ir.AttributeType.INTS, entries)
    else:
        node.attributes[attribute] = ir.Attr(attribute, ir.AttributeType.INT, int(attr.value) - decs.get(0, 0))


def _drop_branch(graph: ir.Graph, g: CoupledGroup, nodes: dict[str, ir.Node], values: dict[str, ir.Value]) -> None:
    """Make the residual Add's output the residual stream itself and remove the dead branch."""
    add = nodes[g.residual_add or ""]
    y = values[g.consumer_input]
    x = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    if not ir.bypass(add, add.outputs[0], x):
        raise InputError(f"group {g.name}: the residual Add's output cannot be replaced by its input")
    read: set[ir.Value] = set()
    for name in (g.residual_add, *reversed(g.branch_nodes)):
        node = nodes.get(name or "")
        if node is None or node.graph is not graph:
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs):
            continue
        read.update(v for v in node.inputs if v is not None)
        graph.remove(node, safe=True)
    _drop_unread(graph, read)


def _drop_unread(graph: ir.Graph, read: set[ir.Value]) -> None:
    """Remove the initializers in ``read`` that nothing reads any more."""
    for value in read:
        if value.is_initializer() and not value.uses() and not value.is_graph_output() and not value.is_graph_input():
            graph.initializers.pop(value.name, None)


def _refresh_shapes(model: ir.Model) -> None:
    """Clear the shapes of intermediate values and infer them again; graph
    outputs keep their declared dtypes and shapes (the signature does not change)."""
    declared = [(v, v.dtype, v.shape) for v in model.graph.outputs]
    for node in model.graph:
        for out in node.outputs:
            if not out.is_graph_output():
                out.shape = None
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            value.shape = ir.Shape(value.const_value.shape)
    ir.infer_shapes(model)
    for value, dtype, shape in declared:
        value.dtype, value.shape = dtype, shape

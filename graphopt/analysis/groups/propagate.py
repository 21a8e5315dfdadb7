"""Channel propagation: the fixpoint that collects one coupled group.

A *site* says where a group's units live on one value: an axis, the number
of elements per unit on it, and the starts of the group's sections (one
section for most values, three on a packed QKV projection's output). From a
seed (a producer's output) the builder visits every node next to a value
with a site and applies that node's rule (:mod:`.rules`), which puts sites
on the node's other inputs and outputs, records tensor slices and shape
edits, or refuses. Coupling is transitive, so the group is the closure:
DepGraph's dependency propagation (Fang et al., CVPR 2023), here over the
ONNX graph, both directions.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from graphopt import ir
from graphopt.analysis.groups.dims import Dims
from graphopt.analysis.groups.model import ShapeEdit, Slice

__all__ = ["Site", "Refuse", "Regranulate", "Builder", "MAX_RESTARTS", "make_site", "mixed_ok"]

MAX_RESTARTS = 4


@dataclass(frozen=True)
class Site:
    """Where the group's units sit on a value: unit ``u`` of section ``s``
    covers elements ``[s + u*unit, s + (u+1)*unit)`` of ``axis`` (non-negative).

    ``units``, when not empty, gives each section its own unit (parallel to
    ``starts``): a packed Q/K/V projection of grouped-query attention, where
    one unit (a KV head with its group) is ``n_rep * head_dim`` columns of Q
    and ``head_dim`` columns of K and of V. Such *mixed* sites are allowed
    only on values that :meth:`Builder.put` proves every neighbour reads by
    section (see :func:`mixed_ok`); ``unit`` is then the first section's."""

    axis: int
    unit: int
    starts: tuple[int, ...]
    units: tuple[int, ...] = ()

    def unit_at(self, start: int) -> int:
        """The unit of the section that begins at ``start``."""
        return self.units[self.starts.index(start)] if self.units else self.unit

    def sections(self) -> dict[int, int]:
        """start -> unit of every section."""
        return {s: self.unit_at(s) for s in self.starts}


def make_site(axis: int, sections: dict[int, int]) -> Site:
    """A :class:`Site` from ``{start: unit}`` (mixed only when the units differ)."""
    starts = tuple(sorted(sections))
    units = tuple(sections[s] for s in starts)
    if len(set(units)) <= 1:
        return Site(axis, units[0], starts)
    return Site(axis, units[0], starts, units)


def mixed_ok(value: ir.Value, axis: int, rank: int | None) -> str | None:
    """None when every neighbour of ``value`` reads a mixed site section by
    section: its producer is a MatMul by a constant 2-D weight (the site on
    its output's last axis slices weight columns per section) and its
    readers are Splits along ``axis`` (``rank``: the value's); else the reason."""
    producer = value.producer()
    plain = ("", "ai.onnx")
    if producer is not None:
        w = producer.inputs[1] if len(producer.inputs) > 1 else None
        if not (producer.op_type == "MatMul" and producer.domain in plain and w is not None and ir.is_constant(w)
                and rank is not None and axis == rank - 1):
            return f"{producer.op_type} {producer.name} produces sections of different unit sizes in {value.name}"
    for use in value.uses():
        node = use.node
        split_axis = node.attributes.get("axis")
        at = int(split_axis.value) if split_axis is not None else 0
        if not (node.op_type == "Split" and node.domain in plain and use.idx == 0 and rank is not None
                and (at + rank if at < 0 else at) == axis):
            return f"{node.op_type} {node.name} reads sections of different unit sizes in {value.name}"
    return None


class Refuse(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A rule cannot prove the group safe; carries the reason."""


class Regranulate(Exception):  # noqa: N818
    """A rule needs coarser units at a site: ``need`` elements (a multiple of
    the current unit there) per unit, e.g. a Reshape that splits heads of
    head_dim elements. The builder restarts from the seed."""

    def __init__(self, current: int, need: int) -> None:
        super().__init__(f"regranulate {current} -> {need}")
        self.factor = math.lcm(current, need) // current


class Builder:
    """Collects one group from a seed site (see the module doc).

    Attributes:
        dims: concrete dims of the model's values.
        size: units per section.
        sites: value -> :class:`Site`.
        slices / edits: node -> what that node's rule recorded (rules re-run
            when a neighbouring site grows; the last run's records stand).
        producers / consumers: node -> True, in discovery order.
        consumer_inputs: consumer node -> the value entering it.
        tags: facts the rules noticed (``"heads"``, ``"conv"``, ``"gqa"``).
        pending: node -> a refusal that stands unless a later run of the
            node's rule lifts it (a check that needs the whole group).
        repeats: Expand node -> how many query heads share each unit
            (``n_rep`` of a GQA ``repeat_kv``, :mod:`.rules_gqa`).
        within: the group is GQA query heads within their KV groups (unit
            ``j``: query head ``j`` of every group; :mod:`.rules_gqa`).
    """

    def __init__(self, dims: Dims, size: int, within: bool = False) -> None:
        self.dims = dims
        self.size = size
        self.within = within
        self.sites: dict[ir.Value, Site] = {}
        self.slices: dict[ir.Node, list[Slice]] = {}
        self.edits: dict[ir.Node, list[ShapeEdit]] = {}
        self.producers: dict[ir.Node, bool] = {}
        self.consumers: dict[ir.Node, bool] = {}
        self.consumer_inputs: dict[ir.Node, ir.Value] = {}
        self.tags: set[str] = set()
        self.pending: dict[ir.Node, str] = {}
        self.repeats: dict[ir.Node, int] = {}
        self.queue: deque[ir.Node] = deque()
        self.queued: set[ir.Node] = set()
        self.visited: set[ir.Node] = set()

    # sites --------------------------------------------------------------
    def site(self, value: ir.Value | None) -> Site | None:
        """The site on ``value``, if any."""
        return None if value is None else self.sites.get(value)

    def put(self, value: ir.Value, site: Site) -> None:
        """Record ``site`` on ``value`` (merging sections), queue its neighbours.

        Raises:
            Refuse: the value is a graph output or input, or already carries
                the group on another axis or with another unit.
        """
        if value.is_graph_output():
            raise Refuse(f"{value.name} is a graph output (the output signature never changes)")
        if value.is_graph_input():
            raise Refuse(f"the units reach graph input {value.name}")
        if ir.is_constant(value):
            raise Refuse(f"the units reach constant {value.name} outside a rule that slices it")
        old = self.sites.get(value)
        if old is not None:
            sections = old.sections()
            clash = old.axis != site.axis or any(sections.get(s, u) != u for s, u in site.sections().items())
            if clash:
                raise Refuse(f"{value.name} carries the units on axis {old.axis} (unit {old.unit}) and on axis "
                             f"{site.axis} (unit {site.unit})")
            sections.update(site.sections())
            if len(sections) == len(old.starts):
                return
            site = make_site(site.axis, sections)
        if site.units:
            reason = mixed_ok(value, site.axis, self.dims.rank(value))
            if reason is not None:
                raise Refuse(reason)
        dims = self.dims.of(value)
        if dims is not None and site.axis < len(dims) and dims[site.axis] is not None:
            for s in site.starts:
                if s + self.size * site.unit_at(s) > dims[site.axis]:
                    raise Refuse(f"{value.name}: the units overrun axis {site.axis} ({dims[site.axis]})")
            ends = sorted(site.starts)
            for a, b in zip(ends, ends[1:]):
                if a + self.size * site.unit_at(a) > b:
                    raise Refuse(f"{value.name}: two sections of the units overlap on axis {site.axis}")
        self.sites[value] = site
        producer = value.producer()
        if producer is not None:
            self.enqueue(producer)
        for use in value.uses():
            self.enqueue(use.node)

    def put_or_slice(self, node: ir.Node, value: ir.Value, site: Site) -> None:
        """:meth:`put`, or for a constant input of ``node`` (a bias that an
        unfolded Reshape/Unsqueeze brings to rank, as paddle2onnx exports
        it) a ``param`` slice of it."""
        if ir.is_constant(value) and not value.is_graph_input():
            self.slice_const(node, value, site.axis, site, "param")
        else:
            self.put(value, site)

    def enqueue(self, node: ir.Node) -> None:
        """Queue ``node``'s rule (once until it runs)."""
        if node not in self.queued:
            self.queued.add(node)
            self.queue.append(node)

    # records -----------------------------------------------------------
    def slice_const(self, node: ir.Node, value: ir.Value, axis: int, site: Site, role: str,
                    starts: tuple[int, ...] | None = None) -> None:
        """Record slices of constant ``value`` (read by ``node``) on ``axis``,
        one per section of ``site`` (or per start in ``starts``)."""
        tensor_name = value.name or ""
        dims = self.dims.of(value)
        for s in (site.starts if starts is None else starts):
            unit = site.unit_at(s) if starts is None else site.unit
            if dims is None or axis >= len(dims) or s + self.size * unit > dims[axis]:
                raise Refuse(f"constant {tensor_name} of {node.name} is too small for the units on axis {axis}")
            self.slices.setdefault(node, []).append(Slice(tensor_name, axis, s, unit, role, (node.name or "",)))

    def edit(self, node: ir.Node, edit: ShapeEdit) -> None:
        """Record a shape edit for ``node``'s rule."""
        self.edits.setdefault(node, []).append(edit)

    def producer(self, node: ir.Node) -> None:
        """Note ``node`` as a producer of the units (its weight's output axis is sliced)."""
        self.producers[node] = True

    def consumer(self, node: ir.Node, value: ir.Value) -> None:
        """Note ``node`` as a consumer of the units, reading them from ``value``."""
        self.consumers[node] = True
        self.consumer_inputs.setdefault(node, value)

    # the fixpoint ---------------------------------------------------------
    def run(self, rule_of) -> None:  # noqa: ANN001 - Callable[[ir.Node], Callable]
        """Apply rules until no site changes.

        Raises:
            Refuse: some node has no rule or its rule refuses.
            Regranulate: some rule needs coarser units (the caller restarts).
        """
        steps = 0
        while self.queue:
            node = self.queue.popleft()
            self.queued.discard(node)
            steps += 1
            if steps > 200_000:
                raise Refuse("channel propagation did not settle")
            self.visited.add(node)
            rule = rule_of(node)
            if rule is None:
                domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
                raise Refuse(f"no channel rule for {domain}{node.op_type} ({node.name})")
            self.slices.pop(node, None)
            self.edits.pop(node, None)
            self.pending.pop(node, None)
            rule(self, node)
        if self.pending:
            raise Refuse(next(iter(self.pending.values())))

"""The data model of coupled-channel groups: what must shrink together.

A coupled group (DepGraph, Fang et al., CVPR 2023; Torch-Pruning's
``DependencyGraph``) is every slice of every constant tensor, and every
constant or attribute that counts units, that must change together when some
of the group's units (attention heads, FFN neurons, conv channels, a whole
residual branch) are removed. :func:`describe` renders an analysis as a
deterministic text for golden tests and reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Slice", "ShapeEdit", "CoupledGroup", "Refusal", "GroupAnalysis", "describe", "KINDS"]

KINDS = ("heads", "kv-heads", "query-heads", "ffn", "channels", "layer")
"""Every group kind :func:`graphopt.analysis.groups.find_groups` reports."""


@dataclass(frozen=True)
class Slice:
    """One run of one axis of a constant tensor that shrinks with the group.

    Unit ``u`` of the group occupies elements ``[start + u*unit, start + (u+1)*unit)``
    of ``axis`` (a packed QKV weight ``[384, 1152]`` has three slices on axis 1
    with starts 0, 384 and 768).

    Attributes:
        tensor: initializer name (or the name of a ``Constant`` node's output).
        axis: non-negative axis of that tensor.
        start: offset of this group's section on the axis.
        unit: elements per prunable unit (head_dim for heads, 1 for neurons/channels).
        role: ``"out"`` (a producer's output columns/channels), ``"in"`` (a
            consumer's input rows/channels) or ``"param"`` (bias, norm scale, BN statistics).
        readers: the nodes (by name) whose read of ``tensor`` this slice
            serves; another reader of the same tensor gets its own copy when
            the group is applied (copy-on-write).
    """

    tensor: str
    axis: int
    start: int
    unit: int
    role: str
    readers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShapeEdit:
    """A constant or an attribute that counts the group's units.

    Attributes:
        target: initializer name (int64 tensor), ``Constant`` node name (with
            ``attribute="value"``) or node name for an attribute.
        attribute: None for an int64 initializer; ``"value"`` for a
            ``Constant`` node's tensor; else the ints/int attribute
            (``num_heads``, ``group``, ``split``, ``qkv_hidden_sizes``).
        index: position in the int64 tensor / ints attribute (0 for a scalar attribute).
        per_unit: how much that entry decreases per removed unit (Split sizes
            ``[384, 384, 384]`` shrink by head_dim per removed head; ``num_heads`` by 1).
        readers: for tensor targets, the nodes whose read the edit serves
            (copy-on-write); ``"concat|reshape"`` names a piece of a
            Concat-built Reshape target as read through that Reshape (the
            Concat is copied when Reshapes needing different edits share it).
    """

    target: str
    attribute: str | None
    index: int
    per_unit: int
    readers: tuple[str, ...] = ()


@dataclass
class CoupledGroup:
    """A prunable dimension and everything that must shrink with it.

    Attributes:
        name: stable, readable: ``layer3.attn.heads``, ``layer3.attn.kv-heads``
            (grouped-query attention: a unit is a KV head with its query group), ``layer3.ffn``,
            ``conv:<node>``, ``layer3.attn`` / ``layer3.mlp`` (kind ``layer``).
        kind: ``heads`` | ``kv-heads`` | ``query-heads`` | ``ffn`` | ``channels`` | ``layer``
            (``query-heads``: grouped-query attention's query heads within
            their KV group, a unit is one query head of every group).
        size: number of units (1 for a layer branch).
        slices: tensor slices removed with each unit.
        edits: shape constants and attributes decreased per removed unit.
        producers: nodes whose outputs carry the units (up/gate projections,
            Q/K/V MatMul, Conv); for a layer, the branch's nodes that read
            the residual stream.
        consumers: nodes whose input rows/channels shrink (down projection,
            attention output projection, next Conv); for a layer, the residual Add.
        consumer_input: the value entering the first consumer, units on its
            last axis (MatMul/Gemm) or axis 1 (Conv); for a layer, the
            branch output. What Wanda/FLAP scores and least-squares
            reconstruction read.
        weights_per_unit: constant elements removed per unit (for a layer,
            all constant elements only the branch reads).
        residual_add: kind ``layer``: the residual Add node whose branch input is dropped.
        branch_nodes: kind ``layer``: the nodes removed with the branch.
        exclusive: groups that share this one's tensors in another form
            (a GQA layer's ``kv-heads`` and ``query-heads``): one plan may
            remove units of only one of them (their shape edits do not add up).
    """

    name: str
    kind: str
    size: int
    slices: tuple[Slice, ...]
    edits: tuple[ShapeEdit, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    consumer_input: str
    weights_per_unit: int
    residual_add: str | None = None
    branch_nodes: tuple[str, ...] = field(default=())
    exclusive: tuple[str, ...] = field(default=())


@dataclass
class Refusal:
    """A site left as it is, with the reason (``graphopt explain``'s style).

    Attributes:
        site: readable place (``layer2.ffn``, ``linear:<node>``, ``conv:<node>``).
        kind: the kind the group would have had.
        reason: what could not be proven safe, naming the node or value.
    """

    site: str
    kind: str
    reason: str


@dataclass
class GroupAnalysis:
    """The result of :func:`graphopt.analysis.groups.find_groups`.

    Attributes:
        groups: the coupled groups.
        refused: the sites left whole, with reasons.
        dims: value name -> concrete dims at the analysis's sample binding (``dims(name)``; None when unknown),
            e.g. a Conv's output positions where the model's own shapes are symbolic; None when not kept.
    """

    groups: list[CoupledGroup]
    refused: list[Refusal]
    dims: Callable[[str], tuple[int | None, ...] | None] | None = field(default=None, repr=False, compare=False)

    def group(self, name: str) -> CoupledGroup:
        """The group called ``name`` (KeyError when absent)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def counts(self) -> dict[str, int]:
        """Number of groups per kind."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.kind] = out.get(g.kind, 0) + 1
        return out


def describe(analysis: GroupAnalysis, slices: bool = True) -> str:
    """A compact deterministic text of an analysis: one block per group
    (name, kind, size, producers, consumers, consumer input, the groups it
    excludes, and with
    ``slices`` the slices and edits), then one line per refusal."""
    lines: list[str] = []
    for g in analysis.groups:
        lines.append(f"group {g.name} kind={g.kind} size={g.size} weights/unit={g.weights_per_unit}")
        lines.append(f"  producers: {', '.join(g.producers)}")
        lines.append(f"  consumers: {', '.join(g.consumers)}")
        lines.append(f"  consumer_input: {g.consumer_input}")
        if g.residual_add:
            lines.append(f"  residual_add: {g.residual_add} (branch of {len(g.branch_nodes)} nodes)")
        if g.exclusive:
            lines.append(f"  exclusive: {', '.join(g.exclusive)}")
        if slices:
            for s in g.slices:
                lines.append(f"  slice {s.role} {s.tensor} axis={s.axis} start={s.start} unit={s.unit}")
            for e in g.edits:
                attr = f".{e.attribute}" if e.attribute else ""
                lines.append(f"  edit {e.target}{attr}[{e.index}] -{e.per_unit}/unit")
    for r in analysis.refused:
        lines.append(f"refused {r.site} kind={r.kind}: {r.reason}")
    return "\n".join(lines) + "\n"

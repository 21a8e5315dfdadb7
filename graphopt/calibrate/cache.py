"""The cache of collected activation statistics, keyed by model content.

:class:`StatsCache` lets pruning, low-rank and a second pass over an unchanged
model read the same :class:`~graphopt.calibrate.stats.ChannelStats`;
:func:`model_fingerprint` is its content key.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from graphopt import ir

if TYPE_CHECKING:
    from graphopt.calibrate.stats import StatRequest

__all__ = ["StatsCache", "model_fingerprint"]


def model_fingerprint(model: ir.Model) -> str:
    """A digest of ``model``'s content: every graph's nodes (op, domain,
    value names, non-graph attributes), its inputs and outputs, and every
    initializer's name, dtype, shape and bytes (BLAKE2b; ~0.1 s per 100 MB).
    Equal for a model and its clone; changes when any weight or node does."""
    h = hashlib.blake2b(digest_size=16)
    for graph in ir.all_graphs(model):
        h.update(b"G" + "|".join(v.name or "" for v in graph.inputs).encode())
        h.update(b">" + "|".join(v.name or "" for v in graph.outputs).encode())
        for node in graph:
            h.update(f"N{node.domain}:{node.op_type}(".encode())
            h.update(",".join(v.name if v is not None else "" for v in node.inputs).encode())
            h.update(b")->" + ",".join(v.name or "" for v in node.outputs).encode())
            for name, attr in sorted(node.attributes.items()):
                if attr.type.name not in ("GRAPH", "GRAPHS"):
                    h.update(f"{name}={attr.value!r};".encode())
        for name, value in sorted(graph.initializers.items()):
            tensor = value.const_value
            h.update(f"I{name}:{value.dtype}:{value.shape}".encode())
            if tensor is not None:
                h.update(tensor.tobytes())
    return h.hexdigest()


class StatsCache:
    """Collected :class:`ChannelStats` keyed by (model fingerprint, reference
    model fingerprint, calibration data object, mask, request).

    The data object is keyed by identity and kept alive by the cache (so its
    id is not reused). A cached entry answers a request it covers
    (:meth:`StatRequest.covers`: same value and axis, Gram and cross products
    included when asked).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, list[tuple[StatRequest, Any]]] = {}
        self._data: dict[int, object] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_context(cls, ctx: Any, model: ir.Model) -> StatsCache:
        """The cache kept in ``ctx.analyses`` (a
        :class:`~graphopt.passmanager.context.AnalysisCache`) under
        ``"activation-stats"`` for ``model``: dropped with the other analyses
        when a pass modifies the model, unless the pass lists
        ``"activation-stats"`` in its ``preserves`` (safe: entries are keyed
        by content, so a changed model misses and recomputes)."""
        return ctx.analyses.get("activation-stats", model, lambda _m: cls())

    def _key(self, fingerprint: str, reference: str | None, data: object, mask: str | None, value: str) -> tuple:
        self._data[id(data)] = data
        return (fingerprint, reference, id(data), mask, value)

    def lookup(self, key: tuple, request: StatRequest) -> Any:
        """The cached entry covering ``request``, or None."""
        for have, entry in self._entries.get(key, ()):
            if have.covers(request):
                self.hits += 1
                return entry
        self.misses += 1
        return None

    def store(self, key: tuple, request: StatRequest, entry: Any) -> None:
        """Remember ``entry`` for ``request``."""
        self._entries.setdefault(key, []).insert(0, (request, entry))

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

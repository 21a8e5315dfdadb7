"""Dim equalities a no-op rewrite proves, written back into the IR's shapes.

A no-op that ``eliminate-noops`` bypasses (an Identity, a Reshape to its
input's own shape, a Cast to the same dtype, ...) outputs the tensor it
reads, so each dim of its output equals the input's dim at the same
position. ONNX shape inference often does not know that: it names each dim
it cannot relate to anything with a fresh symbol (``unk__30`` on the output,
``unk__26`` on the input), or leaves it anonymous. Once the readers of the
output read the input, a new inference would give them the input's symbols:
the rewrite "could tell inference more", and ``fold-shapes`` would infer the
whole model again (see :data:`graphopt.passes.cleanup.shapes.SHAPES_CURRENT`).

:class:`DimEqualities` records those equalities and writes them into the
shapes instead: each ``unk__N`` symbol proved equal to an int, to a named dim
(``sequence``) or to another ``unk__N`` is replaced by one representative
(an int before a name before an ``unk__N``) in every intermediate value's
shape. That is sound (the dims are equal at run time) and it is what a new
inference gives the rewired readers. Named dims (graph-input dims such as
``batch``) are never renamed and ints never replace them, so dynamic dims stay
symbolic; graph inputs, outputs and initializers keep their declared shapes.

Technique: union-find over dim symbols, the way onnxruntime's symbolic shape
inference merges the symbols it proves equal (``_add_suggested_merge`` and
``_apply_suggested_merge`` in ``symbolic_shape_infer.py``), applied here
only to equalities a removed no-op proves.
"""

from __future__ import annotations

from graphopt import ir
from graphopt.analysis.shapes import known_dim, value_dims

__all__ = ["DimEqualities"]


def _is_unk(dim: object) -> bool:
    """A fresh symbol of ONNX shape inference (``unk__N``)."""
    return dim is not None and known_dim(dim) is None


def _rank(dim: object) -> int:
    """Representative preference: an int (0), a named dim (1), ``unk__N`` (2)."""
    return 0 if isinstance(dim, int) else 2 if _is_unk(dim) else 1


def _own(value: ir.Value) -> bool:
    """Whether the value's shape is the IR's to change (made by a node, not a
    graph input, output or initializer, whose shapes are declared)."""
    return (value.producer() is not None and not value.is_graph_output()
            and not value.is_graph_input() and not value.is_initializer())


class DimEqualities:
    """Union-find over the ``unk__N`` symbols of one pass run.

    Use :meth:`equate` for each bypassed no-op (before rewiring), then
    :meth:`apply` once at the end of the run.
    """

    def __init__(self) -> None:
        self._parent: dict[str, object] = {}

    def find(self, dim: object) -> object:
        """The representative of ``dim`` (itself unless it is a renamed ``unk__N``)."""
        while _is_unk(dim) and dim in self._parent:
            dim = self._parent[dim]  # type: ignore[index]
        return dim

    def equate(self, old: ir.Value, new: ir.Value) -> bool:
        """Record that ``old`` (the no-op's output) and ``new`` (its input)
        are the same tensor. ``new``'s anonymous dims take ``old``'s known
        ones at once (when ``new`` is the IR's to change).

        Returns:
            True when the readers moving from ``old`` to ``new`` see the same
            dims once the equalities are applied (ints, names, and ``unk__N``
            up to renaming), so a new inference tells them nothing more;
            False when ranks or shapes are missing, two different ints or
            names meet, or ``new`` knows a dim that ``old`` did not name.
        """
        have, want = value_dims(new), value_dims(old)
        if have is None or want is None or len(have) != len(want):
            return False
        same = True
        sharper: list | None = None
        for i, (h, w) in enumerate(zip(have, want)):
            h, w = self.find(h), self.find(w)
            if h is None and w is not None:
                if _own(new) and not _is_unk(w):
                    sharper = sharper or list(have)
                    sharper[i] = w
                else:
                    same = False
                continue
            if w is None:
                same = same and h is None
                continue
            if h == w:
                continue
            if not (_is_unk(h) or _is_unk(w)):
                same = False  # two ints or names: nothing to rename
                continue
            keep, drop = (h, w) if _rank(h) <= _rank(w) else (w, h)
            self._parent[drop] = keep  # type: ignore[index]
        if sharper is not None:
            new.shape = ir.Shape(sharper)
        return same

    def apply(self, containers: list[ir.Graph | ir.Function]) -> int:
        """Rename every recorded ``unk__N`` to its representative in the shapes
        of the containers' node outputs (graph outputs excepted). Returns how
        many values got a new shape (new ``ir.Shape`` objects: inferred
        shapes are frozen and shared between values)."""
        if not self._parent:
            return 0
        parent = self._parent
        changed = 0
        for container in containers:
            for node in container:
                for value in node.outputs:
                    shape = value.shape
                    if shape is None or value.is_graph_output():
                        continue
                    names = [getattr(d, "value", None) for d in shape]
                    if not any(n in parent for n in names):
                        continue
                    value.shape = ir.Shape([self.find(n) if n in parent else d for d, n in zip(shape, names)])
                    changed += 1
        return changed

"""Inlining of model-local functions on top of onnx-ir's ``InlinePass``.

Two fixes over onnx-ir 1.1's inliner (pinned): every value name of every scope
is reserved before inlining (onnx-ir reserves only the target graph's names,
so an inlined value could take a name used inside an If/Loop body), and unique
names remember their last suffix (onnx-ir probes from ``_2`` on every clash,
so inlining k calls of one function costs O(k^2): 16,000 calls took 500 s).
"""

from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from graphopt.ir.edit import all_graphs
from onnx_ir.passes import PreconditionError
from onnx_ir.passes.common import InlinePass
from onnx_ir.passes.common import inliner as _inliner_module

__all__ = ["inline_functions"]


def _model_names(model: ir.Model) -> set[str]:
    """Every value name in the main graph and its subgraphs (all scopes)."""
    names: set[str] = set()
    for graph in all_graphs(model):
        names.update(v.name for v in graph.inputs if v.name)
        names.update(graph.initializers)
        for node in graph:
            names.update(v.name for v in node.outputs if v.name)
    return names


class _Inliner(InlinePass):
    """onnx-ir's inliner with every name of every scope reserved up front, so an
    inlined value never takes a name used inside an If/Loop body (onnx-ir
    reserves only the names of the graph it is inlining into)."""

    def _reset(self, model: ir.Model) -> None:
        super()._reset(model)
        self._used_value_names |= _model_names(model)


class _UniqueNames:
    """Drop-in for onnx-ir's ``inliner._make_unique_name`` (same names:
    ``t``, ``t_2``, ``t_3``, ...) that remembers the last suffix of each base
    name. onnx-ir 1.1 probes from ``_2`` on every clash, so inlining k calls
    of one function costs O(k^2) (16,000 calls: 500 s; with this: seconds)."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def __call__(self, name: str, callstack: object, used: set[str]) -> str:
        candidate, i = name, self.last.get(name, 1)
        if candidate in used:
            i += 1
            candidate = f"{name}_{i}"
            while candidate in used:
                i += 1
                candidate = f"{name}_{i}"
            self.last[name] = i
        used.add(candidate)
        return candidate


def inline_functions(model: ir.Model, inlinable: set[tuple[str, str, str]],
                     prepare: Callable[[], object] | None = None) -> None:
    """Inline every call of the functions in ``inlinable`` (nested calls too).

    Args:
        model: the model, changed in place.
        inlinable: identifiers ``(domain, name, overload)`` of functions to inline.
        prepare: called after the recursion check and before any change.

    Raises:
        ValueError: a function calls itself (directly or not); nothing changed.
    """
    inliner = _Inliner(criteria=lambda func: func.identifier() in inlinable)
    try:
        inliner.requires(model)  # recursion check, before anything changes
    except PreconditionError as e:
        raise ValueError(str(e)) from e
    if prepare is not None:
        prepare()
    original = _inliner_module._make_unique_name
    _inliner_module._make_unique_name = _UniqueNames()
    try:
        inliner(model)
    finally:
        _inliner_module._make_unique_name = original

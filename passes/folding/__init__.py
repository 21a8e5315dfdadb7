"""Folding passes: constant folding and shape-subgraph folding."""

from graphopt.passes.folding import constants, shapes  # noqa: F401 - registers the passes

__all__ = ["constants", "shapes"]

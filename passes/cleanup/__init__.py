"""Cleanup passes: topological sort, dead-code elimination, Identity and
inference-Dropout removal, shape inference."""

from graphopt.passes.cleanup import dce, dropout, identity, shapes, toposort  # noqa: F401

__all__ = ["dce", "dropout", "identity", "shapes", "toposort"]

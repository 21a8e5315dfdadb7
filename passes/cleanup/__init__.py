"""Cleanup passes: topological sort, dead-code elimination, Identity and
inference-Dropout removal, no-op elimination, common-subexpression
elimination, function inlining, shape inference."""

from graphopt.passes.cleanup import cse, dce, dropout, identity, inline, noops, shapes, toposort  # noqa: F401

__all__ = ["cse", "dce", "dropout", "identity", "inline", "noops", "shapes", "toposort"]

"""Cleanup passes: topological sort, dead-code elimination, Identity and
inference-Dropout removal, no-op elimination, common-subexpression
elimination, function inlining, shape inference, Einsum-as-MatMul canonicalization."""

from graphopt.passes.cleanup import cse, dce, dropout, einsum, identity, inline, noops, shapes, toposort  # noqa: F401

__all__ = ["cse", "dce", "dropout", "einsum", "identity", "inline", "noops", "shapes", "toposort"]

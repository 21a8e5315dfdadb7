"""Folding passes: constant folding, shape-subgraph folding, folding of
BatchNormalization and bias Adds into the Conv/Gemm before them, and merging
sibling MatMuls that share their input."""

from graphopt.passes.folding import batchnorm, bias, constants, reshape_pairs, shapes, siblings  # noqa: F401 - registers

__all__ = ["batchnorm", "bias", "constants", "reshape_pairs", "shapes", "siblings"]

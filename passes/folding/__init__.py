"""Folding passes: constant folding, shape-subgraph folding, and folding of
BatchNormalization and bias Adds into the Conv/Gemm before them."""

from graphopt.passes.folding import batchnorm, bias, constants, reshape_pairs, shapes  # noqa: F401 - registers

__all__ = ["batchnorm", "bias", "constants", "reshape_pairs", "shapes"]

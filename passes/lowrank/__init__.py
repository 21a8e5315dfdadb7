"""Low-rank factorization (``factorize``): ``x W -> (x A) B`` for constant-weight MatMul, Gemm and 1x1 Conv,
by svd, asvd or svd-llm, each rank chosen for accuracy and measured speed (issue 22)."""

from graphopt.passes.lowrank.factorize import Factorize, FactorizeOptions, FactorizeReport, LayerReport, factorize

__all__ = ["Factorize", "FactorizeOptions", "FactorizeReport", "LayerReport", "factorize"]

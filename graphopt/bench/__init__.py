"""Latency benchmarks in onnxruntime: interleaved timing of several models on
the same inputs, ratios against the first, optional per-operator profiles."""

from graphopt.bench.profile import OpTime, profile_model
from graphopt.bench.roofline import GemmPeak, gemm_peak
from graphopt.bench.runner import BenchReport, ModelTiming, benchmark

__all__ = ["BenchReport", "GemmPeak", "ModelTiming", "OpTime", "benchmark", "gemm_peak", "profile_model"]

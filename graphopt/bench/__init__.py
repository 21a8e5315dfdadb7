"""Latency benchmarks in onnxruntime: interleaved timing of several models on
the same inputs, ratios against the first, optional per-operator profiles."""

from graphopt.bench.profile import OpTime, profile_model
from graphopt.bench.runner import BenchReport, ModelTiming, benchmark

__all__ = ["BenchReport", "ModelTiming", "OpTime", "benchmark", "profile_model"]

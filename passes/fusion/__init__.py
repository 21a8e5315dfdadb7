"""Fusion passes: rewrite rules (:mod:`graphopt.pattern`) that replace
exporter subgraphs by the fused operators of each target (standard ONNX,
onnxruntime's com.microsoft ops, what TensorRT's ONNX parser takes)."""

from graphopt.passes.fusion import activation, attention, canonicalize, gelu, norm, rotary  # noqa: F401

__all__ = ["activation", "attention", "canonicalize", "gelu", "norm", "rotary"]

"""Quantization passes: calibrated INT8 QDQ insertion (``qdq``), FP16/BF16
conversion (``convert-float16``) and INT4 weight-only quantization
(``quantize-weights-int4``)."""

from graphopt.passes.quantization import float16, int4, qdq  # noqa: F401 - registers the passes

__all__ = ["float16", "int4", "qdq"]

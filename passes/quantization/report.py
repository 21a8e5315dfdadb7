"""The accuracy report of a lossy conversion, now in the core
(:mod:`graphopt.calibrate.report`, shared by quantization, pruning and
low-rank); re-exported here so existing imports keep working.

The per-layer SQNR the report carries is measured by the ``qdq`` pass
(:func:`~graphopt.passes.quantization.sensitivity.layer_sqnr`).
"""

from __future__ import annotations

from graphopt.calibrate.report import OutputAccuracy, QuantReport, accuracy_report, model_bytes

__all__ = ["OutputAccuracy", "QuantReport", "accuracy_report", "model_bytes"]

"""The calibration layer: data readers and budget metrics, shared by every
lossy pass family (quantization, pruning, low-rank), none of which
recomputes them.

- :mod:`graphopt.calibrate.data`: :class:`CalibrationData`, batches of model
  inputs read lazily from files, generated, or given in memory.
- :mod:`graphopt.calibrate.metrics`: the accuracy-budget metrics by name
  (:data:`METRICS`: ``cosine``, ``argmax``, ``rank-fidelity``).
"""

from graphopt.calibrate.data import CalibrationData, check_sample, signature_proto, track
from graphopt.calibrate.metrics import METRICS, Metric, argmax_agreement, output_cosine, rank_fidelity

__all__ = ["CalibrationData", "check_sample", "signature_proto", "track", "METRICS", "Metric", "argmax_agreement",
           "output_cosine", "rank_fidelity"]

"""The calibration layer: data readers and budget metrics, shared by every
lossy pass family (quantization, pruning, low-rank), none of which
recomputes them.

- :mod:`graphopt.calibrate.data`: :class:`CalibrationData`, batches of model
  inputs read lazily from files, generated, or given in memory.
- :mod:`graphopt.calibrate.metrics`: the accuracy-budget metrics by name
  (:data:`METRICS`: ``cosine``, ``argmax``, ``rank-fidelity``).
- :mod:`graphopt.calibrate.activations`: intermediate tensors streamed from
  onnxruntime, one batch at a time.
- :mod:`graphopt.calibrate.stats`: per-channel activation statistics (mean,
  variance, norms, Gram and cross products in float64), cached by model content.
- :mod:`graphopt.calibrate.reconstruct`: ridge least-squares refits and bias
  compensation (pruning, low-rank).
- :mod:`graphopt.calibrate.importance`: magnitude, Wanda, FLAP fluctuation and
  Block Influence scores, per-layer standardization.
- :mod:`graphopt.calibrate.report`: :func:`accuracy_report`, a lossy model's
  per-output error, cosine and argmax agreement against its original on
  evaluation (else calibration) batches, and file sizes.
"""

from graphopt.calibrate.data import CalibrationData, check_sample, signature_proto, track
from graphopt.calibrate.metrics import METRICS, Metric, argmax_agreement, output_cosine, rank_fidelity
from graphopt.calibrate.report import OutputAccuracy, QuantReport, accuracy_report, model_bytes
from graphopt.calibrate.stats import ChannelStats, PairCosine, StatRequest, StatsCache, collect_cosines, collect_stats

__all__ = ["CalibrationData", "check_sample", "signature_proto", "track", "METRICS", "Metric", "argmax_agreement",
           "output_cosine", "rank_fidelity", "ChannelStats", "PairCosine", "StatRequest", "StatsCache",
           "collect_cosines", "collect_stats", "OutputAccuracy", "QuantReport", "accuracy_report", "model_bytes"]

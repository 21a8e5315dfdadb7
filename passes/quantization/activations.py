"""Moved to :mod:`graphopt.calibrate.activations` (shared with pruning and
low-rank); re-exported here for the quantization modules that import it."""

from graphopt.calibrate.activations import activation_session, stream_activations, values_by_name

__all__ = ["stream_activations", "activation_session", "values_by_name"]

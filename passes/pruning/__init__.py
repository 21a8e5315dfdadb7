"""Structured pruning (``prune``): attention heads, FFN neurons and conv channels removed as coupled groups,
scored on calibration data, with least-squares reconstruction of the consumers; or whole layers, lowest ShortGPT
Block Influence first (issue 21)."""

from graphopt.passes.pruning.prune import GroupReport, LayerReport, Prune, PruneOptions, PruneReport, prune

__all__ = ["GroupReport", "LayerReport", "Prune", "PruneOptions", "PruneReport", "prune"]

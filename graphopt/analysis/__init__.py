"""Analyses over the IR: statistics, FLOPs, graph views for networkx."""

from graphopt.analysis.stats import ModelStats, flops, model_stats, op_histogram

__all__ = ["ModelStats", "flops", "model_stats", "op_histogram"]

"""Analyses over the IR: statistics, FLOPs, graph views for networkx."""

from graphopt.analysis.groups import GroupAnalysis, apply_pruning, find_groups
from graphopt.analysis.stats import ModelStats, flops, model_stats, op_histogram

__all__ = ["GroupAnalysis", "ModelStats", "apply_pruning", "find_groups", "flops", "model_stats", "op_histogram"]

"""Coupled-channel groups: what must shrink together when heads, FFN neurons,
conv channels or whole residual branches are pruned (DepGraph, Fang et al.,
CVPR 2023, on the ONNX graph), and applying a pruning plan to them."""

from graphopt.analysis.groups.apply import apply_pruning
from graphopt.analysis.groups.find import DEFAULT_KINDS, find_groups
from graphopt.analysis.groups.model import (
    KINDS, CoupledGroup, GroupAnalysis, Refusal, ShapeEdit, Slice, describe,
)

__all__ = ["CoupledGroup", "DEFAULT_KINDS", "GroupAnalysis", "KINDS", "Refusal", "ShapeEdit", "Slice",
           "apply_pruning", "describe", "find_groups"]

"""What every fusion pass shares: the pass shape around a rule list, and the
checks fusions make again and again (a per-channel constant, the last axis,
the opset an operator needs for a target)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from graphopt import ir
from graphopt.analysis.shapes import ANALYSIS
from graphopt.pattern import CheckContext, CheckResult, Rule, RuleEnv, apply_rules
from graphopt.passmanager import Pass, PassResult

__all__ = ["FusionPass", "FUSION_RTOL", "FLOAT_TYPES", "vector", "last_axis", "needs_opset", "last_dim",
           "ORT_DOMAIN"]

ORT_DOMAIN = "com.microsoft"

FUSION_RTOL = 1e-4
"""Relative tolerance fusions promise: a fused kernel sums in another order
(LayerNorm's mean and variance in one pass, attention's softmax tiled), so
outputs move by float rounding, well inside 1e-4 relative (issue acceptance)."""

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})


class FusionPass(Pass):
    """A pass that applies its ``rules`` (see :mod:`graphopt.pattern`) once
    over the model and reports how often each fired.

    Stats: one counter per rule name. Rules not meant for the context's
    target are skipped (``graphopt explain RULE`` says so).
    """

    rules: ClassVar[tuple[Rule, ...]] = ()
    tolerance = FUSION_RTOL
    requires = frozenset({"topo-sorted", "shapes-inferred"})
    preserves = frozenset({"topo-sorted", "shapes-inferred", ANALYSIS})

    def rule_options(self, ctx: Any) -> Any:
        """The options the rules see (``ctx.options`` in their ``check``);
        the pass's own unless a pass resolves some from the context."""
        return self.options

    def run(self, model: ir.Model, ctx: Any) -> PassResult:
        env = RuleEnv(model, getattr(ctx, "target", "ort"), self.rule_options(ctx), pass_ctx=ctx)
        fired = apply_rules(env, self.rules)
        return PassResult(modified=sum(fired.values()) > 0, stats={r.name: fired[r.name] for r in self.rules})


def vector(ctx: CheckContext, value: ir.Value | None, size: int | None, what: str) -> tuple[np.ndarray | None, CheckResult]:
    """A constant that holds one value per channel of the last axis: shape
    ``[size]``, or ``[1, ..., size]`` (flattened). ``size`` None accepts any
    length.

    Returns:
        ``(array, ok)``, or ``(None, failure)`` naming ``what``.
    """
    array = ctx.const(value)
    if array is None:
        return None, ctx.fail(f"the {what} is not a constant", at=value)
    if array.ndim == 0 or any(d != 1 for d in array.shape[:-1]) or (size is not None and array.shape[-1] != size):
        want = f"[{size}]" if size is not None else "one value per channel"
        return None, ctx.fail(f"the {what} has shape {list(array.shape)}, not {want}", at=value)
    return array.reshape(-1), ctx.ok()


def last_dim(ctx: CheckContext, value: ir.Value | None) -> int | None:
    """The static size of ``value``'s last axis, or None."""
    return ctx.dim(value, -1)


def last_axis(ctx: CheckContext, value: ir.Value | None, axes: Any) -> bool:
    """Whether ``axes`` (an int or a one-element list) is ``value``'s last axis."""
    if isinstance(axes, (list, tuple)):
        if len(axes) != 1:
            return False
        axes = axes[0]
    if not isinstance(axes, int):
        return False
    if axes == -1:
        return True
    rank = ctx.rank(value)
    return rank is not None and axes == rank - 1


def needs_opset(ctx: CheckContext, op: str, opset: int) -> CheckResult:
    """ok when the model's default-domain opset has ``op`` (since ``opset``),
    else a reason saying how to allow the upgrade."""
    return ctx.require(ctx.opset >= opset, (
        f"{op} needs opset {opset} for target {ctx.target}; the model has opset {ctx.opset} "
        f"(allow an upgrade with --opset {opset} or config opset.upgrade={opset})"))

"""``prune --flops F``: the kept block ratio whose pruned model has at most F of the original's FLOPs.

The pass's ``ratio`` is the kept share of the prunable groups' FLOPs counted
per unit (:mod:`.plan`), linear in the units kept. That is not the model's
FLOP ratio: MatMuls outside every group (an embedding projection, a pooler, a
classifier head) stay whole, and in a CNN a Conv between two pruned groups
loses FLOPs on both sides while groups sit at different resolutions. A user
asks for the model's FLOPs (onnxsim's and Torch-Pruning's examples state
their targets so), so :func:`ratio_for_flops` bisects the kept block ratio:
each trial prunes a structural copy of the model (no reconstruction: it does
not change a shape) and counts the copy's MatMul/Gemm/Conv FLOPs with
:func:`graphopt.analysis.stats.flops` at the given input dims, shapes that
inference leaves unknown measured in onnxruntime. Trials whose allocation
is the same (the kept counts are multiples of the groups' steps) are counted
once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from graphopt import ir
from graphopt.errors import InputError

__all__ = ["ratio_for_flops", "model_flops"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-3
"""Bisection stops when the kept block ratio is known to this width."""


def model_flops(model: ir.Model, dims: Mapping[str, int] | None, shapes: Mapping[str, tuple[int, ...]] | None
                ) -> int:
    """MatMul/Gemm/Conv FLOPs of one inference of ``model`` (multiply-add = 2) at the bound input dims, with
    shapes inference leaves unknown measured in onnxruntime (:func:`graphopt.analysis.stats.flops`)."""
    from graphopt.analysis.stats import flops

    return int(flops(model, dict(dims or {}), shapes=dict(shapes or {}), measure=True)[0])


def ratio_for_flops(model: ir.Model, target: float, lowest: float, key_at: Callable[[float], Hashable],
                    apply_at: Callable[[ir.Model, float], Any], *, dims: Mapping[str, int] | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """The largest kept block ratio in ``[lowest, 1]`` whose pruned model keeps at most ``target`` of the
    original's MatMul/Gemm/Conv FLOPs (bisection to :data:`TOLERANCE`; the kept FLOPs are assumed not to fall
    as the ratio rises).

    Args:
        model: the original (not modified; each trial prunes ``ir.clone(model)``).
        target: whole-model FLOPs kept, in (0, 1).
        lowest: the smallest block ratio the allocation can reach (every group at its minimum).
        key_at: ``key_at(ratio)``: a hashable form of what pruning at ``ratio`` removes (the kept counts), so
            that equal allocations are counted once.
        apply_at: ``apply_at(copy, ratio)`` prunes a copy in place (structure only).
        dims: symbolic input dim name -> size for the count (default: ``graphopt verify``'s).
        shapes: input name -> whole shape, for dims the model leaves unnamed.

    Returns:
        ``{"target", "ratio", "kept", "flops_before", "flops_after", "trials"}``: ``ratio`` the kept block ratio
        found, ``kept`` the whole-model FLOPs share it keeps (at most ``target``), ``trials`` the distinct
        allocations counted.

    Raises:
        InputError: the model has no MatMul/Gemm/Conv FLOPs that can be counted at these dims, or even the
            smallest allocation keeps more than ``target`` (the message gives the smallest reachable share).
    """
    before = model_flops(model, dims, shapes)
    if before <= 0:
        raise InputError("--flops needs the model's MatMul/Gemm/Conv FLOPs, and none could be counted at these "
                         "input dims: give the input sizes (--dim NAME=SIZE, or --shape INPUT=AxB for unnamed "
                         "dims), or prune by --ratio")
    counted: dict[Hashable, float] = {}

    def kept(ratio: float) -> float:
        key = key_at(ratio)
        if key not in counted:
            trial = ir.clone(model)
            apply_at(trial, ratio)
            counted[key] = model_flops(trial, dims, shapes) / before
            log.info("prune --flops: block ratio %.4f keeps %.4f of the FLOPs", ratio, counted[key])
        return counted[key]

    low = kept(lowest)
    if low > target:
        raise InputError(f"pruning these groups cannot keep as little as {target:g} of the model's MatMul/Gemm/"
                         f"Conv FLOPs: with every group at its minimum {low:.3f} is left (the rest lies outside "
                         f"the prunable groups); raise --flops to at least {low:.3f} or add kinds")
    lo, hi = lowest, 1.0
    while hi - lo > TOLERANCE:
        mid = (lo + hi) / 2
        if kept(mid) <= target:
            lo = mid
        else:
            hi = mid
    share = kept(lo)
    return {"target": target, "ratio": lo, "kept": share, "flops_before": before,
            "flops_after": int(round(share * before)), "trials": len(counted)}

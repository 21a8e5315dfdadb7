"""Importance scores of prunable units, from weights and activation statistics.

A *unit* is what structured pruning removes as a whole: an FFN neuron or a
conv channel (``unit=1``), or an attention head, a block of ``unit``
consecutive channels (``unit = head_dim``). Every scorer takes plain arrays
with the group's channels on axis 0 (``C`` channels, ``C % unit == 0``) and
returns ``[C // unit]`` float64 scores, higher = more important, so it does
not depend on the group analysis; the caller gathers the consumer's input
rows ``W[C, N]`` (a MatMul weight as stored; a Gemm with ``transB`` or a Conv
weight reshaped to ``[C_in, -1]``), the producer's output columns (``W.T``)
and the statistics of :func:`graphopt.calibrate.stats.collect_stats`.

- :func:`magnitude_scores`: L1 / L2 norm of the unit's weights (baseline).
- :func:`wanda_scores`: Wanda adapted to structured groups (Sun et al. 2023,
  "A Simple and Effective Pruning Approach for Large Language Models":
  ``|W_ij| * ||X_j||_2``), summed over the unit's consumer rows.
- :func:`fluctuation_scores`: FLAP's fluctuation metric (An et al. 2024,
  "Fluctuation-based Adaptive Structured Pruning for Large Language
  Models"): the input channel's variance over the calibration set times the
  squared norm of its weight row.
- :func:`block_influence`: ShortGPT's Block Influence of a whole layer (Men et
  al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant
  Than You Expect"): ``1 - cos(block input, block output)`` averaged over tokens.
- :func:`standardize`: FLAP's per-layer standardization, so that scores of
  different layers compare in one global ranking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from graphopt.errors import InputError

__all__ = [
    "block_influence",
    "fluctuation_scores",
    "magnitude_scores",
    "per_unit",
    "standardize",
    "wanda_scores",
]


def per_unit(values: np.ndarray, unit: int = 1) -> np.ndarray:
    """Sum ``[C]`` per-channel values over units of ``unit`` consecutive channels.

    Returns:
        ``[C // unit]`` float64.

    Raises:
        InputError: ``unit < 1`` or ``C`` not a multiple of ``unit``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if int(unit) != unit or unit < 1:
        raise InputError(f"unit must be a positive integer (1 for neurons/channels, head_dim for heads), got {unit!r}")
    if v.size % unit:
        raise InputError(
            f"{v.size} channels do not split into units of {unit}; a head's unit is hidden // num_heads "
            "and must divide the channel count"
        )
    return v.reshape(-1, int(unit)).sum(axis=1)


def _rows(weight: np.ndarray, what: str) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim == 1:
        return w[:, None]
    if w.ndim < 1:
        raise InputError(f"{what} must have its channels on axis 0, got a scalar")
    return w.reshape(w.shape[0], -1)


def _channels(arrays: Sequence[np.ndarray], what: str) -> int:
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) != 1:
        raise InputError(f"{what}: the arrays have {sorted(sizes)} channels on axis 0; one group's slices must agree")
    return sizes.pop()


def magnitude_scores(weights: Sequence[np.ndarray], unit: int = 1, p: int = 2) -> np.ndarray:
    """Magnitude of each unit over all the group's weight slices.

    ``score_u = (sum_{j in u} sum_{slices} sum_k |w_jk|^p)^(1/p)``: the L1
    (``p=1``) or L2 (``p=2``, the group norm) of every weight that goes with
    the unit (the baseline of Torch-Pruning / DepGraph's ``MagnitudeImportance``).

    Args:
        weights: arrays with the group's ``C`` channels on axis 0: consumer
            rows ``W[C, N]``, producer columns ``W_prod.T`` ``[C, M]``, biases
            ``[C]``, norm scales ``[C]``; any trailing shape.
        unit: channels per unit.
        p: 1 or 2.

    Returns:
        ``[C // unit]`` float64.

    Raises:
        InputError: no weights, channel counts differ, ``p`` not 1 or 2, bad ``unit``.
    """
    if p not in (1, 2):
        raise InputError(f"magnitude norm p must be 1 or 2, got {p!r}")
    rows = [_rows(w, "a magnitude weight") for w in weights]
    if not rows:
        raise InputError("magnitude_scores needs at least one weight slice")
    _channels(rows, "magnitude_scores")
    per_channel = sum(np.abs(r).sum(axis=1) if p == 1 else np.square(r).sum(axis=1) for r in rows)
    total = per_unit(per_channel, unit)
    return total if p == 1 else np.sqrt(total)


def wanda_scores(weight_rows: np.ndarray, sq_norms: np.ndarray, unit: int = 1, p: int = 1) -> np.ndarray:
    """Wanda for structured units: ``score_u = sum_{j in u} ||X_j||_2 * ||W_j,:||_p``.

    With ``p=1`` this is Sun et al. 2023's per-weight metric
    ``|W_jk| * ||X_j||_2`` summed over the unit's consumer rows (Wanda-sp);
    ``p=2`` bounds the output energy the unit carries.

    Args:
        weight_rows: ``[C, N]`` the consumer's input rows (channels on axis 0).
        sq_norms: ``[C]`` ``||X_j||_2^2`` of the consumer's input over the
            calibration rows (:attr:`ChannelStats.sq_sum`).
        unit: channels per unit.
        p: the weight-row norm, 1 or 2.

    Returns:
        ``[C // unit]`` float64.

    Raises:
        InputError: shapes disagree, negative ``sq_norms``, bad ``p`` / ``unit``.
    """
    w = _rows(weight_rows, "weight_rows")
    s = np.asarray(sq_norms, dtype=np.float64).reshape(-1)
    if s.shape != (w.shape[0],):
        raise InputError(f"sq_norms has {s.size} channels, weight_rows {w.shape[0]}; give one norm per input row")
    if (s < 0).any():
        raise InputError("sq_norms are squared norms and cannot be negative")
    if p not in (1, 2):
        raise InputError(f"wanda weight norm p must be 1 or 2, got {p!r}")
    row = np.abs(w).sum(axis=1) if p == 1 else np.linalg.norm(w, axis=1)
    return per_unit(np.sqrt(s) * row, unit)


def fluctuation_scores(weight_rows: np.ndarray, variance: np.ndarray, unit: int = 1) -> np.ndarray:
    """FLAP's fluctuation metric (An et al. 2024):
    ``score_u = sum_{j in u} var(X_j) * ||W_j,:||_2^2``: how much the output
    moves when input channel ``j`` is replaced by its mean (which bias
    compensation then restores, :func:`graphopt.calibrate.reconstruct.bias_compensation`).

    Args:
        weight_rows: ``[C, N]`` the consumer's input rows.
        variance: ``[C]`` per-channel variance of the consumer's input over
            the calibration rows (:attr:`ChannelStats.var`).
        unit: channels per unit.

    Returns:
        ``[C // unit]`` float64.

    Raises:
        InputError: shapes disagree, negative variance, bad ``unit``.
    """
    w = _rows(weight_rows, "weight_rows")
    v = np.asarray(variance, dtype=np.float64).reshape(-1)
    if v.shape != (w.shape[0],):
        raise InputError(f"variance has {v.size} channels, weight_rows {w.shape[0]}; give one per input row")
    if (v < 0).any():
        raise InputError("variance cannot be negative")
    return per_unit(v * np.square(w).sum(axis=1), unit)


def block_influence(x_in: np.ndarray | float, x_out: np.ndarray | None = None, axis: int = -1) -> float:
    """ShortGPT's Block Influence (Men et al. 2024):
    ``BI = 1 - mean_t cos(x_in_t, x_out_t)`` over tokens ``t``; a block that
    barely changes the residual stream scores near 0 and goes first.

    Args:
        x_in: the block's input hidden states (any shape, features on
            ``axis``), or the mean cosine already accumulated
            (:attr:`graphopt.calibrate.stats.PairCosine.mean_cosine`, from
            :func:`graphopt.calibrate.stats.collect_cosines`) with ``x_out`` None.
        x_out: the block's output hidden states, same shape as ``x_in``.
        axis: the feature axis.

    Returns:
        The Block Influence (0 for an identity block; a zero row counts as cosine 1).

    Raises:
        InputError: shapes differ.
    """
    if x_out is None:
        return 1.0 - float(x_in)
    a, b = np.asarray(x_in, dtype=np.float64), np.asarray(x_out, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"block influence needs input and output of one shape, got {a.shape} and {b.shape}")
    a = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])
    b = np.moveaxis(b, axis, -1).reshape(-1, b.shape[axis])
    dot = np.einsum("rc,rc->r", a, b)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 1.0)
    return 1.0 - float(cos.mean())


def standardize(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FLAP's per-layer standardization for global allocation:
    ``(s - mean(s)) / std(s)`` within each layer (or group kind), so that one
    global threshold compares layers whose raw scores differ in scale.

    Args:
        scores: ``{layer or group name: [U] scores}``.

    Returns:
        ``{name: [U] float64}``; a layer whose scores are all equal (std 0) gets zeros.
    """
    out = {}
    for name, s in scores.items():
        v = np.asarray(s, dtype=np.float64)
        std = v.std()
        out[name] = (v - v.mean()) / std if std > 0 else np.zeros_like(v)
    return out

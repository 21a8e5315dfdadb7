"""Reconstruction: refit a consumer's weights after its inputs shrank.

One implementation, shared by structured pruning and low-rank factorization
(DESIGN, "Reconstruction is one core module"). Everything works on the Gram
statistics of :mod:`graphopt.calibrate.stats` (float64), never on stored
activations.

A consumer computes ``Y = X W (+ b)`` with ``X`` ``[R, C]`` (the calibration
rows of its input) and ``W`` ``[C, N]`` (a MatMul's weight, a Gemm's weight as
``[in, out]``, a 1x1 Conv's weight as ``[C_in, C_out]``). After pruning, its
input is ``X_new`` ``[R, K]``; the refit ``W'`` ``[K, N]`` minimizes
``||X_new W' - X_ref W||^2 + lam ||W'||^2`` (ridge least squares), whose
normal equations are ``(G_xx + lam I) W' = G_xy W`` with
``G_xx = X_new^T X_new`` and ``G_xy = X_new^T X_ref``:

- :func:`reconstruct` solves that general form. With ``X_new`` read from the
  *pruned* model and ``X_ref`` from the unpruned one, the refit also undoes
  error carried in from earlier layers.
- :func:`refit_kept` is the layer-wise special case where ``X_new = X_S``,
  the kept columns of the unpruned input (Kwon et al. 2022, "A Fast
  Post-Training Pruning Framework for Transformers", layer-wise
  reconstruction; DepGraph / FLAP-style refits): ``G_xx = G_SS``,
  ``G_xy = G_S:``.
- :func:`least_squares` is the same solver against any target ``T`` given
  as ``X_new^T T`` (e.g. one that also undoes the residual stream's error).
- :func:`bias_compensation` is FLAP's cheap alternative (An et al. 2024,
  "Fluctuation-based Adaptive Structured Pruning for Large Language
  Models"): the removed channels' mean contribution moves into the bias.
- :func:`output_error` evaluates ``||X_new W' - X_ref W||^2`` from Grams.
- :func:`whiten` factors ``G = S S^T`` (Cholesky, or an eigendecomposition
  with a floor), the whitening of SVD-LLM (Wang et al. 2024, "SVD-LLM:
  Truncation-aware Singular Value Decomposition for Large Language Model
  Compression") that low-rank factorization reads.

The ridge ``lam = ridge * mean(diag(G_xx))`` is relative to the activation
energy, so one setting suits every layer. The system is solved by Cholesky
(``scipy.linalg.cho_factor`` / ``cho_solve``); when ``G_xx + lam I`` is not
numerically positive definite (duplicated or dead channels with ``ridge=0``)
it falls back to an eigendecomposition that drops the null directions (the
minimum-norm least-squares solution) and logs a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from graphopt.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "Refit",
    "Whitening",
    "bias_compensation",
    "blas_threads",
    "least_squares",
    "output_error",
    "reconstruct",
    "refit_kept",
    "solve_ridge",
    "whiten",
]

DEFAULT_RIDGE = 1e-4
"""Default relative ridge: ``lam = DEFAULT_RIDGE * mean(diag(G_xx))``."""

_PD_RCOND = 1e-12
"""A Cholesky factor whose squared diagonal spans more than 1/_PD_RCOND is treated as not positive definite."""

_EIG_RCOND = 1e-10
"""Eigenvalues below ``_EIG_RCOND * max eigenvalue`` are dropped in the fallback."""


@dataclass(frozen=True)
class Refit:
    """A refitted consumer.

    Attributes:
        weight: ``[K, N]`` float64, the new weight (rows = kept / new input channels).
        bias: ``[N]`` float64 new bias; the given bias (or None) when no intercept was fitted.
        ridge: the absolute ridge ``lam`` added to the Gram's diagonal.
        method: ``"cholesky"``, or ``"eigh"`` when the fallback solved it.
        dropped: eigen-directions dropped by the fallback (0 for Cholesky).
    """

    weight: np.ndarray
    bias: np.ndarray | None
    ridge: float
    method: str
    dropped: int = 0


def _square(g: np.ndarray, what: str) -> np.ndarray:
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise InputError(f"{what} must be a square [K, K] Gram matrix, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise InputError(f"{what} holds NaN or Inf; recollect the statistics from finite activations")
    return g


def solve_ridge(
    gram: np.ndarray, rhs: np.ndarray, ridge: float = DEFAULT_RIDGE, *, penalized: int | None = None, where: str = ""
) -> tuple[np.ndarray, float, str, int]:
    """Solve ``(G + lam D) Z = rhs`` in float64.

    ``D`` is the identity on the first ``penalized`` diagonal entries (all by
    default; an intercept row appended last is left unpenalized) and
    ``lam = ridge * mean(diag(G)[:penalized])``.

    Args:
        gram: ``[K, K]`` symmetric positive semi-definite.
        rhs: ``[K, N]`` (or ``[K]``).
        ridge: relative ridge, ``>= 0``.
        penalized: how many leading diagonal entries get the ridge.
        where: names the layer in the fallback's warning.

    Returns:
        ``(Z, lam, method, dropped)``: the solution, the absolute ridge,
        ``"cholesky"`` or ``"eigh"``, and the eigen-directions dropped.

    Raises:
        InputError: shapes disagree, ``ridge < 0``, or non-finite input.
    """
    g = _square(gram, "the Gram matrix")
    b = np.asarray(rhs, dtype=np.float64)
    if b.shape[:1] != g.shape[:1]:
        raise InputError(f"right-hand side has {b.shape[:1]} rows, the Gram matrix {g.shape[0]}; they must agree")
    if not (ridge >= 0):
        raise InputError(f"ridge must be >= 0, got {ridge!r}")
    k = g.shape[0]
    p = k if penalized is None else penalized
    if k == 0:
        return np.zeros(b.shape), 0.0, "cholesky", 0
    diag = np.diag(g)[:p]
    lam = float(ridge * diag.mean()) if p else 0.0
    a = g.copy()
    a[np.arange(p), np.arange(p)] += lam
    try:
        factor = scipy.linalg.cho_factor(a, lower=False, check_finite=False)
        d = np.square(np.diag(factor[0]))
        if d.min() > _PD_RCOND * d.max():
            return scipy.linalg.cho_solve(factor, b, check_finite=False), lam, "cholesky", 0
        reason = f"Cholesky pivot ratio {d.min() / d.max():.1e}"
    except np.linalg.LinAlgError as e:
        reason = str(e)
    w, v = np.linalg.eigh(a)
    top = w.max() if w.size else 0.0
    keep = w > _EIG_RCOND * top if top > 0 else np.zeros(w.shape, bool)
    dropped = int(k - keep.sum())
    z = v[:, keep] @ ((v[:, keep].T @ b) / (w[keep][:, None] if b.ndim == 2 else w[keep]))
    log.warning(
        "reconstruction%s: the Gram matrix (%d x %d, ridge %.3g) is not positive definite (%s); solved by "
        "eigendecomposition, %d null direction(s) dropped (duplicated or dead input channels); "
        "a larger ridge avoids this",
        f" of {where}" if where else "", k, k, lam, reason, dropped,
    )
    return z, lam, "eigh", dropped


def reconstruct(
    gram_xx: np.ndarray,
    gram_xy: np.ndarray,
    weight: np.ndarray,
    *,
    ridge: float = DEFAULT_RIDGE,
    bias: np.ndarray | None = None,
    sum_x: np.ndarray | None = None,
    sum_y: np.ndarray | None = None,
    rows: int | None = None,
    where: str = "",
) -> Refit:
    """Ridge least squares ``W' = (G_xx + lam I)^-1 G_xy W``: the weight on
    the new input ``X_new`` that best reproduces ``X_ref W`` (+ ``b``).

    With ``sum_x``, ``sum_y`` and ``rows`` an intercept is fitted too
    (unpenalized): ``[W'; b'] `` minimizes
    ``||X_new W' + 1 b'^T - (X_ref W + 1 b^T)||^2``, which absorbs the mean
    shift of the removed part.

    Args:
        gram_xx: ``[K, K]`` ``X_new^T X_new`` (float64 sums).
        gram_xy: ``[K, C]`` ``X_new^T X_ref``.
        weight: ``[C, N]`` the unpruned consumer's weight (input rows first).
        ridge: relative ridge (``lam = ridge * mean(diag(G_xx))``), ``>= 0``.
        bias: ``[N]`` the consumer's bias (the target's; also the default result bias).
        sum_x: ``[K]`` column sums of ``X_new`` (``rows * mean``).
        sum_y: ``[C]`` column sums of ``X_ref``.
        rows: the calibration row count ``R``.
        where: the layer, for the fallback's warning.

    Returns:
        :class:`Refit` with ``weight`` ``[K, N]`` and ``bias`` (refitted with
        an intercept, else ``bias`` as given).

    Raises:
        InputError: shapes disagree, only part of ``sum_x``/``sum_y``/``rows``
            is given, or non-finite statistics.
    """
    gxx = _square(gram_xx, "gram_xx")
    gxy = np.asarray(gram_xy, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2:
        raise InputError(f"the consumer weight must be 2-D [C, N] (input rows first), got shape {w.shape}")
    if gxy.shape != (gxx.shape[0], w.shape[0]):
        raise InputError(
            f"gram_xy has shape {gxy.shape}; with gram_xx {gxx.shape} and weight {w.shape} it must be "
            f"{(gxx.shape[0], w.shape[0])} (new input channels x original input channels)"
        )
    b = None if bias is None else np.asarray(bias, dtype=np.float64)
    if b is not None and b.shape != (w.shape[1],):
        raise InputError(f"bias has shape {b.shape}; the weight {w.shape} needs [{w.shape[1]}]")
    given = [sum_x is not None, sum_y is not None, rows is not None]
    if any(given) and not all(given):
        raise InputError("an intercept fit needs sum_x, sum_y and rows together (from ChannelStats: mean * rows)")
    rhs = gxy @ w
    if not all(given):
        z, lam, method, dropped = solve_ridge(gxx, rhs, ridge, where=where)
        return Refit(z, b, lam, method, dropped)
    sx = np.asarray(sum_x, dtype=np.float64)
    sy = np.asarray(sum_y, dtype=np.float64)
    if sx.shape != (gxx.shape[0],) or sy.shape != (w.shape[0],):
        raise InputError(f"sum_x {sx.shape} / sum_y {sy.shape} must be [{gxx.shape[0]}] / [{w.shape[0]}]")
    if int(rows) != rows or rows < 1:
        raise InputError(f"rows must be a positive row count, got {rows!r}")
    b0 = np.zeros(w.shape[1]) if b is None else b
    # the target T = X_ref W + 1 b^T: X_new^T T and the column sums of T
    cross = rhs + np.outer(sx, b0)
    return least_squares(gxx, cross, ridge=ridge, sum_x=sx, sum_target=sy @ w + rows * b0, rows=rows, where=where)


def least_squares(
    gram_xx: np.ndarray,
    cross: np.ndarray,
    *,
    ridge: float = DEFAULT_RIDGE,
    sum_x: np.ndarray | None = None,
    sum_target: np.ndarray | None = None,
    rows: int | None = None,
    where: str = "",
) -> Refit:
    """Ridge least squares against any target ``T`` ``[R, N]``:
    ``min ||X Z (+ 1 c^T) - T||^2 + lam ||Z||^2`` from ``G = X^T X`` and
    ``X^T T``; :func:`reconstruct` is the case ``T = X_ref W + 1 b^T``.
    Other targets come from the cross products of
    :func:`~graphopt.calibrate.stats.collect_stats`, e.g. the unpruned
    block's output minus the pruned model's residual input, to undo error
    carried in along the residual stream.

    Args:
        gram_xx: ``[K, K]`` ``X^T X``.
        cross: ``[K, N]`` ``X^T T``.
        ridge: relative ridge (``lam = ridge * mean(diag(G))``), ``>= 0``.
        sum_x, sum_target, rows: ``[K]`` / ``[N]`` column sums of ``X`` and
            ``T`` and the row count: when given, an unpenalized intercept
            ``c`` is fitted as well.
        where: the layer, for the fallback's warning.

    Returns:
        :class:`Refit` with ``weight`` = ``Z`` ``[K, N]`` and ``bias`` = ``c``
        (None without intercept).

    Raises:
        InputError: shapes disagree, only part of the intercept statistics,
            non-finite input, ``ridge < 0``.
    """
    gxx = _square(gram_xx, "gram_xx")
    rhs = np.asarray(cross, dtype=np.float64)
    if rhs.ndim != 2 or rhs.shape[0] != gxx.shape[0]:
        raise InputError(
            f"cross (X^T T) has shape {rhs.shape}; with gram_xx {gxx.shape} it must be [{gxx.shape[0]}, N]"
        )
    given = [sum_x is not None, sum_target is not None, rows is not None]
    if not any(given):
        z, lam, method, dropped = solve_ridge(gxx, rhs, ridge, where=where)
        return Refit(z, None, lam, method, dropped)
    if not all(given):
        raise InputError("an intercept fit needs sum_x, sum_target and rows together (from ChannelStats: mean * rows)")
    sx = np.asarray(sum_x, dtype=np.float64)
    st = np.asarray(sum_target, dtype=np.float64)
    k = gxx.shape[0]
    if sx.shape != (k,) or st.shape != (rhs.shape[1],):
        raise InputError(f"sum_x {sx.shape} / sum_target {st.shape} must be [{k}] / [{rhs.shape[1]}]")
    if int(rows) != rows or rows < 1:
        raise InputError(f"rows must be a positive row count, got {rows!r}")
    aug = np.empty((k + 1, k + 1))
    aug[:k, :k] = gxx
    aug[:k, k] = aug[k, :k] = sx
    aug[k, k] = rows
    z, lam, method, dropped = solve_ridge(aug, np.vstack([rhs, st[None, :]]), ridge, penalized=k, where=where)
    return Refit(z[:k], z[k], lam, method, dropped)


def _keep_index(keep: np.ndarray, channels: int) -> np.ndarray:
    idx = np.asarray(keep)
    if idx.dtype == bool:
        if idx.shape != (channels,):
            raise InputError(f"a boolean keep mask must have {channels} entries, got shape {idx.shape}")
        return np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= channels or np.unique(idx).size != idx.size):
        raise InputError(f"kept channel indices must be distinct and within [0, {channels}), got {idx.tolist()[:8]}...")
    return idx


def refit_kept(
    gram: np.ndarray,
    keep: np.ndarray,
    weight: np.ndarray,
    *,
    ridge: float = DEFAULT_RIDGE,
    bias: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    rows: int | None = None,
    where: str = "",
) -> Refit:
    """Layer-wise reconstruction after removing input channels:
    ``W' = (G_SS + lam I)^-1 G_S: W`` so that ``X_S W' ~ X W``
    (Kwon et al. 2022's layer-wise reconstruction).

    Args:
        gram: ``[C, C]`` ``X^T X`` of the consumer's full (unpruned) input.
        keep: kept channel indices (``[K]`` ints, in the order the pruned
            input has them) or a ``[C]`` boolean mask.
        weight: ``[C, N]`` the consumer's weight.
        ridge: relative ridge (``lam = ridge * mean(diag(G_SS))``).
        bias: ``[N]`` the consumer's bias.
        mean: ``[C]`` per-channel input mean; with ``rows``, an intercept is
            fitted (the bias absorbs the removed channels' mean shift).
        rows: calibration rows behind ``gram`` and ``mean``.
        where: the layer, for the fallback's warning.

    Returns:
        :class:`Refit` (``weight`` ``[K, N]``).

    Raises:
        InputError: bad indices or shapes, ``mean`` without ``rows``.
    """
    g = _square(gram, "gram")
    s = _keep_index(keep, g.shape[0])
    if (mean is None) != (rows is None):
        raise InputError("refit_kept: give mean and rows together (ChannelStats.mean, ChannelStats.rows), or neither")
    if mean is None:
        return reconstruct(g[np.ix_(s, s)], g[s, :], weight, ridge=ridge, bias=bias, where=where)
    m = np.asarray(mean, dtype=np.float64)
    if m.shape != (g.shape[0],):
        raise InputError(f"mean has shape {m.shape}; the Gram needs [{g.shape[0]}]")
    total = m * rows
    return reconstruct(
        g[np.ix_(s, s)], g[s, :], weight, ridge=ridge, bias=bias, sum_x=total[s], sum_y=total, rows=rows, where=where
    )


def bias_compensation(
    weight: np.ndarray, mean: np.ndarray, keep: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """FLAP's bias compensation (An et al. 2024): the removed input channels'
    mean contribution moves into the bias,
    ``b' = b + sum_{j removed} mean_j * W[j, :]``.

    Args:
        weight: ``[C, N]`` the consumer's weight (input rows first).
        mean: ``[C]`` per-channel mean of its input on the calibration data.
        keep: kept channel indices ``[K]`` or a ``[C]`` boolean mask.
        bias: ``[N]`` the current bias (zeros when None).

    Returns:
        ``[N]`` float64 new bias (the kept rows of ``weight`` are unchanged).

    Raises:
        InputError: shapes disagree or bad indices.
    """
    w = np.asarray(weight, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    if w.ndim != 2 or m.shape != (w.shape[0],):
        raise InputError(f"bias compensation needs weight [C, N] and mean [C]; got {w.shape} and {m.shape}")
    removed = np.ones(w.shape[0], bool)
    removed[_keep_index(keep, w.shape[0])] = False
    b = np.zeros(w.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    if b.shape != (w.shape[1],):
        raise InputError(f"bias has shape {b.shape}; the weight {w.shape} needs [{w.shape[1]}]")
    return b + m[removed] @ w[removed]


def output_error(
    gram_xx: np.ndarray, gram_xy: np.ndarray, gram_yy: np.ndarray, weight: np.ndarray, new_weight: np.ndarray
) -> float:
    """``||X_new W' - X_ref W||_F^2`` from Grams (biases excluded):
    ``tr(W'^T G_xx W') - 2 tr(W'^T G_xy W) + tr(W^T G_yy W)``.

    Args:
        gram_xx: ``[K, K]`` ``X_new^T X_new``; gram_xy: ``[K, C]``
            ``X_new^T X_ref``; gram_yy: ``[C, C]`` ``X_ref^T X_ref``.
        weight: ``[C, N]``; new_weight: ``[K, N]``.

    Returns:
        The squared error summed over calibration rows and outputs (>= 0 up to rounding).
    """
    w = np.asarray(weight, dtype=np.float64)
    v = np.asarray(new_weight, dtype=np.float64)
    gxx, gxy, gyy = (np.asarray(g, dtype=np.float64) for g in (gram_xx, gram_xy, gram_yy))
    return float(np.sum(v * (gxx @ v)) - 2.0 * np.sum(v * (gxy @ w)) + np.sum(w * (gyy @ w)))


@dataclass(frozen=True)
class Whitening:
    """A square root of a Gram matrix: ``factor @ factor.T == G + lam I`` (floored).

    Attributes:
        factor: ``[C, C]`` float64 ``S``; lower-triangular from Cholesky, ``V sqrt(w)`` from the fallback.
        inverse: ``[C, C]`` float64 ``S^-1``.
        ridge: the absolute ridge ``lam`` added to the diagonal.
        method: ``"cholesky"`` or ``"eigh"``.
        floored: eigenvalues raised to the floor by the fallback (0 for Cholesky).
    """

    factor: np.ndarray
    inverse: np.ndarray
    ridge: float
    method: str
    floored: int = 0


def whiten(gram: np.ndarray, ridge: float = DEFAULT_RIDGE, *, floor: float = 1e-8, where: str = "") -> Whitening:
    """SVD-LLM's whitening factor: ``S`` with ``S S^T = X^T X + lam I``, so
    that the SVD of ``S^T W`` truncates ``W`` by output error (each dropped
    singular value is exactly the error it adds). Cholesky first; when the
    Gram is not numerically positive definite, an eigendecomposition with
    eigenvalues raised to ``floor * max eigenvalue`` (and a logged warning).

    Args:
        gram: ``[C, C]`` ``X^T X`` (float64 sums).
        ridge: relative ridge (``lam = ridge * mean(diag(G))``), ``>= 0``.
        floor: relative eigenvalue floor of the fallback, ``> 0``.
        where: the layer, for the warning.

    Returns:
        :class:`Whitening`.

    Raises:
        InputError: not a square finite matrix, ``ridge < 0`` or ``floor <= 0``.
    """
    g = _square(gram, "the Gram matrix")
    if not (ridge >= 0) or not (floor > 0):
        raise InputError(f"whiten needs ridge >= 0 and floor > 0, got ridge={ridge!r}, floor={floor!r}")
    c = g.shape[0]
    lam = float(ridge * np.diag(g).mean()) if c else 0.0
    a = g + lam * np.eye(c)
    try:
        lower = scipy.linalg.cholesky(a, lower=True, check_finite=False)
        d = np.square(np.diag(lower))
        if c == 0 or d.min() > _PD_RCOND * d.max():
            inverse = scipy.linalg.solve_triangular(lower, np.eye(c), lower=True, check_finite=False)
            return Whitening(lower, inverse, lam, "cholesky")
        reason = f"Cholesky pivot ratio {d.min() / d.max():.1e}"
    except np.linalg.LinAlgError as e:
        reason = str(e)
    w, v = np.linalg.eigh(a)
    top = max(float(w.max()), 0.0)
    level = floor * top if top > 0 else floor
    floored = int((w < level).sum())
    w = np.maximum(w, level)
    root = np.sqrt(w)
    log.warning(
        "whitening%s: the Gram matrix (%d x %d, ridge %.3g) is not positive definite (%s); "
        "eigendecomposition with %d eigenvalue(s) raised to %.3g",
        f" of {where}" if where else "", c, c, lam, reason, floored, level,
    )
    return Whitening(v * root, (v / root).T, lam, "eigh", floored)


def blas_threads(threads: int):  # noqa: ANN201 - a context manager
    """A context limiting the BLAS libraries numpy and scipy load (OpenBLAS, MKL) to ``threads`` threads
    (``threadpoolctl.threadpool_limits``); ``threads <= 0`` leaves them as they are.

    The decompositions and solves here are many small (hundreds to a few thousand wide) problems: one thread
    is as fast on an idle machine and avoids OpenBLAS's spin-waiting threads collapsing on a loaded one (a
    384 x 384 SVD measured 40x slower with 2 threads on 2 busy cores).
    """
    import contextlib

    if threads <= 0:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")

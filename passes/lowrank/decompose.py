"""Low-rank factors of one weight: ``W [K, N] ~= A [K, r] @ B [r, N]``.

Three methods, each giving a *spectrum* (the singular values of the matrix
that is actually truncated) and factors at any rank:

- ``svd``: truncated SVD of ``W`` itself (Eckart-Young): minimizes the
  weight's Frobenius error, not the layer's output error.
- ``asvd``: activation-aware SVD (Yuan et al. 2023, "ASVD: Activation-aware
  Singular Value Decomposition for Compressing Large Language Models"): the
  SVD of ``diag(s) W`` with ``s_j = mean|x_j| ** alpha`` (input channel
  magnitude on the calibration data), the scaling undone on ``A``.
- ``svd-llm``: truncation-aware whitening (Wang et al. 2024, "SVD-LLM:
  Truncation-aware Singular Value Decomposition for Large Language Model
  Compression"): the SVD of ``S^T W`` with ``S S^T = X^T X + lam I`` (the
  Cholesky factor from :func:`graphopt.calibrate.reconstruct.whiten`, with
  its eigen fallback and warning), so that each dropped singular value
  squared is exactly the output error ``||X (W - A B)||^2`` it adds.

Each may be followed by a least-squares refit of ``B`` given ``A``
(:func:`graphopt.calibrate.reconstruct.least_squares` on ``A^T G A`` and
``A^T G W``, closed form from the Gram ``G = X^T X``). The singular values are
split evenly (``A = U sqrt(s)``, ``B = sqrt(s) V^T``) so both factors have
comparable ranges (INT8 per-channel quantization of each stays accurate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.calibrate.reconstruct import DEFAULT_RIDGE, least_squares, output_error, whiten
from graphopt.errors import InputError

__all__ = ["METHODS", "Spectrum", "spectrum", "factors", "relative_output_error"]

METHODS = ("svd", "asvd", "svd-llm")
"""Factorization methods by name."""


@dataclass(frozen=True)
class Spectrum:
    """The SVD of the (scaled) weight of one layer.

    Attributes:
        u: ``[K, p]`` left singular vectors of the truncated matrix (p = min(K, N)).
        s: ``[p]`` singular values, descending (float64).
        vt: ``[p, N]`` right singular vectors.
        left: ``[K, K]`` the map that undoes the scaling on ``A`` (``A = left @ U_r sqrt(s_r)``),
            None for plain svd (identity).
        method: the method name.
        energy: ``sum s^2``; for svd-llm this is ``||X W||^2 + lam ||W||^2`` (the layer's output energy).
    """

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    left: np.ndarray | None
    method: str
    energy: float

    def tail(self, rank: int) -> float:
        """``sum_{i >= rank} s_i^2 / sum s^2``: the relative error truncation to ``rank`` adds,
        measured in the method's own metric (output error for svd-llm, weight error for svd)."""
        if self.energy <= 0:
            return 0.0
        return float(np.sum(self.s[rank:] ** 2) / self.energy)


def spectrum(weight: np.ndarray, method: str, *, gram: np.ndarray | None = None, abs_mean: np.ndarray | None = None,
             alpha: float = 0.5, ridge: float = DEFAULT_RIDGE, where: str = "") -> Spectrum:
    """The spectrum of ``weight`` for ``method``.

    Args:
        weight: ``[K, N]`` (input channels x output channels), any float dtype (computed in float64).
        method: ``svd``, ``asvd`` or ``svd-llm``.
        gram: ``[K, K]`` ``X^T X`` of the layer's input on calibration data (svd-llm).
        abs_mean: ``[K]`` mean ``|x_j|`` per input channel (asvd).
        alpha: asvd's exponent (0.5 in the paper).
        ridge: relative ridge of the whitening (``lam = ridge * mean(diag(G))``).
        where: the layer's name, for the whitening fallback's warning.

    Raises:
        InputError: an unknown method, or the statistics it needs are missing or do not match ``K``.
    """
    w = np.asarray(weight, dtype=np.float64)
    k = w.shape[0]
    left = None
    if method == "svd":
        scaled = w
    elif method == "asvd":
        if abs_mean is None or np.shape(abs_mean) != (k,):
            raise InputError(f"asvd of {where or 'a layer'} needs the mean |x| of its {k} input channels "
                             "(calibration data)")
        m = np.asarray(abs_mean, dtype=np.float64)
        floor = max(float(m.max()), 1e-12) * 1e-6
        scale = np.maximum(m, floor) ** alpha
        scaled = scale[:, None] * w
        left = np.diag(1.0 / scale)
    elif method == "svd-llm":
        if gram is None or np.shape(gram) != (k, k):
            raise InputError(f"svd-llm of {where or 'a layer'} needs the [{k}, {k}] Gram matrix X^T X of its input "
                             "(calibration data)")
        white = whiten(gram, ridge, where=where)
        scaled = white.factor.T @ w
        left = white.inverse.T
    else:
        raise InputError(f"unknown factorization method {method!r}; choose one of {', '.join(METHODS)}")
    u, s, vt = np.linalg.svd(scaled, full_matrices=False)
    return Spectrum(u, s, vt, left, method, float(np.sum(s ** 2)))


def factors(spec: Spectrum, rank: int, *, gram: np.ndarray | None = None, weight: np.ndarray | None = None,
            refit: bool = False, ridge: float = DEFAULT_RIDGE, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(A [K, r], B [r, N])`` float64 at ``rank`` from ``spec``.

    With ``refit`` (and ``rank`` below full), ``B`` is replaced by the ridge least-squares solution of
    ``min ||X A B - X W||^2`` given ``A`` (needs ``gram`` and ``weight``).

    Raises:
        InputError: a rank outside ``[1, min(K, N)]``, or a refit without the Gram.
    """
    p = spec.s.shape[0]
    if not 1 <= rank <= p:
        raise InputError(f"rank {rank} of {where or 'a layer'} is outside [1, {p}]")
    root = np.sqrt(spec.s[:rank])
    a = spec.u[:, :rank] * root
    if spec.left is not None:
        a = spec.left @ a
    b = root[:, None] * spec.vt[:rank]
    if refit and rank < p:  # at full rank A B == W already: a refit could only add the ridge's bias
        if gram is None or weight is None:
            raise InputError(f"the least-squares refit of {where or 'a layer'} needs calibration data (X^T X)")
        g = np.asarray(gram, dtype=np.float64)
        w = np.asarray(weight, dtype=np.float64)
        ga = g @ a
        b = least_squares(a.T @ ga, ga.T @ w, ridge=ridge, where=where).weight
    return a, b


def relative_output_error(gram: np.ndarray, weight: np.ndarray, approx: np.ndarray) -> float:
    """``||X (W - W')||_F^2 / ||X W||_F^2`` from ``G = X^T X`` (``[K, K]``), ``W``, ``W'`` (``[K, N]``);
    0 when the layer's output is zero. Uses :func:`graphopt.calibrate.reconstruct.output_error`."""
    g = np.asarray(gram, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    total = float(np.sum(w * (g @ w)))
    if total <= 0:
        return 0.0
    return max(output_error(g, g, g, w, approx), 0.0) / total

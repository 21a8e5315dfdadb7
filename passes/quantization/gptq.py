"""The numerics of ``quantize-weights-int4``: block-wise 4-bit quantization of a
``[K, N]`` weight by round-to-nearest (RTN) or by GPTQ, the Hessians GPTQ
reads from calibration data, and the storage layouts of the result
(MatMulNBits' packed blocks, DequantizeLinear-21's int4 / uint4 tensors).

Blocks run along K (the reduction axis of ``A @ W``): rows ``b*B .. b*B+B-1``
of column ``n`` share one scale and one zero point. A code ``q`` in 0..15
stands for ``(q - zp) * scale``. Symmetric quantization fixes ``zp = 8``
(int4 ``q - 8`` in -8..7); asymmetric chooses ``zp`` per block.

Sources:
- Round-to-nearest parameters as onnxruntime's ``MatMulNBitsQuantizer``
  (``onnxruntime/python/tools/quantization/matmul_nbits_quantizer.py``,
  ``quant_slice_symmetric`` / ``quant_slice_asymmetric``): symmetric
  ``scale = m / -8`` with ``m`` the block's value of largest magnitude (so it
  maps exactly to -8 and the full -8..7 range is used; llama.cpp's Q4_0 does
  the same); asymmetric over ``[min(x, 0), max(x, 0)]``, ``scale = range / 15``,
  ``zp = round(-min / scale)``.
- GPTQ: E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate
  Post-Training Quantization for Generative Pre-trained Transformers",
  ICLR 2023 (arXiv:2210.17323), Algorithm 1: the columns of ``W^T`` (input
  features) are quantized in order; each one's error, divided by the
  diagonal of the upper Cholesky factor of ``H^-1``, is propagated to the
  not yet quantized columns; updates are applied lazily per batch of 128
  columns; ``H = 2 X^T X`` dampened by ``0.01 * mean(diag H)``. Group
  (block) parameters are computed when quantization reaches the group, from
  the already-updated weights ("static groups" off, no act-order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["Blockwise", "rtn_quantize", "gptq_quantize", "HessianAccumulator", "pack_matmulnbits", "dq_tensors"]

_CHUNK = 2048
"""Columns quantized at a time by RTN, to bound the temporaries of a large weight."""


@dataclass
class Blockwise:
    """A ``[K, N]`` weight quantized to 4 bits in blocks of ``block`` rows.

    Attributes:
        codes: uint8 ``[K, N]``, each in 0..15.
        scales: float32 ``[ceil(K / block), N]`` (already rounded to the
            weight's dtype when that is float16).
        zero_points: uint8 ``[ceil(K / block), N]`` in 0..15; all 8 when symmetric.
        block: the block size along K.
        symmetric: zero points are fixed at 8.
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    block: int
    symmetric: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def dequantize(self) -> np.ndarray:
        """The float32 ``[K, N]`` weight the codes stand for: ``(q - zp) * scale``."""
        k = self.codes.shape[0]
        zp = np.repeat(self.zero_points, self.block, axis=0)[:k].astype(np.float32)
        scale = np.repeat(self.scales, self.block, axis=0)[:k]
        return (self.codes.astype(np.float32) - zp) * scale


def pack_matmulnbits(q: Blockwise) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' ``(B, scales, zero_points)`` of a ``[K, N]`` quantized weight.

    Returns:
        ``B`` uint8 ``[N, n_blocks, block / 2]``, ``scales`` float32
        ``[N, n_blocks]``, ``zero_points`` uint8 ``[N, ceil(n_blocks / 2)]``
        (None when symmetric). Layout in :mod:`graphopt.passes.quantization.int4`'s doc.
    """
    k, n = q.shape
    nb, bs = q.scales.shape[0], q.block
    codes = np.empty((nb * bs, n), dtype=np.uint8)
    codes[:k] = q.codes
    codes[k:] = q.zero_points[-1]  # padding rows: the code of 0.0
    blocks = codes.T.reshape(n, nb, bs // 2, 2)
    packed = blocks[..., 0] | (blocks[..., 1] << 4)
    scales = np.ascontiguousarray(q.scales.T)
    if q.symmetric:
        return np.ascontiguousarray(packed), scales, None
    zp = np.zeros((n, nb + nb % 2), dtype=np.uint8)
    zp[:, :nb] = q.zero_points.T
    return np.ascontiguousarray(packed), scales, np.ascontiguousarray(zp[:, 0::2] | (zp[:, 1::2] << 4))


def dq_tensors(q: Blockwise, transposed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(x, x_scale, x_zero_point)`` for DequantizeLinear-21 (or
    GatherBlockQuantized) as ml_dtypes int4 / uint4 arrays.

    ``x`` is ``[K, N]`` with blocks on axis 0, or ``[N, K]`` with blocks on
    axis 1 when ``transposed``; symmetric gives int4 ``q - 8`` and no zero point.
    """
    codes, scales, zps = q.codes, q.scales, q.zero_points
    if transposed:
        codes, scales, zps = codes.T, scales.T, zps.T
    if q.symmetric:
        return (codes.astype(np.int8) - 8).astype(ml_dtypes.int4), np.ascontiguousarray(scales), None
    return codes.astype(ml_dtypes.uint4), np.ascontiguousarray(scales), zps.astype(ml_dtypes.uint4)


def _params(x: np.ndarray, axis: int, symmetric: bool, positive: bool,
            dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, zero point and the reciprocal scale (0 where the scale is 0) of
    the blocks of ``x`` reduced over ``axis``; the scale rounded to ``dtype``
    first so that codes are chosen for the scale that will be stored."""
    hi, lo = x.max(axis=axis), x.min(axis=axis)
    if symmetric:
        if positive:  # TensorRT needs positive scales: the -8 code stays unused
            scale = np.maximum(np.abs(hi), np.abs(lo)) / 7.0
        else:
            scale = np.where(np.abs(hi) > np.abs(lo), hi, lo) / -8.0
        zp = np.full(scale.shape, 8, dtype=np.uint8)
    else:
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = (hi - lo) / 15.0
        zp = None
    scale = scale.astype(dtype).astype(np.float32)
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    if zp is None:
        zp = np.where(scale == 0, 8.0, np.clip(np.round(-lo * inv), 0, 15)).astype(np.uint8)
    return scale, zp, inv


def rtn_quantize(w: np.ndarray, block: int, symmetric: bool, positive: bool = False,
                 dtype: np.dtype = np.dtype(np.float32)) -> Blockwise:
    """Round-to-nearest block-wise quantization of ``w`` (``[K, N]``, any float).

    K need not be a multiple of ``block``: the last block is shorter (its
    parameters are those of the block padded with zeros, which change neither
    the symmetric maximum nor the asymmetric range, which includes 0).

    Args:
        positive: symmetric scales ``max|x| / 7`` (positive, for TensorRT)
            instead of ``m / -8``.
        dtype: the dtype the scales will be stored in.
    """
    k, n = w.shape
    nb = math.ceil(k / block)
    codes = np.empty((k, n), dtype=np.uint8)
    scales = np.empty((nb, n), dtype=np.float32)
    zps = np.empty((nb, n), dtype=np.uint8)
    for c0 in range(0, n, _CHUNK):
        c1 = min(c0 + _CHUNK, n)
        part = np.zeros((nb * block, c1 - c0), dtype=np.float32)
        part[:k] = w[:, c0:c1]
        blocks = part.reshape(nb, block, c1 - c0)
        scale, zp, inv = _params(blocks, 1, symmetric, positive, dtype)
        q = np.clip(np.round(blocks * inv[:, None, :]) + zp[:, None, :], 0, 15).astype(np.uint8)
        codes[:, c0:c1] = q.reshape(nb * block, c1 - c0)[:k]
        scales[:, c0:c1], zps[:, c0:c1] = scale, zp
    return Blockwise(codes, scales, zps, block, symmetric)


def gptq_quantize(w: np.ndarray, hessian: np.ndarray, block: int, symmetric: bool, positive: bool = False,
                  dtype: np.dtype = np.dtype(np.float32), damp: float = 0.01, lazy: int = 128) -> Blockwise:
    """GPTQ (Algorithm 1 of the paper) for ``A @ w``, ``w: [K, N]``.

    Args:
        w: the float weight ``[K, N]``.
        hessian: ``X^T X`` (any positive multiple; float64 ``[K, K]``) of the
            MatMul's input rows ``X: [tokens, K]`` over the calibration data.
        block: the quantization block (group) size along K.
        damp: dampening, as a fraction of the mean diagonal of ``hessian``.
        lazy: columns per lazy batch update (a multiple of ``block`` is used).

    Returns:
        The codes and parameters, in the layout of :func:`rtn_quantize`.
        Inputs that were always zero on the calibration data (zero diagonal)
        get weight 0 in the quantization (their rows do not affect the output).
    """
    k, n = w.shape
    nb = math.ceil(k / block)
    lazy = max(lazy // block, 1) * block
    h = np.array(hessian, dtype=np.float64, copy=True)
    wt = np.array(w.T, dtype=np.float64, copy=True)  # [N, K]: columns are input features, as in the paper
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    wt[:, dead] = 0.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    try:
        lower = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:  # not positive definite in float64: dampen harder
        h[np.diag_indices(k)] += float(np.mean(np.diag(h)))
        lower = np.linalg.cholesky(h)
    inv_lower = np.linalg.inv(lower)
    hinv = inv_lower.T @ inv_lower  # H^-1 = L^-T L^-1
    upper = np.linalg.cholesky(hinv).T  # H^-1 = U^T U, U upper triangular
    codes = np.empty((n, k), dtype=np.uint8)
    scales = np.empty((nb, n), dtype=np.float32)
    zps = np.empty((nb, n), dtype=np.uint8)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = wt[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % block == 0:  # the group starts: its parameters from the updated weights
                scale, zp, inv = _params(w1[:, i:i + block].astype(np.float32), 1, symmetric, positive, dtype)
                scales[col // block], zps[col // block] = scale, zp
                scale64, zp64 = scale.astype(np.float64), zp.astype(np.float64)
            x = w1[:, i]
            q = np.clip(np.round(x * inv) + zp64, 0, 15)
            codes[:, col] = q
            e = (x - (q - zp64) * scale64) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        wt[:, i2:] -= err1 @ upper[i1:i2, i2:]
    return Blockwise(np.ascontiguousarray(codes.T), scales, zps, block, symmetric)


class HessianAccumulator:
    """Running ``X^T X`` (float64) of named ``[..., K]`` activations, one
    matrix per name: memory ``8 K^2`` bytes per name."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        """Add the rows of ``x`` (reshaped to ``[-1, K]``)."""
        rows = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        gram = rows.T @ rows
        if name in self.sums:
            self.sums[name] += gram
        else:
            self.sums[name] = gram
        self.rows[name] = self.rows.get(name, 0) + rows.shape[0]

    def hessian(self, name: str) -> np.ndarray | None:
        """``2 X^T X / rows`` for ``name``, or None when no rows were seen."""
        if not self.rows.get(name):
            return None
        return self.sums[name] * (2.0 / self.rows[name])

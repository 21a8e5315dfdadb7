"""Quantization parameters: scale and zero point from a calibrated range, and
per-tensor / per-channel quantization of constant weights and biases.

The arithmetic is the ONNX ``QuantizeLinear`` / ``DequantizeLinear`` spec
(opset 10/13/19/21): ``q = saturate(round_half_even(x / scale) + zero_point)``,
``x' = (q - zero_point) * scale``. Ranges always include 0 so that zero (padding,
ReLU output, masked values) is exactly representable (Jacob et al., "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018, section 2.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.errors import InputError

__all__ = ["QTYPES", "QuantParams", "params_from_range", "quantize_array", "quantize_weight", "quantize_bias"]

QTYPES: dict[str, tuple[np.dtype, int, int]] = {
    "uint8": (np.dtype(np.uint8), 0, 255),
    "int8": (np.dtype(np.int8), -128, 127),
}
"""Quantized type name -> (numpy dtype, qmin, qmax)."""

_TINY = np.float32(1e-12)


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor.

    Attributes:
        scale: float32 array, shape ``()`` per tensor or ``(C,)`` per channel.
        zero_point: array of the quantized dtype, same shape as ``scale``.
        qtype: ``uint8`` or ``int8``.
        axis: the channel axis for per-channel parameters, else None.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: str
    axis: int | None = None


def _qtype(name: str) -> tuple[np.dtype, int, int]:
    if name not in QTYPES:
        raise InputError(f"quantized type {name!r} is not one of {sorted(QTYPES)}")
    return QTYPES[name]


def params_from_range(rmin: float | np.ndarray, rmax: float | np.ndarray, qtype: str = "uint8",
                      symmetric: bool = False, axis: int | None = None) -> QuantParams:
    """Scale and zero point that map ``[rmin, rmax]`` (widened to include 0) onto ``qtype``.

    Asymmetric: ``scale = (rmax - rmin) / (qmax - qmin)``,
    ``zero_point = round(qmin - rmin / scale)``. Symmetric (int8: zero point 0;
    uint8: zero point 128): ``scale = max(|rmin|, |rmax|) / 127`` for int8 (the
    restricted range [-127, 127], so ``-max`` and ``+max`` are both exact) and
    ``/ 127.5`` for uint8, as onnxruntime's ``compute_scale_zp`` (with
    ``get_qmin_qmax_for_qType(symmetric=True)``) and TensorRT's explicit
    quantization (symmetric int8 only) do. A zero-width range gets scale 1 so that
    dequantization stays finite.

    Args:
        rmin, rmax: floats, or float arrays of shape ``(C,)`` for per-channel.
        qtype: ``uint8`` or ``int8``.
        symmetric: zero point at the middle of the type's range.
        axis: recorded in the result for per-channel parameters.

    Raises:
        InputError: unknown ``qtype``, or ``rmin > rmax``.
    """
    dtype, qmin, qmax = _qtype(qtype)
    lo = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if np.any(np.asarray(rmin) > np.asarray(rmax)) or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise InputError(f"quantization range [{rmin}, {rmax}] is empty or not finite")
    if symmetric:
        bound = np.maximum(-lo, hi)
        scale = bound / (float(qmax) if qtype == "int8" else (qmax - qmin) / 2.0)
        zero = np.full(scale.shape, 0 if qtype == "int8" else 128, dtype=np.float64)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero = np.clip(np.round(qmin - lo / safe), qmin, qmax)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return QuantParams(scale, zero.astype(dtype), qtype, axis)


def quantize_array(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """``QuantizeLinear`` in numpy: round half to even, saturate.

    Args:
        x: float array; per-channel parameters broadcast along ``params.axis``.

    Returns:
        An array of the quantized dtype, shape of ``x``.
    """
    dtype, qmin, qmax = _qtype(params.qtype)
    scale = params.scale.astype(np.float32)
    zero = params.zero_point.astype(np.float32)
    if params.axis is not None and scale.ndim == 1:
        shape = [1] * x.ndim
        shape[params.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    q = np.rint(x.astype(np.float32) / scale) + zero
    return np.clip(q, qmin, qmax).astype(dtype)


def quantize_weight(w: np.ndarray, axis: int | None, qtype: str = "int8", symmetric: bool = True
                    ) -> tuple[np.ndarray, QuantParams]:
    """Quantize a constant weight per channel (``axis``) or per tensor (``axis=None``).

    Per-channel symmetric int8 is what onnxruntime's QLinearConv /
    MatMulIntegerToFloat kernels and TensorRT take (zero point 0; TensorRT
    requires it). The range of each channel is its min/max (weights are known
    exactly: no calibration).

    Args:
        w: float array, e.g. MatMul ``B [K, N]`` (axis 1), Conv ``W [M, C/g, kH, kW]`` (axis 0).

    Returns:
        ``(quantized weight, params)``; scales float32 ``(w.shape[axis],)`` or ``()``.
    """
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        return_params = params_from_range(float(w.min(initial=0.0)), float(w.max(initial=0.0)), qtype, symmetric)
    else:
        axes = tuple(i for i in range(w.ndim) if i != axis)
        lo = w.min(axis=axes, initial=0.0) if axes else np.minimum(w, 0.0)
        hi = w.max(axis=axes, initial=0.0) if axes else np.maximum(w, 0.0)
        return_params = params_from_range(lo, hi, qtype, symmetric, axis)
    return quantize_array(w, return_params), return_params


def quantize_bias(bias: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a Conv/Gemm bias to int32 with ``scale = input_scale * weight_scale``
    and zero point 0, the layout onnxruntime's QLinearConv/QGemm expect
    (the accumulator's scale, so the bias adds to the int32 sum exactly).

    Args:
        bias: float array ``(M,)``.
        input_scale: float32 scalar (per-tensor activation scale).
        weight_scale: float32 ``()`` or ``(M,)``.

    Returns:
        ``(int32 bias (M,), float32 scale (M,))``.
    """
    scale = (np.asarray(input_scale, np.float32) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.broadcast_to(np.where(scale > 0, scale, _TINY), bias.shape).astype(np.float32)
    q = np.clip(np.rint(np.asarray(bias, np.float64) / scale), -(2**31), 2**31 - 1).astype(np.int32)
    return q, scale

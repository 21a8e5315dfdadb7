"""Quantization parameters by hand: scale and zero point from ranges (asymmetric,
symmetric, zero-width, per channel), QuantizeLinear's rounding and saturation,
per-channel weights, int32 biases, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.passes.quantization.params import (
    QuantParams,
    params_from_range,
    quantize_array,
    quantize_bias,
    quantize_weight,
)


def test_asymmetric_uint8_hand_computed():
    p = params_from_range(-1.0, 3.0, "uint8")
    assert p.scale == np.float32(4.0 / 255)
    assert p.scale.dtype == np.float32 and p.scale.shape == ()
    # round(0 - (-1) / (4 / 255)) = round(63.75) = 64
    assert p.zero_point == 64 and p.zero_point.dtype == np.uint8
    assert (p.qtype, p.axis) == ("uint8", None)
    # -1 and 3 land on the ends of [0, 255]; 0 is exact
    assert quantize_array(np.array([-1.0, 0.0, 3.0], np.float32), p).tolist() == [0, 64, 255]


def test_asymmetric_int8_shifts_the_zero_point():
    p = params_from_range(-1.0, 3.0, "int8")
    assert p.scale == np.float32(4.0 / 255)
    assert p.zero_point == -64 and p.zero_point.dtype == np.int8  # round(-128 + 63.75)


def test_range_widened_to_include_zero():
    above = params_from_range(1.0, 3.0, "uint8")  # as [0, 3]
    assert (above.scale, above.zero_point) == (np.float32(3.0 / 255), 0)
    below = params_from_range(-2.0, -1.0, "uint8")  # as [-2, 0]
    assert (below.scale, below.zero_point) == (np.float32(2.0 / 255), 255)
    assert quantize_array(np.array([0.0], np.float32), below).tolist() == [255]


def test_symmetric_int8_zero_point_0_restricted_range():
    p = params_from_range(-1.0, 3.0, "int8", symmetric=True)
    assert p.scale == np.float32(3.0 / 127)  # max(|rmin|, |rmax|) / 127: -3 and +3 both exact
    assert p.zero_point == 0 and p.zero_point.dtype == np.int8
    assert quantize_array(np.array([-3.0, -1.0, 3.0], np.float32), p).tolist() == [-127, -42, 127]


def test_symmetric_uint8_zero_point_128():
    p = params_from_range(-1.0, 3.0, "uint8", symmetric=True)
    assert p.scale == np.float32(3.0 / 127.5)
    assert p.zero_point == 128 and p.zero_point.dtype == np.uint8


def test_zero_width_range_gets_scale_1():
    for qtype, symmetric, zero in (("uint8", False, 0), ("int8", False, -128), ("int8", True, 0)):
        p = params_from_range(0.0, 0.0, qtype, symmetric)
        assert p.scale == np.float32(1.0), qtype
        assert p.zero_point == zero, qtype


def test_per_channel_arrays():
    p = params_from_range(np.array([-1.0, 0.0, -2.0]), np.array([1.0, 0.0, 6.35]), "int8", True, axis=0)
    np.testing.assert_array_equal(p.scale, np.array([1 / 127, 1.0, 0.05], np.float32))
    assert p.scale.dtype == np.float32 and p.zero_point.dtype == np.int8
    assert p.zero_point.tolist() == [0, 0, 0] and p.axis == 0
    asym = params_from_range(np.array([-1.0, 1.0]), np.array([3.0, 2.55]), "uint8", axis=1)
    np.testing.assert_array_equal(asym.scale, np.array([4 / 255, 0.01], np.float32))
    assert asym.zero_point.tolist() == [64, 0]


def test_quantize_array_rounds_half_to_even_and_saturates():
    unit = QuantParams(np.array(1.0, np.float32), np.array(0, np.uint8), "uint8")
    x = np.array([2.5, 3.5, 0.5, 1.5, -0.5, -3.0, 255.5, 300.0], np.float32)
    q = quantize_array(x, unit)
    assert q.dtype == np.uint8
    assert q.tolist() == [2, 4, 0, 2, 0, 0, 255, 255]
    signed = QuantParams(np.array(0.5, np.float32), np.array(-10, np.int8), "int8")
    # x / 0.5 - 10: 1.25 -> 2.5 -> 2 - 10; -1.25 -> -2.5 -> -2 - 10; 100 -> 190 -> 127; -100 -> -210 -> -128
    assert quantize_array(np.array([1.25, -1.25, 100.0, -100.0], np.float32), signed).tolist() == [-8, -12, 127, -128]


def test_quantize_array_per_channel_broadcasts_along_axis():
    p = QuantParams(np.array([1.0, 0.5], np.float32), np.array([0, 10], np.uint8), "uint8", axis=1)
    x = np.array([[1.0, 1.0], [3.0, -5.0]], np.float32)
    assert quantize_array(x, p).tolist() == [[1, 12], [3, 0]]


W = np.array([[1.0, -2.0, 0.5],
              [-4.0, 1.0, 3.0]], np.float32)


def test_quantize_weight_per_channel_axis_0():
    q, p = quantize_weight(W, 0)
    # row bounds 2 and 4: scales 2/127, 4/127
    np.testing.assert_array_equal(p.scale, np.array([2 / 127, 4 / 127], np.float32))
    assert p.zero_point.tolist() == [0, 0] and p.axis == 0 and p.qtype == "int8"
    # 1 * 127/2 = 63.5 -> 64 (even); 0.5 * 63.5 = 31.75 -> 32; 1 * 31.75 -> 32; 3 * 31.75 = 95.25 -> 95
    assert q.dtype == np.int8
    assert q.tolist() == [[64, -127, 32], [-127, 32, 95]]


def test_quantize_weight_per_channel_axis_1():
    q, p = quantize_weight(W, 1)
    np.testing.assert_array_equal(p.scale, np.array([4 / 127, 2 / 127, 3 / 127], np.float32))
    assert p.zero_point.tolist() == [0, 0, 0] and p.axis == 1
    # column 0: 1 * 31.75 -> 32; column 2: 0.5 * 42.33 -> 21
    assert q.tolist() == [[32, -127, 21], [-127, 64, 127]]


def test_quantize_weight_per_tensor_and_asymmetric():
    q, p = quantize_weight(W, None)
    assert p.scale == np.float32(4 / 127) and p.zero_point == 0 and p.axis is None
    assert q.tolist() == [[32, -64, 16], [-127, 32, 95]]
    qa, pa = quantize_weight(W, None, "uint8", symmetric=False)
    assert pa.scale == np.float32(7 / 255) and pa.zero_point == 146  # round(4 / (7/255)) = round(145.71)
    assert qa.tolist() == [[182, 73, 164], [0, 182, 255]]


def test_quantize_bias_int32_at_the_accumulator_scale():
    w_scale = np.array([0.5, 0.25, 0.2], np.float32)
    q, scale = quantize_bias(np.array([1.0, -2.0, 0.3], np.float32), np.float32(0.1), w_scale)
    np.testing.assert_array_equal(scale, np.float32(0.1) * w_scale)  # the float32 product, as onnxruntime forms it
    np.testing.assert_allclose(scale, [0.05, 0.025, 0.02], rtol=1e-7)
    assert q.dtype == np.int32 and scale.dtype == np.float32
    assert q.tolist() == [20, -80, 15]
    # a per-tensor weight scale broadcasts to the bias; values beyond int32 saturate
    q, scale = quantize_bias(np.array([1.0, 1e12, -1e12], np.float32), np.float32(0.5), np.float32(0.5))
    assert scale.tolist() == [0.25, 0.25, 0.25]
    assert q.tolist() == [4, 2**31 - 1, -(2**31)]


def test_bad_qtype_is_refused():
    with pytest.raises(InputError, match=r"quantized type 'int16' is not one of \['int8', 'uint8'\]"):
        params_from_range(0.0, 1.0, "int16")
    with pytest.raises(InputError, match="quantized type 'int4'"):
        quantize_array(np.zeros(2, np.float32), QuantParams(np.float32(1), np.int8(0), "int4"))


@pytest.mark.parametrize("rmin, rmax", [(1.0, -1.0), (3.0, 2.0), (0.0, float("inf")), (float("nan"), 1.0)])
def test_empty_or_nonfinite_range_is_refused(rmin, rmax):
    with pytest.raises(InputError, match=r"quantization range \[.*\] is empty or not finite"):
        params_from_range(rmin, rmax, "uint8")


def test_empty_per_channel_range_is_refused():
    with pytest.raises(InputError, match="is empty or not finite"):
        params_from_range(np.array([0.0, 2.0]), np.array([1.0, 1.0]), "int8", True, axis=0)

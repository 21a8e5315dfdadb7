"""Tensors that onnxruntime's numpy bridge cannot carry, moved through ``OrtValue``.

``InferenceSession.run`` converts inputs and outputs through numpy type
numbers, and onnxruntime's Python bindings have none for bfloat16, the float8
types, float8e8m0, float4e2m1 and the 4- and 2-bit integers ("Numpy_type 273
can't be converted", "No corresponding Numpy type for Tensor Type"). onnx
and graphopt hold such tensors as ``ml_dtypes`` arrays, one element per byte
(two bytes for bfloat16). onnxruntime stores the sub-byte types packed: the
4-bit types two per byte and the 2-bit types four per byte, the first element
in the lowest bits (onnxruntime's ``Int4x2`` / ``Int2x4``, the ONNX spec's
packing for INT4/UINT4/FLOAT4E2M1/INT2/UINT2). :func:`to_ort_value` packs an
``ml_dtypes`` array into an ``OrtValue`` allocated with the ONNX element type;
:func:`from_ort_value` reads one back from CPU memory and unpacks it, so that
verification compares the values, not a numpy conversion error.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.errors import VerificationError

__all__ = ["ORT_VALUE_TYPES", "from_ort_value", "needs_ort_value", "to_ort_value"]

_T = onnx.TensorProto
#: bits per element of the packed types
_PACKED_BITS = {_T.INT4: 4, _T.UINT4: 4, _T.FLOAT4E2M1: 4, _T.INT2: 2, _T.UINT2: 2}
#: every element type that goes through ``OrtValue``
ORT_VALUE_TYPES = frozenset({
    _T.BFLOAT16, _T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ, _T.FLOAT8E8M0,
    *_PACKED_BITS,
})


def needs_ort_value(elem_type: int) -> bool:
    """True for ONNX element types that must go through ``OrtValue`` (module doc)."""
    return elem_type in ORT_VALUE_TYPES


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def pack(array: np.ndarray, bits: int) -> np.ndarray:
    """Pack the low ``bits`` bits of each element of a one-byte-per-element
    array, first element in the lowest bits; returns ``ceil(n * bits / 8)``
    uint8 (the last byte zero-padded)."""
    per = 8 // bits
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8) & np.uint8((1 << bits) - 1)
    raw = np.pad(raw, (0, -raw.size % per)).reshape(-1, per).astype(np.uint8)
    out = np.zeros(raw.shape[0], np.uint8)
    for j in range(per):
        out |= raw[:, j] << np.uint8(bits * j)
    return out


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack`: ``count`` uint8 values of ``bits`` bits each."""
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * np.uint8(bits)
    out = (packed.reshape(-1, 1) >> shifts) & np.uint8((1 << bits) - 1)
    return out.reshape(-1)[:count].astype(np.uint8)


def to_ort_value(array: np.ndarray, elem_type: int) -> ort.OrtValue:
    """An ``OrtValue`` of ONNX type ``elem_type`` holding ``array`` (an
    ``ml_dtypes`` array of that type, or its raw bytes: uint8 for one-byte
    types, uint16 for bfloat16), packed where the type is sub-byte.

    Raises:
        VerificationError: the array's element size does not fit the type.
    """
    array = np.ascontiguousarray(array)
    if elem_type in _PACKED_BITS:
        if array.dtype.itemsize != 1:
            raise VerificationError(f"a {onnx.TensorProto.DataType.Name(elem_type)} tensor must be given one "
                                    f"element per byte (ml_dtypes), got {array.dtype}")
        data = pack(array, _PACKED_BITS[elem_type])
    else:
        data = array.view(np.uint16 if array.dtype.itemsize == 2 else np.uint8)
    value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), elem_type)
    if value.tensor_size_in_bytes() != data.nbytes:
        raise VerificationError(f"{onnx.TensorProto.DataType.Name(elem_type)} tensor of shape {array.shape}: "
                                f"onnxruntime holds {value.tensor_size_in_bytes()} bytes, given {data.nbytes}")
    if data.nbytes:
        ctypes.memmove(value.data_ptr(), data.ctypes.data, data.nbytes)
    return value


def from_ort_value(value: ort.OrtValue) -> Any:
    """A numpy (``ml_dtypes`` for the types of the module doc) copy of an
    ``OrtValue``; sequences and other non-tensors via ``value.numpy()``.

    Raises:
        VerificationError: an ``OrtValue`` type outside CPU memory.
    """
    if not value.is_tensor():
        return value.numpy()
    elem = value.element_type()
    if not needs_ort_value(elem):
        return value.numpy()
    if value.device_name().lower() != "cpu":
        raise VerificationError(f"{onnx.TensorProto.DataType.Name(elem)} outputs can only be read back from CPU memory")
    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    size = value.tensor_size_in_bytes()
    raw = np.frombuffer(ctypes.string_at(value.data_ptr(), size) if size else b"", np.uint8)
    dtype = _np_dtype(elem)
    if elem in _PACKED_BITS:
        return unpack(raw, _PACKED_BITS[elem], count).view(dtype).reshape(shape)
    return raw.view(dtype).reshape(shape).copy()

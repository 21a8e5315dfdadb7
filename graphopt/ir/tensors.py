"""Tensors read from a ModelProto, with their shape, dtype and size built once.

onnx-ir's ``serde.TensorProtoTensor`` (what ``deserialize_model`` makes of an
initializer or a Constant's tensor stored in the protobuf) builds a new frozen
``Shape`` and a new ``DataType`` on every ``.shape`` / ``.dtype`` read, and its
``nbytes`` multiplies the dims out each time. Passes read them over and over
(constant checks, size caps, duplicate-initializer grouping, the
shape-inference encoder): on a small model, some thousands of ``Shape``
constructions per O1 run. :class:`ProtoTensor` is the same tensor (a subclass:
onnx-ir serializes it by copying the proto, as before) with the three
computed once; a tensor's proto does not change after loading (its ``name``
may, and is still read from the proto).
"""

from __future__ import annotations

import math

import numpy as np
from onnx_ir import DataType, Shape, serde

__all__ = ["ProtoTensor", "cached_tensor"]

_KEEP_BYTES = 1 << 16
"""A numpy copy of a tensor (data not in ``raw_data``, or converted) is kept up to this size."""


class ProtoTensor(serde.TensorProtoTensor):  # pylint: disable=too-many-ancestors
    """``serde.TensorProtoTensor`` with ``shape``, ``dtype`` and ``nbytes`` computed once.

    Args:
        proto: the ``onnx.TensorProto`` (not copied; data read lazily, as onnx-ir does).
    """

    __slots__ = ("_shape", "_dtype", "_nbytes", "_array", "_bytes")

    def __init__(self, proto) -> None:  # noqa: ANN001 - onnx.TensorProto
        super().__init__(proto)
        self._shape = Shape(proto.dims, frozen=True)
        self._dtype = DataType(proto.data_type)
        self._nbytes = math.ceil(self._dtype.itemsize * math.prod(self._shape.numpy()))
        self._array = None
        self._bytes = None

    def numpy(self) -> np.ndarray:
        """The tensor as a read-only numpy array (``serde.TensorProtoTensor.numpy``),
        kept after the first call when it is a view of the proto's bytes or
        at most ``_KEEP_BYTES`` (a fold reads a BatchNormalization's or a
        Conv's parameters several times)."""
        array = self._array
        if array is None:
            array = super().numpy()
            if array.flags.writeable:
                array.flags.writeable = False  # shared from now on: nobody may write into it
            if not array.flags.owndata or array.nbytes <= _KEEP_BYTES:
                self._array = array
        return array

    def tobytes(self) -> bytes:
        """The little-endian bytes (``serde.TensorProtoTensor.tobytes``), kept
        after the first call up to ``_KEEP_BYTES`` (``raw_data`` is returned
        as it is, without a copy; other fields are converted)."""
        data = self._bytes
        if data is None:
            data = super().tobytes()
            if len(data) <= _KEEP_BYTES:
                self._bytes = data
        return data

    @property
    def shape(self) -> Shape:
        return self._shape

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @property
    def nbytes(self) -> int:
        return self._nbytes


def cached_tensor(tensor):  # noqa: ANN001, ANN201 - any TensorProtocol
    """``tensor`` as a :class:`ProtoTensor` when it is a plain onnx-ir
    ``TensorProtoTensor`` (the same proto, not copied), else ``tensor`` itself
    (numpy-backed ``ir.Tensor``, ``ExternalTensor``, string tensors, ...)."""
    if type(tensor) is not serde.TensorProtoTensor:
        return tensor
    try:
        return ProtoTensor(tensor.raw)
    except (ValueError, TypeError):  # an unknown data_type: leave it to onnx-ir
        return tensor

"""ProtoTensor: onnx-ir's TensorProtoTensor with shape, dtype and size computed once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from graphopt import ir


def test_proto_tensor_reads_like_onnx_irs_tensor():
    proto = numpy_helper.from_array(np.arange(6, dtype=np.float16).reshape(2, 3), "w")
    plain = ir.serde.deserialize_tensor(proto)
    cached = ir.cached_tensor(plain)
    assert type(cached) is ir.ProtoTensor and cached.raw is proto
    assert cached.shape == plain.shape and cached.shape.frozen
    assert cached.shape is cached.shape  # built once
    assert cached.dtype == plain.dtype == ir.DataType.FLOAT16
    assert cached.nbytes == plain.nbytes == 12
    np.testing.assert_array_equal(cached.numpy(), plain.numpy())
    assert cached.tobytes() == plain.tobytes()
    assert ir.serde.serialize_tensor(cached) == ir.serde.serialize_tensor(plain)
    cached.name = "renamed"
    assert cached.name == proto.name == "renamed"


def test_packed_int4_size():
    proto = helper.make_tensor("q", TensorProto.INT4, [3], [1, -2, 3])
    cached = ir.cached_tensor(ir.serde.deserialize_tensor(proto))
    assert type(cached) is ir.ProtoTensor and cached.nbytes == 2
    assert cached.numpy().tolist() == [1, -2, 3]


def test_other_tensors_are_left_as_they_are():
    array = ir.Tensor(np.ones(3, np.float32))
    words = ir.serde.deserialize_tensor(helper.make_tensor("s", TensorProto.STRING, [1], [b"a"]))
    assert ir.cached_tensor(array) is array
    assert ir.cached_tensor(words) is words
    assert ir.cached_tensor(ir.cached_tensor(array)) is array


def test_load_gives_initializers_as_proto_tensors(tmp_path):
    model = ir.load(MODELS / "bert_tiny_ts.onnx")
    tensors = [v.const_value for v in model.graph.initializers.values()]
    assert tensors and all(type(t) is ir.ProtoTensor for t in tensors)
    # a round trip writes the same initializers
    ir.save(model, tmp_path / "m.onnx")
    original = {t.name: t for t in onnx.load(str(MODELS / "bert_tiny_ts.onnx")).graph.initializer}
    saved = {t.name: t for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert saved.keys() == original.keys()
    assert all(numpy_helper.to_array(saved[k]).tobytes() == numpy_helper.to_array(original[k]).tobytes()
               for k in saved)

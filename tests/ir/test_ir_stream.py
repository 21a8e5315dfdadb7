"""The streamed inline writer produces the same ModelProto as onnx's serializer."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from conftest import MODELS
from graphopt import ir


def _canonical(proto: onnx.ModelProto) -> bytes:
    """Serialized bytes with initializers sorted by name (the writer moves
    streamed initializers last; order carries no meaning in ONNX)."""
    inits = sorted(proto.graph.initializer, key=lambda t: t.name)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    return proto.SerializeToString()


def test_streamed_file_decodes_to_the_serialized_model(tmp_path):
    model = ir.load(MODELS / "bert_tiny_ts.onnx")
    out = tmp_path / "s.onnx"
    report = ir.save(model, out)
    assert report.bytes_written == out.stat().st_size
    assert _canonical(onnx.load(str(out))) == _canonical(ir.to_proto(model))


def test_streamed_writer_keeps_strings_small_and_subgraph_tensors(tmp_path):
    big = numpy_helper.from_array(np.arange(2048, dtype=np.float32).reshape(32, 64), "big")
    small = numpy_helper.from_array(np.array([1.5, -2.0], dtype=np.float32), "small")
    words = helper.make_tensor("words", onnx.TensorProto.STRING, [2], [b"a", b"bc"])
    inner_big = numpy_helper.from_array(np.full((64, 64), 3.0, dtype=np.float32), "inner_big")
    then_g = helper.make_graph([helper.make_node("Add", ["x", "inner_big"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [64, 64])],
                               initializer=[inner_big])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [64, 64])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
         helper.make_node("MatMul", ["y", "big2"], ["z"]),
         helper.make_node("Identity", ["words"], ["w"]),
         helper.make_node("Mul", ["small", "small"], ["s"])],
        "g",
        [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [64, 64]),
         helper.make_tensor_value_info("w", onnx.TensorProto.STRING, [2]),
         helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [2])],
        initializer=[big, small, words,
                     numpy_helper.from_array(np.eye(64, dtype=np.float32), "big2")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    model = ir.from_proto(proto)
    out = tmp_path / "m.onnx"
    ir.save(model, out, check=True)
    loaded = onnx.load(str(out))
    assert _canonical(loaded) == _canonical(ir.to_proto(model))
    by_name = {t.name: numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert by_name["big"].tolist() == np.arange(2048, dtype=np.float32).reshape(32, 64).tolist()
    assert by_name["words"].tolist() == ["a", "bc"]
    inner = loaded.graph.node[0].attribute
    then_branch = next(a.g for a in inner if a.name == "then_branch")
    assert numpy_helper.to_array(then_branch.initializer[0]).sum() == 3.0 * 64 * 64

"""The fast reader builds the model onnx-ir's deserializer builds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from graphopt import ir
from graphopt.ir.reader import deserialize_model


def _same(proto: onnx.ModelProto) -> ir.Model:
    fast = deserialize_model(proto)
    assert fast is not None
    assert ir.serde.serialize_model(fast) == ir.serde.serialize_model(ir.serde.deserialize_model(proto))
    return fast


def _documented() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["x", "w"], ["a"], name="add", doc_string="sum"),
        helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.25),
        helper.make_node("Concat", ["l", "c"], ["y"], axis=-1),
        helper.make_node("Split", ["y"], ["s0", ""], axis=0, num_outputs=2),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.arange(3, dtype=np.int64))),
        helper.make_node("Constant", [], ["t"], value_strings=["a", "b"]),
        helper.make_node("Resize", ["s0", "", "k"], ["r"], mode="nearest"),
        helper.make_node("SequenceConstruct", ["l"], ["seq"]),
    ]
    nodes[1].metadata_props.add(key="b", value="2")
    nodes[0].attribute.extend([helper.make_attribute("note", "text", doc_string="attr docs")])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4], doc_string="input")
    x.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    x.type.denotation = "TENSOR"
    x.metadata_props.add(key="k", value="v")
    ext = numpy_helper.from_array(np.ones(4, np.float32), "e")
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="location", value="e.bin")
    graph = helper.make_graph(
        nodes, "g", [x, helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None), helper.make_tensor_value_info("t", 8, [2])],
        initializer=[numpy_helper.from_array(np.ones((1, 4), np.float32), "w"),
                     numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "c"),
                     helper.make_tensor("words", TensorProto.STRING, [1], [b"z"]), ext],
        value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
                    helper.make_tensor_value_info("l", TensorProto.FLOAT, ["batch", 4]),
                    helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4]),
                    helper.make_value_info("seq", helper.make_sequence_type_proto(
                        helper.make_tensor_type_proto(TensorProto.FLOAT, None)))],
        doc_string="graph docs",
    )
    graph.metadata_props.add(key="g", value="1")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10,
                              doc_string="model docs", producer_name="p", model_version=3)
    model.metadata_props.add(key="m", value="n")
    return model


def test_documented_model_reads_the_same():
    model = _same(_documented())
    tensors = [v.const_value for v in model.graph.initializers.values()]
    assert [type(t).__name__ for t in tensors] == ["ProtoTensor", "ProtoTensor", "StringTensor", "ExternalTensor"]
    a, l = (v for n in model.graph for v in n.outputs if v.name in ("a", "l"))
    assert a.shape is l.shape and a.shape.frozen  # equal types read once
    assert a.type is not l.type  # each value its own type object


def test_function_model_reads_the_same():
    proto = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
    g (float[4] x) => (float[4] y) { y = local.f<alpha = 0.5>(x) }
    <domain: "local", opset_import: ["" : 17]> f <alpha> (a) => (b) { b = LeakyRelu<alpha: float = @alpha>(a) }""")
    assert len(_same(proto).functions) == 1


@pytest.mark.parametrize("name", ["bert_tiny_dynamo.onnx", "llama_gqa_tiny_ts.onnx", "paddleocr_det.onnx"])
def test_exported_models_read_the_same(name):
    _same(onnx.load(str(MODELS / name)))


def _subgraph() -> onnx.ModelProto:
    return onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
    g (bool c, float[4] x) => (float[4] y) {
      y = If(c) <then_branch = t () => (float[4] r) { r = Relu(x) },
                 else_branch = e () => (float[4] s) { s = Neg(x) }>
    }""")


def _annotated() -> onnx.ModelProto:
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { y = Relu(x) }""")
    annotation = model.graph.quantization_annotation.add(tensor_name="y")
    annotation.quant_parameter_tensor_names.add(key="SCALE_TENSOR", value="s")
    return model


def _undeclared_input() -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]), ir_version=10)


@pytest.mark.parametrize("build", [_subgraph, _annotated, _undeclared_input])
def test_models_it_does_not_cover_are_left_to_onnx_ir(build):
    assert deserialize_model(build()) is None


def test_load_reads_with_it(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_documented(), path)
    (tmp_path / "e.bin").write_bytes(np.ones(4, np.float32).tobytes())
    model = ir.load(path)
    assert [n.op_type for n in model.graph][:2] == ["Add", "LeakyRelu"]
    assert model.graph.initializers["e"].const_value.numpy().tolist() == [1.0] * 4

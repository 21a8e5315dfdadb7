"""The direct graph writer decodes to what onnx-ir's serializer builds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from graphopt import ir
from graphopt.ir import writer
from graphopt.ir.shape_io import _T7, _field


def _decoded(model: ir.Model, ir_version: int = 10) -> onnx.ModelProto:
    head, graph = writer.model_parts(model, ir_version)
    return onnx.ModelProto.FromString(head + _field(_T7, graph))


def _expected(model: ir.Model, ir_version: int = 10) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    proto.ir_version = ir_version
    return proto


def _documented() -> ir.Model:
    """Docs, metadata, denotations, every plain attribute kind, tensors of each kind."""
    nodes = [
        helper.make_node("Add", ["x", "w"], ["a"], name="add", doc_string="sum"),
        helper.make_node("LeakyRelu", ["a"], ["l"], alpha=0.25),
        helper.make_node("Concat", ["l", "c"], ["y"], axis=-1),
        helper.make_node("Split", ["y"], ["s0", ""], axis=0, num_outputs=2),
    ]
    nodes[1].metadata_props.add(key="b", value="2")
    nodes[1].metadata_props.add(key="a", value="")
    nodes[0].attribute.extend([helper.make_attribute("note", "text", doc_string="attr docs")])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4], doc_string="input")
    x.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    x.metadata_props.add(key="k", value="v")
    graph = helper.make_graph(
        nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
                          helper.make_tensor_value_info("s0", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.ones((1, 4), np.float32), "w"),
                     numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "c")],
        value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4])],
        doc_string="graph docs",
    )
    graph.metadata_props.add(key="g", value="1")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("x.y", 1)],
                              ir_version=10, doc_string="model docs", producer_name="p", producer_version="1")
    model.metadata_props.add(key="m", value="n")
    result = ir.serde.deserialize_model(model)
    # in-memory, external and string tensors as well
    ir.add_initializer(result.graph, np.array([1, 2], np.int64), "ints").metadata_props["origin"] = "test"
    ir.add_initializer(result.graph, ir.ExternalTensor("w.bin", 64, 16, ir.DataType.FLOAT, shape=ir.Shape([4]),
                                                       name="ext"), "ext")
    result.graph.register_initializer(ir.Value(name="words", const_value=ir.serde.deserialize_tensor(
        helper.make_tensor("words", TensorProto.STRING, [2], [b"a", b"bc"]))))
    return result


def test_model_parts_decode_to_the_serialized_model():
    model = _documented()
    assert _decoded(model, 9) == _expected(model, 9)


def test_skipped_initializers_keep_their_value_info():
    model = _documented()
    head, graph = writer.model_parts(model, 10, {"w", "ext"})
    decoded = onnx.GraphProto.FromString(graph)
    assert [t.name for t in decoded.initializer] == ["c", "ints", "words"]
    expected = _expected(model).graph
    assert [vi.name for vi in decoded.value_info] == [vi.name for vi in expected.value_info]


@pytest.mark.parametrize("name", ["bert_tiny_dynamo.onnx", "llama_gqa_tiny_ts.onnx", "paddleocr_det.onnx"])
def test_exported_models_before_and_after_o1(name):
    import graphopt

    model = ir.load(MODELS / name)
    assert _decoded(model) == _expected(model)
    graphopt.optimize(model, "O1")
    assert _decoded(model) == _expected(model)


def _with_function() -> ir.Model:
    return ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
    g (float[4] x) => (float[4] y) { y = local.f(x) }
    <domain: "local", opset_import: ["" : 17]> f (a) => (b) { b = Relu(a) }""")


def _with_subgraph() -> ir.Model:
    return ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
    g (bool c, float[4] x) => (float[4] y) {
      y = If(c) <then_branch = t () => (float[4] r) { r = Relu(x) },
                 else_branch = e () => (float[4] s) { s = Neg(x) }>
    }""")


def _annotated() -> ir.Model:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { y = Relu(x) }""")
    model.graph.inputs[0].meta["quant_parameter_tensor_names"] = {"SCALE_TENSOR": "s"}
    return model


@pytest.mark.parametrize("build", [_with_function, _with_subgraph, _annotated])
def test_models_it_does_not_cover_are_left_to_onnx_ir(build):
    assert writer.model_parts(build(), 10) is None
    assert writer.model_bytes(build(), 10) is None

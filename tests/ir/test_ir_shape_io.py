"""The shape-inference encoder writes onnx-ir's ModelProto without the fields
inference never reads, and inference infers the same from it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS
from graphopt import ir
from graphopt.ir import edit, shape_io


def _without_docs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every ``doc_string`` and ``metadata_props`` cleared."""
    proto.ClearField("doc_string")
    proto.ClearField("metadata_props")

    def graph(g: onnx.GraphProto) -> None:
        g.ClearField("doc_string")
        g.ClearField("metadata_props")
        for vi in [*g.input, *g.output, *g.value_info]:
            vi.ClearField("doc_string")
            vi.ClearField("metadata_props")
        for node in g.node:
            node.ClearField("doc_string")
            node.ClearField("metadata_props")
            for attr in node.attribute:
                attr.ClearField("doc_string")

    graph(proto.graph)
    return proto


def _documented_model() -> ir.Model:
    """A model with docs and metadata everywhere and one attribute of each plain kind."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape", doc_string="view"),
        helper.make_node("LeakyRelu", ["r"], ["l"], alpha=0.125, doc_string="act"),
        helper.make_node("Transpose", ["l"], ["t"], perm=[1, 0]),
        helper.make_node("ReduceSum", ["t", "axes"], ["s"], keepdims=1),
        helper.make_node("Pad", ["s", "pads"], ["p"], mode="constant"),
        helper.make_node("Resize", ["p", "", "scales"], ["z"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Concat", ["z"], ["y"], axis=-1),
    ]
    nodes[1].metadata_props.add(key="pkg.torch.onnx.stack_trace", value="File x.py, line 1")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8], doc_string="in")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "shape"),
                     numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes"),
                     numpy_helper.from_array(np.array([0, 1], dtype=np.int64), "pads"),
                     numpy_helper.from_array(np.full([1], 2.0, dtype=np.float32), "scales")],
        doc_string="graph docs",
    )
    graph.metadata_props.add(key="k", value="v")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10,
                              doc_string="model docs")
    model.metadata_props.add(key="author", value="me")
    return ir.serde.deserialize_model(model)


def _reference(model: ir.Model) -> onnx.ModelProto:
    """onnx-ir's serialization as inference is handed it, less docs, metadata
    and the initializers' value infos (inference types them from their tensors)."""
    proto = _without_docs(edit._serialize_for_inference(model))
    initializers = {v.name for v in model.graph.initializers.values() if v.const_value is not None}
    infos = [vi for vi in proto.graph.value_info if vi.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(infos)
    return proto


def test_encode_is_the_serialized_model_without_docs_and_metadata():
    model = _documented_model()
    encoded = onnx.ModelProto.FromString(shape_io.encode(model))
    assert encoded == _reference(model)
    assert not encoded.doc_string and not encoded.metadata_props
    assert not any(n.metadata_props or n.doc_string for n in encoded.graph.node)
    attrs = {a.name: a for n in encoded.graph.node for a in n.attribute}
    assert attrs["alpha"].f == 0.125 and list(attrs["perm"].ints) == [1, 0] and attrs["keepdims"].i == 1
    assert attrs["mode"].s == b"nearest"


def test_encode_infers_what_the_full_model_infers():
    model = _documented_model()
    full = onnx.shape_inference.infer_shapes(ir.serde.serialize_model(model), data_prop=True)
    mine = onnx.shape_inference.infer_shapes(shape_io.encode(model), data_prop=True)
    produced = {v.name for node in model.graph for v in node.outputs}

    def types(proto: onnx.ModelProto) -> dict:
        return {vi.name: vi.type for vi in proto.graph.value_info if vi.name in produced}

    assert types(mine) == types(full) and len(types(mine)) == 4
    assert {vi.name: vi.type for vi in mine.graph.output} == {vi.name: vi.type for vi in full.graph.output}


_ATTRS = [
    ir.Attr("axis", ir.AttributeType.INT, -3),
    ir.Attr("perm", ir.AttributeType.INTS, [0, -1, 2**40]),
    ir.Attr("empty", ir.AttributeType.INTS, []),
    ir.Attr("alpha", ir.AttributeType.FLOAT, -0.0),
    ir.Attr("scales", ir.AttributeType.FLOATS, [0.5, float("inf")]),
    ir.Attr("mode", ir.AttributeType.STRING, "linéaire"),
    ir.Attr("names", ir.AttributeType.STRINGS, ["a", ""]),
    ir.Attr("value", ir.AttributeType.TENSOR, ir.Tensor(np.array([1, 2], dtype=np.int64))),
    ir.Attr("big", ir.AttributeType.FLOAT, 1e39),  # beyond float32: onnx-ir's serializer decides
    ir.serde.deserialize_attribute(helper.make_attribute_ref("alpha", onnx.AttributeProto.FLOAT)),
]


@pytest.mark.parametrize("attr", _ATTRS, ids=[f"{a.name}-{i}" for i, a in enumerate(_ATTRS)])
def test_attribute_bytes_decode_to_onnx_irs_attribute(attr):
    expected = onnx.AttributeProto()
    if attr.is_ref():
        ir.serde.serialize_reference_attribute_into(expected, from_=attr)
    else:
        ir.serde.serialize_attribute_into(expected, from_=attr)
    assert onnx.AttributeProto.FromString(shape_io._attribute_bytes(attr)) == expected


@pytest.mark.parametrize("name", ["bert_tiny_dynamo.onnx", "llama_gqa_tiny_ts.onnx", "paddleocr_cls.onnx"])
def test_encode_matches_on_exported_models_before_and_after_o1(name):
    import graphopt

    model = ir.load(MODELS / name)
    assert onnx.ModelProto.FromString(shape_io.encode(model)) == _reference(model)
    graphopt.optimize(model, "O1")
    assert onnx.ModelProto.FromString(shape_io.encode(model)) == _reference(model)


def test_encode_after_edits_matches_a_fresh_serialization():
    model = _documented_model()
    shape_io.encode(model)  # fills the cache
    nodes = list(model.graph)
    nodes[2].outputs[0].name = "t_renamed"  # a value renamed: its producer and reader change
    nodes[1].attributes["alpha"] = ir.Attr("alpha", ir.AttributeType.FLOAT, 0.5)  # an attribute replaced
    nodes[4].replace_input_with(0, nodes[2].outputs[0])  # an input rewired
    assert onnx.ModelProto.FromString(shape_io.encode(model)) == _reference(model)
    encoded = onnx.ModelProto.FromString(shape_io.encode(model))
    assert [list(n.input) for n in encoded.graph.node][4][0] == "t_renamed"

"""graphopt.ir.gs: the onnx-graphsurgeon round trip keeps the graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.errors import InputError, LoadError
from graphopt.ir import from_graphsurgeon, from_proto, load, save, to_graphsurgeon, to_text

gs = pytest.importorskip("onnx_graphsurgeon")

W = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
BIG = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(2, 32)


def _model() -> onnx.ModelProto:
    """y = Softmax(Relu(x @ W + 1.5)), z = x @ BIG."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "one_half"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1),
             helper.make_node("MatMul", ["x", "big"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 32])],
        initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.array(1.5, np.float32), "one_half"),
                     numpy_helper.from_array(BIG, "big")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_round_trip_same_text():
    model = from_proto(_model())
    before = to_text(model)
    graph = to_graphsurgeon(model)
    assert isinstance(graph, gs.Graph)
    assert sorted(graph.tensors()) == ["a", "big", "m", "one_half", "r", "w", "x", "y", "z"]
    np.testing.assert_array_equal(graph.tensors()["w"].values, W)
    back = from_graphsurgeon(graph)
    assert to_text(back) == before
    assert "  init %w0: float[2,2] = [1.0, -2.0, 0.5, 4.0]\n" in before
    assert "  init %w1: float[] = [1.5]\n" in before
    assert to_text(model) == before  # to_graphsurgeon did not modify the model


def test_round_trip_from_external_data(tmp_path):
    model = from_proto(_model())
    save(model, tmp_path / "m.onnx", external_data=True, size_threshold=16)
    loaded = load(tmp_path / "m.onnx")
    assert type(loaded.graph.initializers["big"].const_value).__name__ == "ExternalTensor"
    back = from_graphsurgeon(to_graphsurgeon(loaded))
    assert to_text(back) == to_text(model)
    np.testing.assert_array_equal(back.graph.initializers["big"].const_value.numpy(), BIG)


def test_graphsurgeon_edit_comes_back():
    graph = to_graphsurgeon(from_proto(_model()))
    relu = next(n for n in graph.nodes if n.op == "Relu")
    relu.op = "Sigmoid"
    assert "= Sigmoid(" in to_text(from_graphsurgeon(graph))


def test_not_a_graphsurgeon_graph():
    with pytest.raises(InputError, match="from_graphsurgeon expects an onnx_graphsurgeon.Graph, got ModelProto"):
        from_graphsurgeon(_model())


def test_undefined_value_from_graphsurgeon():
    graph = to_graphsurgeon(from_proto(_model()))
    ghost = gs.Variable("ghost", dtype=np.float32, shape=["batch", 2])
    graph.nodes.append(gs.Node("Neg", inputs=[ghost], outputs=[gs.Variable("n", dtype=np.float32)]))
    graph.outputs.append(graph.nodes[-1].outputs[0])
    with pytest.raises(LoadError, match="graphsurgeon graph: node Neg.*reads value 'ghost'"):
        from_graphsurgeon(graph)

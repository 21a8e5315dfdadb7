"""The MatMul/Gemm/Conv FLOPs estimate: exact counts at bound dims and whole input shapes, and the shapes ONNX
inference cannot follow measured in onnxruntime (``measure=True``), as PaddleOCR's SVTR neck needs; and the
parameter count of weights kept in Constant nodes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.analysis.stats import flops, model_stats


def opaque_reshape() -> ir.Model:
    """x [batch, 3, ?, ?] -> Conv 3->16 (1x1) -> Reshape to its own shape, the target computed through float
    arithmetic (which ONNX data propagation does not follow) -> Conv 16->8 (3x3, pad 1) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (16, 3, 1, 1)), ("w2", (8, 16, 3, 3)))]
    inits.append(numpy_helper.from_array(np.ones(4, np.float32), "one"))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]),
             helper.make_node("Shape", ["a"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["sf", "one"], ["sm"]),
             helper.make_node("Cast", ["sm"], ["si"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["a", "si"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "opaque", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["batch", 3, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_measured_flops_where_inference_stops():
    model = opaque_reshape()
    conv1 = 2 * 16 * 6 * 10 * 3  # out [1, 16, 6, 10], 3 input channels, 1x1
    conv2 = 2 * 8 * 6 * 10 * 16 * 9  # out [1, 8, 6, 10], 16 input channels, 3x3
    # unnamed dims without a whole shape are taken as 1; after the opaque Reshape inference knows only the rank,
    # so the second Conv is counted at 1 x 1 (approximate)
    at_one = 2 * 8 * 16 * 9
    assert flops(model, {"batch": 1}) == (2 * 16 * 3 + at_one, 0, 1)
    assert flops(model, shapes={"x": (1, 3, 6, 10)}) == (conv1 + at_one, 0, 1)
    assert flops(model, shapes={"x": (1, 3, 6, 10)}, measure=True) == (conv1 + conv2, 0, 0)
    stats = model_stats(model, with_flops=True, shapes={"x": (2, 3, 6, 10)}, measure=True)
    assert (stats.flops, stats.flops_approximate) == (2 * (conv1 + conv2), 0)


def test_measure_failure_keeps_the_estimate(caplog):
    model = opaque_reshape()
    # a 2-channel input cannot run (the Conv wants 3): the estimate stays what inference gives, with a warning
    assert flops(model, shapes={"x": (1, 2, 6, 10)}, measure=True)[2] == 1
    assert "measuring MatMul/Gemm/Conv shapes in onnxruntime failed" in caplog.text


def test_parameters_count_the_float_tensors_of_constant_nodes(tmp_path):
    """Paddle2ONNX keeps every weight in a Constant node (PaddleOCR: no initializer): they are the model's
    parameters; an integer Constant (a shape) is not. Before, `inspect` and prune's report said 0 parameters."""
    import subprocess
    import sys

    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("Constant", [], ["b"], value=b),
             helper.make_node("Constant", [], ["shape"], value=shape),
             helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones(2, np.float32), "unused")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    stats = model_stats(model)
    assert (stats.initializers, stats.constant_weights, stats.parameters, stats.bytes) == (1, 2, 2 + 216 + 8,
                                                                                          4 * (2 + 216 + 8))
    path = tmp_path / "m.onnx"
    ir.save(model, path)
    out = subprocess.run([sys.executable, "-m", "graphopt.cli.main", "inspect", str(path)], capture_output=True,
                         text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "parameters: 226 in 1 initializers and 2 Constant nodes (904 bytes)" in out.stdout

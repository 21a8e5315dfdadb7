"""Two MLP branches summed into one output, for the allocation tests: ``y = relu(x W1) (a W2) * b + relu(x W1) W2``
(x ``[batch, T, D]``), the first branch's down projection scaled by ``a`` and its output by ``b``."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.calibrate.data import CalibrationData

D, H, T = 6, 16, 5


def mlp_branches(down_scale: float, out_scale: float) -> ir.Model:
    """``y = relu(x W1) W2 + out_scale * (relu(x W1) (down_scale * W2))``; W1 ``[D, H]``, W2 ``[H, D]`` float32 from
    seed 0. Graph order: the plain branch first (its group is the first found)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((D, H)).astype(np.float32)
    w2 = rng.standard_normal((H, D)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1a"), numpy_helper.from_array(w2, "w2a"),
             numpy_helper.from_array(w1.copy(), "w1b"), numpy_helper.from_array(np.float32(down_scale) * w2, "w2b"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "w1a"], ["ha"]), helper.make_node("Relu", ["ha"], ["ra"]),
             helper.make_node("MatMul", ["ra", "w2a"], ["ya"]),
             helper.make_node("MatMul", ["x", "w1b"], ["hb"]), helper.make_node("Relu", ["hb"], ["rb"]),
             helper.make_node("MatMul", ["rb", "w2b"], ["yb"]), helper.make_node("Mul", ["yb", "scale"], ["ybs"]),
             helper.make_node("Add", ["ya", "ybs"], ["y"])]
    graph = helper.make_graph(nodes, "branches",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", T, D])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def branch_data(count: int = 16) -> CalibrationData:
    """``count`` batches of x ``[1, T, D]`` float32, standard normal from seed 1."""
    rng = np.random.default_rng(1)
    return CalibrationData.from_arrays([{"x": rng.standard_normal((1, T, D)).astype(np.float32)}
                                        for _ in range(count)])

"""Unnamed height/width of NCHW image inputs get SPATIAL_DEFAULT, not 1."""

from __future__ import annotations

from onnx import TensorProto, helper

from conftest import MODELS
from graphopt.verify import generate_inputs
from graphopt.verify.inputs import SPATIAL_DEFAULT


def test_paddleocr_inputs_are_real_images():
    assert SPATIAL_DEFAULT == 64
    assert generate_inputs(MODELS / "paddleocr_det.onnx")["x"].shape == (1, 3, 64, 64)
    assert generate_inputs(MODELS / "paddleocr_cls.onnx")["x"].shape == (1, 3, 64, 64)


def test_named_and_bound_dims_win_over_the_spatial_default():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "height", "p2o.Dim.3"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    assert generate_inputs(m)["x"].shape == (1, 3, 64, 64)
    assert generate_inputs(m, dims={"p2o.Dim.3": 96})["x"].shape == (1, 3, 64, 96)
    seq = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3, None, None])
    g2 = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [seq],
                           [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    m2 = helper.make_model(g2, opset_imports=[helper.make_opsetid("", 17)])
    m2.ir_version = 10
    assert generate_inputs(m2)["x"].shape == (1, 3, 1, 1)  # integer inputs are not images

"""compress's default pruning scores (graphopt.compress.run.prune_method): obs up to OBS_MAX_WIDTH input
channels of any MatMul / Gemm / Conv, wanda above, the weight an initializer or a Constant node; and its default
allocation (prune_allocation): relative for a model with a Conv, error without."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.compress.run import OBS_MAX_WIDTH, prune_allocation, prune_method


def _save(tmp_path, node: onnx.NodeProto, weight: np.ndarray, as_constant: bool = False):  # noqa: ANN001, ANN202
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    tensor = numpy_helper.from_array(weight, "w")
    nodes, inits = [node], [tensor]
    if as_constant:
        nodes, inits = [helper.make_node("Constant", [], ["w"], value=tensor), node], []
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits)), path)
    return path


@pytest.mark.parametrize(("k", "want"), [(OBS_MAX_WIDTH, "obs"), (OBS_MAX_WIDTH + 1, "wanda")])
def test_matmul_width(tmp_path, k, want):
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    assert prune_method(_save(tmp_path, node, np.zeros((k, 4), np.float32))) == want
    assert prune_method(_save(tmp_path, node, np.zeros((k, 4), np.float32), as_constant=True)) == want


def test_gemm_trans_b_reads_the_columns(tmp_path):
    wide = np.zeros((4, OBS_MAX_WIDTH + 1), np.float32)
    assert prune_method(_save(tmp_path, helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), wide)) == "wanda"
    assert prune_method(_save(tmp_path, helper.make_node("Gemm", ["x", "w"], ["y"]), wide)) == "obs"


def test_conv_input_channels(tmp_path):
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    assert prune_method(_save(tmp_path, node, np.zeros((8, OBS_MAX_WIDTH + 1, 1, 1), np.float32))) == "wanda"
    assert prune_method(_save(tmp_path, node, np.zeros((OBS_MAX_WIDTH + 1, 8, 3, 3), np.float32))) == "obs"


def test_allocation_relative_for_convs_error_for_matmuls(tmp_path):
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    assert prune_allocation(_save(tmp_path, conv, np.zeros((8, 8, 3, 3), np.float32), as_constant=True)) == "relative"
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"])
    assert prune_allocation(_save(tmp_path, matmul, np.zeros((8, 8), np.float32))) == "error"

"""graphopt.bench.probe: candidates timed against one warm original, interleaved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.bench.probe import LatencyProbe
from graphopt.errors import InputError


def _matmuls(path: Path, count: int, name: str = "x") -> Path:
    """``count`` chained 256x256 MatMuls on x [64, 256]: more of them, slower."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], name
    for i in range(count):
        inits.append(numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(name, TensorProto.FLOAT, [64, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_probe_times_candidates_against_the_warm_original(tmp_path):
    inputs = {"x": np.ones((64, 256), np.float32), "unused": np.zeros(1, np.float32)}
    probe = LatencyProbe(_matmuls(tmp_path / "a.onnx", 8), inputs, seconds=0.2, min_runs=15)
    same = probe.measure(tmp_path / "a.onnx")
    fewer = probe.measure(_matmuls(tmp_path / "b.onnx", 1))
    assert same.runs >= 15 and fewer.runs >= 15
    assert 0 < fewer.ratio < same.ratio  # 1 product against 8: faster whatever the machine's load
    assert fewer.ratio == pytest.approx(fewer.median_ms / fewer.original_ms)


def test_probe_refuses_inputs_a_model_lacks(tmp_path):
    probe = LatencyProbe(_matmuls(tmp_path / "a.onnx", 1), {"x": np.ones((64, 256), np.float32)}, seconds=0.05)
    with pytest.raises(InputError, match="the latency inputs lack z of"):
        probe.measure(_matmuls(tmp_path / "b.onnx", 1, name="z"))

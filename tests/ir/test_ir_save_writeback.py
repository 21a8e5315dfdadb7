"""save starts the kernel's write-back as it writes; the files are the same."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.ir import from_proto, save

save_module = importlib.import_module("graphopt.ir.save")  # the name graphopt.ir.save is the function


def _model() -> onnx.ModelProto:
    """y = x + w1 + w2 + w3 (three 4 KiB weights)."""
    weights = [np.full((1024,), float(i + 1), np.float32) for i in range(3)]
    nodes = [helper.make_node("Add", ["x", "w0"], ["a"]), helper.make_node("Add", ["a", "w1"], ["b"]),
             helper.make_node("Add", ["b", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024])],
        initializer=[numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("external", [True, False])
def test_writeback_hands_over_every_range_and_writes_the_same_bytes(external, tmp_path, monkeypatch):
    (tmp_path / "plain").mkdir()
    (tmp_path / "wb").mkdir()
    save(from_proto(_model()), tmp_path / "plain" / "m.onnx", external_data=external)

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(save_module, "_WRITEBACK_BYTES", 4096)
    monkeypatch.setattr(save_module, "_start_writeback", lambda fd, offset, n: calls.append((offset, n)) or True)
    save(from_proto(_model()), tmp_path / "wb" / "m.onnx", external_data=external)

    names = ["m.onnx", "m.onnx.data"] if external else ["m.onnx"]
    for name in names:
        assert (tmp_path / "wb" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    # one range per 4 KiB weight, back to back from the start of the file being written
    assert len(calls) == 3
    assert calls[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(calls, calls[1:]))
    assert all(n >= 4096 for _, n in calls)
    written = (tmp_path / "wb" / names[-1]).stat().st_size
    assert sum(n for _, n in calls) <= written
    if external:
        assert calls == [(0, 4096), (4096, 4096), (8192, 4096)]


def test_writeback_stops_when_the_call_is_unavailable(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(save_module, "_WRITEBACK_BYTES", 4096)
    monkeypatch.setattr(save_module, "_start_writeback", lambda fd, offset, n: calls.append(offset) and False)
    report = save(from_proto(_model()), tmp_path / "m.onnx", external_data=True)
    assert report.external_tensors == 3
    assert calls == [0]  # refused once: the helper drains the rest without calling again


def test_start_writeback_on_a_real_file(tmp_path):
    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        started = save_module._start_writeback(f.fileno(), 0, 8192)
    assert started is (save_module._sync_file_range is not False)
    assert path.read_bytes() == b"x" * 8192

"""collect_ranges: hand-computed ranges through onnxruntime, one pass over the
data, refusals (non-float tensors, unknown names and methods, bad batches)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import MODELS
from graphopt import ir
from graphopt.errors import InputError
from graphopt.passes.quantization import collect
from graphopt.calibrate.data import CalibrationData
from graphopt.passes.quantization.collect import TensorRange, collect_ranges

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'
TEXT = HEAD + """
g (float[N, 4] x) => (float[N, 4] y, int64[2] s) {
  r = Relu(x)
  two = Constant<value = float {2.0}>()
  y = Mul(r, two)
  s = Shape(x)
  k = Cast<to = 7>(x)
}"""


def model() -> ir.Model:
    return ir.from_text(TEXT)


def batches(*rows) -> CalibrationData:  # noqa: ANN002
    return CalibrationData.from_arrays([{"x": np.array(r, dtype=np.float32).reshape(-1, 4)} for r in rows])


def test_minmax_hand_computed():
    data = batches([-1.0, 2.0, -3.0, 4.0], [5.0, -6.0, 0.5, 1.0])
    ranges = collect_ranges(model(), ["x", "r", "y"], data)
    assert list(ranges) == ["x", "r", "y"]
    assert ranges["x"] == TensorRange(-6.0, 5.0, "minmax", 8)
    assert ranges["r"] == TensorRange(0.0, 5.0, "minmax", 8)  # ReLU output: [0, t]
    assert ranges["y"] == TensorRange(0.0, 10.0, "minmax", 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ranges["x"].rmin = 0.0  # type: ignore[misc]


def test_percentile_with_options_over_batches():
    values = np.arange(1, 1001, dtype=np.float32)  # 1..1000 in 5 batches of 50 rows
    data = CalibrationData.from_arrays([{"x": part.reshape(-1, 4)} for part in np.split(values, 5)])
    ranges = collect_ranges(model(), ["r"], data, method="percentile", options={"percentile": 99.0})
    # as in test_observers: width 0.5, the 990th value fills bin 1980, right edge 990.5
    assert ranges["r"] == TensorRange(0.0, 990.5, "percentile", 1000)


def test_plain_iterable_of_dicts_and_nonfinite():
    data = [{"x": np.array([[1.0, np.nan, -2.0, np.inf]], dtype=np.float32)}]
    r = collect_ranges(model(), ["x"], data)["x"]
    assert (r.rmin, r.rmax, r.count, r.nonfinite) == (-2.0, 1.0, 2, 2)


def test_one_session_for_all_tensors(monkeypatch):
    calls = []
    real = collect.stream_activations

    def spy(m, names, data):  # noqa: ANN001, ANN202
        calls.append(list(names))
        return real(m, names, data)

    monkeypatch.setattr(collect, "stream_activations", spy)
    collect_ranges(model(), ["x", "r", "y"], batches([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]), method="entropy")
    assert calls == [["x", "r", "y"]]


def test_refusals():
    m = model()
    one = batches([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match="cannot calibrate 's': its element type is int64; only float tensors"):
        collect_ranges(m, ["r", "s"], one)
    with pytest.raises(InputError, match="cannot calibrate 'k': onnxruntime returns it as int64, not a float tensor"):
        collect_ranges(m, ["k"], one)  # untyped in the IR: found at run time
    with pytest.raises(InputError, match="cannot calibrate 'nope': it is not a value of the model's main graph"):
        collect_ranges(m, ["nope"], one)
    with pytest.raises(InputError, match="unknown calibration method 'max'; choose one of: minmax, percentile"):
        collect_ranges(m, ["r"], one, method="max")
    with pytest.raises(InputError, match="calibration data holds no batch"):
        collect_ranges(m, ["r"], [])
    with pytest.raises(InputError, match="calibration batch 0: 'X' is not an input of the model; did you mean 'x'"):
        collect_ranges(m, ["r"], [{"X": np.zeros((1, 4), np.float32)}])
    with pytest.raises(InputError, match=r"calibration batch 0: input 'x': axis 1 must be 4 \(float\[N, 4\]\)"):
        collect_ranges(m, ["r"], [{"x": np.zeros((1, 5), np.float32)}])
    assert collect_ranges(m, [], one) == {}


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_paddleocr_cls_histogram_methods_on_generated_data(method):
    m = ir.load(MODELS / "paddleocr_cls.onnx")
    convs = [n for n in m.graph if n.op_type == "Conv"][:3]
    relus = [n for n in m.graph if n.op_type == "Relu"][:2]
    names = [n.outputs[0].name for n in convs + relus]
    data = CalibrationData.generated(m, count=2)
    ranges = collect_ranges(m, names, data, method=method)
    minmax = collect_ranges(m, names, data, method="minmax")
    for name in names:
        r, full = ranges[name], minmax[name]
        assert r.count == full.count > 0
        assert r.rmin == -r.rmax or r.rmin == 0.0, name  # symmetric, or [0, t] for ReLU outputs
        assert 0.0 < r.rmax <= max(-full.rmin, full.rmax), name
    assert len(relus) == 2
    for node in relus:
        assert minmax[node.outputs[0].name].rmin == ranges[node.outputs[0].name].rmin == 0.0

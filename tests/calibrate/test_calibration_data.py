"""CalibrationData: the file layouts, batching, laziness, generated samples,
and every bad-input message."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from onnx import numpy_helper

from graphopt import ir
from graphopt.errors import InputError
from graphopt.calibrate import data as calibration
from graphopt.calibrate.data import CalibrationData
from graphopt.verify.inputs import generate_inputs

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'
DYNAMIC = ir.from_text(HEAD + """
g (float[N, 3] x, int64[N, 3] ids) => (float[N, 3] y) {
  c = Cast<to = 1>(ids)
  y = Add(x, c)
}""")
PROTO = ir.to_proto(DYNAMIC)
STATIC = ir.to_proto(ir.from_text(HEAD + """
g (float[1, 3] x) => (float[1, 3] y) {
  y = Relu(x)
}"""))


def sample(i: int) -> dict[str, np.ndarray]:
    return {
        "x": np.full((1, 3), float(i), dtype=np.float32),
        "ids": np.arange(3, dtype=np.int64).reshape(1, 3) + i,
    }


def write_npz_dir(folder, count):  # noqa: ANN001, ANN201
    folder.mkdir(exist_ok=True)
    for i in range(count):
        np.savez(folder / f"s{i:02d}.npz", **sample(i))
    return folder


def write_pb(folder, i):  # noqa: ANN001, ANN201
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, array) in enumerate(sample(i).items()):
        (folder / f"input_{k}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())
    return folder


def xs(data) -> list[list[float]]:  # noqa: ANN001
    """The first column of ``x`` of each batch: which samples it holds."""
    return [batch["x"][:, 0].tolist() for batch in data]


# -- layouts ----------------------------------------------------------------


def test_npz_file_one_sample_reiterable(tmp_path):
    np.savez(tmp_path / "one.npz", **sample(7))
    data = CalibrationData.from_path(tmp_path / "one.npz", PROTO)
    assert len(data) == 1
    assert xs(data) == xs(data) == [[7.0]]
    np.testing.assert_array_equal(next(iter(data))["ids"], [[7, 8, 9]])


def test_npy_file_for_one_input_model(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), dtype=np.float32))
    assert [b["x"].tolist() for b in CalibrationData.from_path(tmp_path / "x.npy", STATIC)] == [[[1.0, 1.0, 1.0]]]


def test_npz_dir_sorted_batched_and_limited(tmp_path):
    folder = write_npz_dir(tmp_path / "calib", 5)
    assert xs(CalibrationData.from_path(folder, PROTO)) == [[0.0], [1.0], [2.0], [3.0], [4.0]]
    data = CalibrationData.from_path(folder, DYNAMIC, batch_size=2)  # an ir.Model is accepted too
    assert (len(data), data.num_samples) == (3, 5)
    assert xs(data) == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    assert [b["ids"].shape for b in data] == [(2, 3), (2, 3), (1, 3)]
    assert xs(CalibrationData.from_path(folder, PROTO, batch_size=2, limit=3)) == [[0.0, 1.0], [2.0]]


def test_input_pb_dir_is_one_sample(tmp_path):
    folder = write_pb(tmp_path / "pb", 4)
    assert xs(CalibrationData.from_path(folder, PROTO)) == [[4.0]]


def test_test_data_set_dirs_in_numeric_order(tmp_path):
    for n in (10, 0, 2):
        write_pb(tmp_path / f"test_data_set_{n}", n)
    data = CalibrationData.from_path(tmp_path, PROTO, batch_size=3)
    assert xs(data) == [[0.0, 2.0, 10.0]]


def test_files_are_read_lazily(tmp_path, monkeypatch):
    folder = write_npz_dir(tmp_path / "calib", 3)
    calls = []
    real = calibration.read_inputs
    monkeypatch.setattr(calibration, "read_inputs", lambda *a: calls.append(a[0]) or real(*a))
    data = CalibrationData.from_path(folder, PROTO)
    assert calls == []
    batches = iter(data)
    next(batches)
    assert [p.name for p in calls] == ["s00.npz"]
    (folder / "s01.npz").write_bytes(b"not a zip")  # broken after construction: reported while iterating
    with pytest.raises(InputError, match=r"calibration file '.*s01\.npz': cannot read inputs file"):
        next(batches)


# -- generated and in-memory --------------------------------------------------


def test_generated_follows_generate_inputs():
    data = CalibrationData.generated(PROTO, count=3, seed=5, dims={"N": 2})
    assert len(data) == 3
    for i, batch in enumerate(data):
        expected = generate_inputs(PROTO, {"N": 2}, 5 + i)
        assert batch.keys() == expected.keys()
        for name in batch:
            np.testing.assert_array_equal(batch[name], expected[name])
    assert [b["x"].tolist() for b in data] == [b["x"].tolist() for b in data]
    assert len(CalibrationData.generated(DYNAMIC, count=2)) == 2
    with pytest.raises(InputError, match="count must be a positive integer, got 0"):
        CalibrationData.generated(PROTO, count=0)


def test_from_arrays_batches_and_validates():
    data = CalibrationData.from_arrays([sample(0), sample(1), sample(2)], PROTO, batch_size=2)
    assert xs(data) == [[0.0, 1.0], [2.0]]
    assert xs(CalibrationData.from_arrays([sample(3)])) == [[3.0]]  # no model: not validated
    bad = CalibrationData.from_arrays([sample(0), {"x": sample(1)["x"]}], PROTO)
    with pytest.raises(InputError, match=r"calibration sample 1: input 'ids' \(int64\[N, 3\]\) is missing"):
        list(bad)
    with pytest.raises(InputError, match="calibration data is empty"):
        CalibrationData.from_arrays([])


# -- bad input ----------------------------------------------------------------


def first_error(data) -> str:  # noqa: ANN001
    with pytest.raises(InputError) as info:
        list(data)
    return str(info.value)


def test_wrong_name_lists_inputs_and_close_matches(tmp_path):
    np.savez(tmp_path / "bad.npz", xx=sample(0)["x"], ids=sample(0)["ids"])
    message = first_error(CalibrationData.from_path(tmp_path / "bad.npz", PROTO))
    assert message == (
        f"calibration file {str(tmp_path / 'bad.npz')!r}: 'xx' is not an input of the model; did you mean 'x'? "
        "The model's inputs are: x: float[N, 3], ids: int64[N, 3]. Rename the array to the model's input name"
    )


def test_missing_input(tmp_path):
    np.savez(tmp_path / "bad.npz", x=sample(0)["x"])
    message = first_error(CalibrationData.from_path(tmp_path / "bad.npz", PROTO))
    assert "bad.npz': input 'ids' (int64[N, 3]) is missing; given: x." in message
    assert message.endswith("Every calibration sample must match the model's inputs (x: float[N, 3], ids: int64[N, 3])")


def test_wrong_dtype(tmp_path):
    folder = write_npz_dir(tmp_path / "calib", 2)
    np.savez(folder / "s01.npz", x=np.zeros((1, 3)), ids=sample(1)["ids"])  # float64
    message = first_error(CalibrationData.from_path(folder, PROTO))
    assert "s01.npz': input 'x': expected dtype float32 (float[N, 3]), got float64; " in message
    assert "convert it, e.g. array.astype(np.float32)" in message


def test_wrong_rank_and_static_dim(tmp_path):
    np.savez(tmp_path / "rank.npz", x=np.zeros((1, 1, 3), np.float32), ids=sample(0)["ids"])
    message = first_error(CalibrationData.from_path(tmp_path / "rank.npz", PROTO))
    assert "rank.npz': input 'x': expected rank 2 (float[N, 3]), got rank 3 with shape (1, 1, 3)" in message
    np.savez(tmp_path / "dim.npz", x=np.zeros((1, 4), np.float32), ids=sample(0)["ids"])
    message = first_error(CalibrationData.from_path(tmp_path / "dim.npz", PROTO))
    assert "dim.npz': input 'x': axis 1 must be 3 (float[N, 3]), got shape (1, 4)" in message
    message = first_error(CalibrationData.from_arrays([{"x": np.zeros((2, 3), np.float32)}], STATIC))
    assert message.startswith("calibration sample 0: input 'x': axis 0 must be 1 (float[1, 3]), got shape (2, 3)")


def test_empty_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError) as info:
        CalibrationData.from_path(tmp_path, PROTO)
    assert str(info.value) == (
        f"calibration data directory {str(tmp_path)!r} holds no samples (found: notes.txt); put .npz files in it "
        "(one per sample, numpy.savez(path, input_name=array)), input_N.pb files, or test_data_set_N folders"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"holds no samples \(found: nothing\)"):
        CalibrationData.from_path(empty, PROTO)
    with pytest.raises(InputError, match="calibration data '.*nowhere' does not exist"):
        CalibrationData.from_path(tmp_path / "nowhere", PROTO)


def test_batch_size_needs_dynamic_first_dim(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"batch_size=2 needs a dynamic first dim, but input 'x' is float\[1, 3\]"):
        CalibrationData.from_path(tmp_path / "x.npy", STATIC, batch_size=2)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        CalibrationData.from_path(tmp_path / "x.npy", STATIC, batch_size=0)
    with pytest.raises(InputError, match="limit must be a positive integer, got 0"):
        CalibrationData.from_path(tmp_path / "x.npy", STATIC, limit=0)


def test_unbatchable_samples():
    seq = ir.to_proto(ir.from_text(HEAD + "g (float[N, S] x) => (float[N, S] y) { y = Relu(x) }"))
    data = CalibrationData.from_arrays([{"x": np.zeros((1, 2), np.float32)}, {"x": np.zeros((1, 5), np.float32)}],
                                       seq, batch_size=2)  # fmt: skip
    assert first_error(data).startswith(
        "calibration: cannot batch input 'x' of samples sample 0: (1, 2), sample 1: (1, 5) along axis 0"
    )


# -- progress -------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(monkeypatch, capsys):
    data = CalibrationData.from_arrays([sample(0), sample(1)], PROTO)
    assert xs(data.iter(progress=True)) == [[0.0], [1.0]]  # stderr is not a TTY under pytest
    assert capsys.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert xs(data.iter(progress=True, description="ranges")) == [[0.0], [1.0]]
    assert "ranges" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert xs(data.iter(progress=False)) == [[0.0], [1.0]]
    assert quiet.getvalue() == ""

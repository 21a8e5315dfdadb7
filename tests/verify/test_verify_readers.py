"""graphopt.verify.readers: .npz / .npy files and ONNX backend-test input_N.pb dirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

from graphopt.errors import InputError
from graphopt.verify import read_inputs

IDS = np.array([[3, 1, 4]], dtype=np.int64)
MASK = np.array([[1, 1, 0]], dtype=np.int64)


def _write_pb(folder: Path, index: int, array: np.ndarray, name: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"input_{index}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())


def _assert_feed(feed: dict[str, np.ndarray]) -> None:
    assert list(feed) == ["input_ids", "attention_mask"]
    np.testing.assert_array_equal(feed["input_ids"], IDS)
    np.testing.assert_array_equal(feed["attention_mask"], MASK)
    assert feed["input_ids"].dtype == np.int64


def test_npz_named(tmp_path):
    np.savez(tmp_path / "in.npz", input_ids=IDS, attention_mask=MASK)
    _assert_feed(read_inputs(tmp_path / "in.npz"))


def test_npz_positional_uses_model_input_order(tmp_path):
    np.savez(tmp_path / "in.npz", IDS, MASK)
    _assert_feed(read_inputs(str(tmp_path / "in.npz"), model_inputs=["input_ids", "attention_mask"]))
    with pytest.raises(InputError, match="input 0 has no name"):
        read_inputs(tmp_path / "in.npz")


def test_npy_single_input(tmp_path):
    np.save(tmp_path / "x.npy", IDS)
    np.testing.assert_array_equal(read_inputs(tmp_path / "x.npy", model_inputs=["x"])["x"], IDS)
    with pytest.raises(InputError, match="exactly one input"):
        read_inputs(tmp_path / "x.npy", model_inputs=["a", "b"])


def test_pb_dir_named(tmp_path):
    _write_pb(tmp_path, 0, IDS, "input_ids")
    _write_pb(tmp_path, 1, MASK, "attention_mask")
    _assert_feed(read_inputs(tmp_path))


def test_pb_dir_unnamed_positional_and_test_data_set(tmp_path):
    data = tmp_path / "test_data_set_0"
    _write_pb(data, 1, MASK)
    _write_pb(data, 0, IDS)
    _assert_feed(read_inputs(tmp_path, model_inputs=["input_ids", "attention_mask"]))


def test_pb_dir_more_files_than_inputs(tmp_path):
    _write_pb(tmp_path, 0, IDS)
    _write_pb(tmp_path, 1, MASK)
    with pytest.raises(InputError, match="holds 2 inputs but the model has 1"):
        read_inputs(tmp_path, model_inputs=["input_ids"])


def test_pb_dir_gap(tmp_path):
    _write_pb(tmp_path, 0, IDS, "a")
    _write_pb(tmp_path, 2, MASK, "b")
    with pytest.raises(InputError, match="without gaps; found input_0.pb, input_2.pb"):
        read_inputs(tmp_path)


def test_pb_dir_duplicate_names(tmp_path):
    _write_pb(tmp_path, 0, IDS, "a")
    _write_pb(tmp_path, 1, MASK, "a")
    with pytest.raises(InputError, match="'a' is given twice"):
        read_inputs(tmp_path)


def test_empty_dir(tmp_path):
    with pytest.raises(InputError, match="holds no input_N.pb files"):
        read_inputs(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_inputs(tmp_path / "nope.npz")


def test_garbage_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not numpy data")
    with pytest.raises(InputError, match="cannot read inputs file .*bad.npz.* as a numpy .npz archive"):
        read_inputs(tmp_path / "bad.npz")
    np.save(tmp_path / "single.npy", IDS)
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    with pytest.raises(InputError, match="holds a single array"):
        read_inputs(tmp_path / "single.npz")
    pb = tmp_path / "pbs"
    pb.mkdir()
    (pb / "input_0.pb").write_bytes(b"\xff\xff\xff\xff")
    with pytest.raises(InputError, match="as a serialized onnx.TensorProto"):
        read_inputs(pb)

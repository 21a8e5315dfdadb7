"""graphopt.ir.save: external data, inlining, atomicity, never over the input."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import sha256
from graphopt.errors import SaveError, VerificationError
from graphopt.ir import from_proto, load, save, to_proto
from graphopt.ir.versions import target_ir_version

RNG = np.random.default_rng(0)
BIG = RNG.standard_normal((16, 32)).astype(np.float32)  # 2048 bytes: over the 1024-byte threshold
BIG2 = RNG.standard_normal((32, 8)).astype(np.float32)  # 1024 bytes: at the threshold, external
SMALL = np.array([0.5, -1.0, 2.0, 0.25, 1.0, 0.0, 3.0, -0.5], np.float32)  # 32 bytes: stays inline
X = RNG.standard_normal((2, 16)).astype(np.float32)


def _model(ir_version: int = 10, opset: int = 17) -> onnx.ModelProto:
    """y = (x @ BIG) @ BIG2 + SMALL, x: [batch, 16]."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(BIG, "w1"), numpy_helper.from_array(BIG2, "w2"),
                     numpy_helper.from_array(SMALL, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _expected() -> np.ndarray:
    return (X @ BIG) @ BIG2 + SMALL


def _run(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": X})[0]


def _initializer_hashes(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path))  # reads external data from beside the file
    return {t.name: hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest() for t in proto.graph.initializer}


EXPECTED_HASHES = {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in
                   (("w1", BIG), ("w2", BIG2), ("b", SMALL))}


@pytest.fixture
def src(tmp_path) -> Path:
    path = tmp_path / "src.onnx"
    onnx.save(_model(), path)
    return path


@pytest.fixture
def external_src(tmp_path) -> Path:
    """A model in its own folder, saved with external data (w1, w2 in src.onnx.data)."""
    folder = tmp_path / "in"
    folder.mkdir()
    model = load_in_memory()
    report = save(model, folder / "src.onnx", external_data=True)
    assert report.external_tensors == 2
    return folder / "src.onnx"


def load_in_memory():
    return from_proto(_model())


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_external_round_trip_byte_identical(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    report = save(load(src), out / "m.onnx", external_data=True)
    assert _listing(out) == ["m.onnx", "m.onnx.data"]
    assert report.data_path == (out / "m.onnx.data").resolve()
    assert report.external_tensors == 2
    # w1 at offset 0, w2 right after it (neither is over 1 MiB: no alignment padding)
    assert (out / "m.onnx.data").stat().st_size == BIG.nbytes + BIG2.nbytes == 3072
    assert report.bytes_written == (out / "m.onnx").stat().st_size + 3072
    proto = onnx.load(str(out / "m.onnx"), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer if t.external_data}
    assert where == {"w1": {"location": "m.onnx.data", "offset": "0", "length": "2048"},
                     "w2": {"location": "m.onnx.data", "offset": "2048", "length": "1024"}}
    assert _initializer_hashes(out / "m.onnx") == EXPECTED_HASHES
    np.testing.assert_array_equal(_run(out / "m.onnx"), _run(src))
    # loading the saved model again and saving inline keeps the same bytes
    again = save(load(out / "m.onnx"), tmp_path / "inline.onnx", external_data=False)
    assert again.data_path is None and again.external_tensors == 0
    assert _initializer_hashes(tmp_path / "inline.onnx") == EXPECTED_HASHES


def test_external_data_false_inlines(external_src, tmp_path):
    report = save(load(external_src), tmp_path / "inline.onnx", external_data=False)
    assert report.data_path is None and report.external_tensors == 0
    assert not (tmp_path / "inline.onnx.data").exists()
    proto = onnx.load(str(tmp_path / "inline.onnx"), load_external_data=False)
    assert all(not t.external_data and t.HasField("raw_data") for t in proto.graph.initializer)
    assert _initializer_hashes(tmp_path / "inline.onnx") == EXPECTED_HASHES


def test_default_keeps_external_when_input_had_it(external_src, tmp_path):
    report = save(load(external_src), tmp_path / "out.onnx")
    assert report.external_tensors == 2 and (tmp_path / "out.onnx.data").is_file()
    report = save(load_in_memory(), tmp_path / "plain.onnx")
    assert report.external_tensors == 0 and not (tmp_path / "plain.onnx.data").exists()


def test_refuses_to_overwrite_input(src):
    digest = sha256(src)
    with pytest.raises(SaveError, match="refusing to write over the input model"):
        save(load(src), src)
    assert sha256(src) == digest
    assert _listing(src.parent) == ["src.onnx"]


def test_refuses_to_overwrite_input_data_file(tmp_path):
    """The input src.onnx keeps its weights in 'm.onnx.data' (any name is legal):
    saving to m.onnx beside it would write m.onnx.data over them."""
    onnx.save(_model(), tmp_path / "src.onnx", save_as_external_data=True, location="m.onnx.data",
              size_threshold=1024)
    before = {p.name: sha256(p) for p in tmp_path.iterdir()}
    assert sorted(before) == ["m.onnx.data", "src.onnx"]
    model = load(tmp_path / "src.onnx")
    with pytest.raises(SaveError, match="refusing to write '.*m.onnx': its external-data file 'm.onnx.data' is "
                                        "the file the input model reads its weights from"):
        save(model, tmp_path / "m.onnx")
    with pytest.raises(SaveError, match="is the file the input model reads its weights from"):
        save(model, tmp_path / "m.onnx.data")  # the .onnx itself over the data file
    assert {p.name: sha256(p) for p in tmp_path.iterdir()} == before
    np.testing.assert_allclose(_run(tmp_path / "src.onnx"), _expected(), rtol=1e-5)
    # another name in the same folder is fine
    save(model, tmp_path / "other.onnx")
    assert {p.name: sha256(p) for p in tmp_path.iterdir() if p.name in before} == before


@pytest.mark.parametrize("error", [ValueError("boom"), VerificationError("outputs differ")])
def test_failing_validate_leaves_nothing(error, src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    seen: list[list[str]] = []

    def validate(path: Path) -> None:
        seen.append(_listing(path.parent))
        np.testing.assert_allclose(_run(path), _expected(), rtol=1e-5)  # the temp model is complete
        raise error

    expected_type = SaveError if isinstance(error, ValueError) else VerificationError
    with pytest.raises(expected_type) as info:
        save(load(src), out / "m.onnx", external_data=True, validate=validate)
    assert seen == [["m.onnx", "m.onnx.data"]]
    assert str(error) in str(info.value)
    if expected_type is SaveError:
        assert info.value.__cause__ is error
    assert _listing(out) == []


def test_failing_validate_keeps_existing_output(src, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"previous")

    def validate(path: Path) -> None:
        raise RuntimeError("no")

    with pytest.raises(SaveError, match="writing '.*m.onnx' failed: no"):
        save(load(src), tmp_path / "m.onnx", validate=validate)
    assert (tmp_path / "m.onnx").read_bytes() == b"previous"
    assert _listing(tmp_path) == ["m.onnx", "src.onnx"]


def test_missing_output_folder(src, tmp_path):
    with pytest.raises(SaveError, match="output folder '.*nope' does not exist; create it first"):
        save(load(src), tmp_path / "nope" / "m.onnx")


@pytest.mark.parametrize("ir_version, opset", [(10, 17), (8, 13), (onnx.IR_VERSION, 21)])
def test_ir_version_written(ir_version, opset, tmp_path):
    path = tmp_path / "src.onnx"
    onnx.save(_model(ir_version, opset), path)
    model = load(path)
    report = save(model, tmp_path / "out.onnx", check=True)
    expected = target_ir_version(ir_version, {"": opset})
    assert report.ir_version == expected
    assert onnx.load(str(tmp_path / "out.onnx")).ir_version == expected
    assert to_proto(model).ir_version == expected
    np.testing.assert_allclose(_run(tmp_path / "out.onnx"), _expected(), rtol=1e-5)


def test_copies_external_data_to_another_folder(external_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    save(load(external_src), out / "m.onnx")
    assert _listing(out) == ["m.onnx", "m.onnx.data"]
    shutil.move(external_src.parent, tmp_path / "moved")  # the input folder is gone
    assert not external_src.exists()
    assert _initializer_hashes(out / "m.onnx") == EXPECTED_HASHES
    np.testing.assert_allclose(_run(out / "m.onnx"), _expected(), rtol=1e-5)
    # and the output is itself a valid graphopt input
    reloaded = load(out / "m.onnx")
    np.testing.assert_array_equal(reloaded.graph.initializers["w1"].const_value.numpy(), BIG)


def test_save_does_not_modify_model(external_src, tmp_path):
    model = load(external_src)
    kinds = {name: type(v.const_value).__name__ for name, v in model.graph.initializers.items()}
    save(model, tmp_path / "a.onnx", external_data=False)
    save(model, tmp_path / "b.onnx", external_data=True, size_threshold=1)
    assert {name: type(v.const_value).__name__ for name, v in model.graph.initializers.items()} == kinds
    proto = onnx.load(str(tmp_path / "b.onnx"), load_external_data=False)
    assert sum(1 for t in proto.graph.initializer if t.external_data) == 3
    assert _initializer_hashes(tmp_path / "b.onnx") == EXPECTED_HASHES

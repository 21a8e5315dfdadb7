"""graphopt.ir.load: every load-time bad input is a LoadError that names the problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from conftest import MODELS, sha256
from graphopt.errors import LoadError
from graphopt.ir import load, load_proto
from helpers import small_model

WEIGHTS = np.arange(8, dtype=np.float32)  # 32 bytes


_model = small_model


def _external_model(folder: Path, data: bytes | None = None, **where) -> Path:
    """``model.onnx`` in ``folder`` whose 32-byte initializer 'w' is external data
    at ``where`` (location, offset, length); ``data`` is written to ``w.data``."""
    w = numpy_helper.from_array(WEIGHTS, "w")
    external_data_helper.set_external_data(w, **where)
    w.ClearField("raw_data")
    model = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["w"], ["z"])], [w],
                   outputs=(("y", [4]), ("z", [8])))
    if data is not None:
        (folder / "w.data").write_bytes(data)
    path = folder / "model.onnx"
    onnx.save(model, path)
    return path


def not_onnx_text(d: Path) -> Path:
    (d / "model.onnx").write_text("hello, this is not an ONNX model\n")
    return d / "model.onnx"


def not_onnx_random(d: Path) -> Path:
    (d / "model.onnx").write_bytes(np.random.default_rng(0).bytes(1000))
    return d / "model.onnx"


def truncated(d: Path) -> Path:
    blob = (MODELS / "bert_tiny_ts.onnx").read_bytes()
    (d / "model.onnx").write_bytes(blob[: len(blob) // 2])
    return d / "model.onnx"


def location_dotdot(d: Path) -> Path:
    sub = d / "sub"
    sub.mkdir()
    (d / "w.data").write_bytes(WEIGHTS.tobytes())  # the file exists: the location itself is refused
    return _external_model(sub, location="../w.data")


def location_absolute(d: Path) -> Path:
    (d / "w.data").write_bytes(WEIGHTS.tobytes())
    return _external_model(d, location=str((d / "w.data").resolve()))


def data_missing(d: Path) -> Path:
    return _external_model(d, location="w.data")


def data_short(d: Path) -> Path:
    return _external_model(d, WEIGHTS.tobytes()[:16], location="w.data", offset=0, length=32)


def data_short_no_length(d: Path) -> Path:
    return _external_model(d, WEIGHTS.tobytes()[:16], location="w.data")


def data_offset_past_end(d: Path) -> Path:
    return _external_model(d, WEIGHTS.tobytes(), location="w.data", offset=64)


def cyclic(d: Path) -> Path:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Identity", ["a"], ["y"])]
    onnx.save(_model(nodes), d / "model.onnx")
    return d / "model.onnx"


def undefined_value(d: Path) -> Path:
    onnx.save(_model([helper.make_node("Add", ["x", "ghost"], ["y"])]), d / "model.onnx")
    return d / "model.onnx"


def opset_too_new(d: Path) -> Path:
    opset = onnx.defs.onnx_opset_version() + 1
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])], opset=opset), d / "model.onnx")
    return d / "model.onnx"


def missing_path(d: Path) -> Path:
    return d / "nope.onnx"


LATEST = onnx.defs.onnx_opset_version()

# (builder, message fragments)
BAD_INPUTS = {
    "not-onnx-text": (not_onnx_text, ["is not an ONNX model or is truncated", "33 bytes could not be decoded"]),
    "not-onnx-random": (not_onnx_random, ["is not an ONNX model or is truncated", "1000 bytes could not be decoded"]),
    "truncated": (truncated, ["is not an ONNX model or is truncated", "check that the file was copied completely"]),
    "location-dotdot": (location_dotdot, ["external-data location '../w.data'", "'..' is not allowed"]),
    "location-absolute": (location_absolute, ["initializer 'w' points at external data by an absolute path"]),
    "data-missing": (data_missing, ["external-data file 'w.data' of initializer 'w' is missing"]),
    "data-short": (data_short, ["initializer 'w' reads bytes 0..32 of 'w.data', but that file holds only 16 bytes"]),
    "data-short-no-length": (data_short_no_length,
                             ["initializer 'w' reads bytes 0..32 of 'w.data', but that file holds only 16 bytes"]),
    "data-offset-past-end": (data_offset_past_end,
                             ["initializer 'w' reads bytes 64..96 of 'w.data', but that file holds only 32 bytes"]),
    "cyclic": (cyclic, ["the main graph has a cycle (", "Add[-] -> a", "Relu[-] -> b", "must be acyclic"]),
    "undefined-value": (undefined_value,
                        ["node Add[-] -> y in the main graph reads value 'ghost', which no node, graph input "
                         "or initializer produces"]),
    "opset-too-new": (opset_too_new,
                      [f"imports opset {LATEST + 1} of the default ONNX domain", f"supports opsets 1..{LATEST}"]),
    "missing-path": (missing_path, ["nope.onnx' does not exist; check the path"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_load_error(case, tmp_path):
    build, fragments = BAD_INPUTS[case]
    path = build(tmp_path)
    before = {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(LoadError) as info:
        load(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert {p: sha256(p) for p in tmp_path.rglob("*") if p.is_file()} == before


def test_empty_file_has_no_graph(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(LoadError, match="decodes, but has no graph"):
        load(tmp_path / "empty.onnx")


def test_directory_is_refused(tmp_path):
    with pytest.raises(LoadError, match="is not a file; pass the path of an .onnx file"):
        load(tmp_path)


def test_ir_version_too_new(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    model.ir_version = onnx.IR_VERSION + 1
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(LoadError, match=f"model has ir_version {onnx.IR_VERSION + 1}, newer than the {onnx.IR_VERSION}"):
        load(tmp_path / "m.onnx")


def test_no_opset_import(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])])
    del model.opset_import[:]
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(LoadError, match="declares no opset_import"):
        load(tmp_path / "m.onnx")


def test_declared_length_shorter_than_shape(tmp_path):
    path = _external_model(tmp_path, WEIGHTS.tobytes(), location="w.data", offset=0, length=16)
    with pytest.raises(LoadError, match="declares 16 bytes of external data in 'w.data', but its shape and dtype need 32"):
        load(path)


def test_undefined_value_in_subgraph(tmp_path):
    then = helper.make_graph([helper.make_node("Add", ["x", "ghost"], ["a"])], "then_g", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else_g", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path / "m.onnx")
    with pytest.raises(LoadError, match="in the subgraph 'then_g' reads value 'ghost'"):
        load(tmp_path / "m.onnx")


def test_good_external_model_loads_lazily(tmp_path):
    path = _external_model(tmp_path, b"\0" * 8 + WEIGHTS.tobytes(), location="w.data", offset=8, length=32)
    model = load(path)
    tensor = model.graph.initializers["w"].const_value
    assert type(tensor).__name__ == "ExternalTensor"
    assert (tensor.offset, tensor.length) == (8, 32)
    np.testing.assert_array_equal(tensor.numpy(), WEIGHTS)
    assert model.meta["graphopt.source"] == str(path.resolve())
    assert [n.op_type for n in model.graph] == ["Relu", "Relu"]


def test_load_proto_reads_external_data_on_request(tmp_path):
    path = _external_model(tmp_path, WEIGHTS.tobytes(), location="w.data")
    lazy = load_proto(path)
    assert not lazy.graph.initializer[0].HasField("raw_data")
    full = load_proto(path, external_data=True)
    np.testing.assert_array_equal(numpy_helper.to_array(full.graph.initializer[0]), WEIGHTS)


def test_committed_model_loads(tmp_path):
    model = load(MODELS / "bert_tiny_ts.onnx")
    assert len(list(model.graph)) == 236
    assert len(model.graph.initializers) == 39
    assert os.path.basename(model.meta["graphopt.source"]) == "bert_tiny_ts.onnx"

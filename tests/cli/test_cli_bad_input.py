"""``graphopt optimize`` on bad input: exit 2, a message without a traceback, no
output (not even a temp file), the input untouched. And the good path: exit 0,
``--json``, pipeline and ``--dim`` usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import external_data_helper, helper, numpy_helper

from conftest import MODELS, sha256
from graphopt.cli.main import main
from helpers import flat as _flat, restore_logging, run_cli as _run, small_model  # noqa: F401 - autouse fixture

WEIGHTS = np.arange(8, dtype=np.float32)  # 32 bytes
LATEST = onnx.defs.onnx_opset_version()



_model = small_model


def _save(d: Path, model: onnx.ModelProto) -> Path:
    onnx.save(model, d / "model.onnx")
    return d / "model.onnx"


def _external(d: Path, data: bytes | None = None, **where) -> Path:
    w = numpy_helper.from_array(WEIGHTS, "w")
    external_data_helper.set_external_data(w, **where)
    w.ClearField("raw_data")
    if data is not None:
        (d / "w.data").write_bytes(data)
    return _save(d, _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["w"], ["z"])], [w],
                           outputs=(("y", [4]), ("z", [8]))))


def _write(d: Path, blob: bytes) -> Path:
    (d / "model.onnx").write_bytes(blob)
    return d / "model.onnx"


def _dotdot(d: Path) -> Path:
    (d.parent / "w.data").write_bytes(WEIGHTS.tobytes())
    return _external(d, location="../w.data")


def _absolute(d: Path) -> Path:
    (d / "w.data").write_bytes(WEIGHTS.tobytes())
    return _external(d, location=str((d / "w.data").resolve()))


def _truncated(d: Path) -> Path:
    blob = (MODELS / "bert_tiny_ts.onnx").read_bytes()
    return _write(d, blob[: len(blob) // 2])


# name -> (builder of the bad input in a folder, fragment of the error message)
BAD_INPUTS = {
    "not-onnx-text": (lambda d: _write(d, b"hello, this is not an ONNX model\n"), "is not an ONNX model or is truncated"),
    "not-onnx-random": (lambda d: _write(d, np.random.default_rng(0).bytes(1000)), "is not an ONNX model or is truncated"),
    "truncated": (_truncated, "is not an ONNX model or is truncated"),
    "location-dotdot": (_dotdot, "'..' is not allowed"),
    "location-absolute": (_absolute, "points at external data by an absolute path"),
    "data-missing": (lambda d: _external(d, location="w.data"), "external-data file 'w.data' of initializer 'w' is missing"),
    "data-short": (lambda d: _external(d, WEIGHTS.tobytes()[:16], location="w.data", offset=0, length=32),
                   "reads bytes 0..32 of 'w.data', but that file holds only 16 bytes"),
    "data-short-no-length": (lambda d: _external(d, WEIGHTS.tobytes()[:16], location="w.data"),
                             "reads bytes 0..32 of 'w.data', but that file holds only 16 bytes"),
    "cyclic": (lambda d: _save(d, _model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                                          helper.make_node("Identity", ["a"], ["y"])])), "has a cycle"),
    "undefined-value": (lambda d: _save(d, _model([helper.make_node("Add", ["x", "ghost"], ["y"])])),
                        "reads value 'ghost', which no node, graph input or initializer produces"),
    "opset-too-new": (lambda d: _save(d, _model([helper.make_node("Relu", ["x"], ["y"])], opset=LATEST + 1)),
                      f"imports opset {LATEST + 1} of the default ONNX domain; onnx {onnx.__version__} supports opsets 1..{LATEST}"),
    "missing-path": (lambda d: d / "nope.onnx", "does not exist; check the path"),
}




def _hashes(folder: Path) -> dict[Path, str]:
    return {p: sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_and_leaves_nothing(case, tmp_path, capsys):
    build, fragment = BAD_INPUTS[case]
    src = tmp_path / "in" / "model"
    src.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    path = build(src)
    before = _hashes(tmp_path / "in")
    code, stdout, stderr = _run(capsys, "optimize", path, "-o", out / "opt.onnx")
    assert code == 2
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "internal error" not in stderr
    assert _flat(stderr).startswith("error: ")
    assert fragment in _flat(stderr)
    assert sorted(p.name for p in out.iterdir()) == []  # no output, no temp folder
    assert _hashes(tmp_path / "in") == before


def test_bad_input_subprocess_has_no_traceback(tmp_path):
    """The installed console script, end to end, on one bad input."""
    import subprocess
    import sys

    bad = _write(tmp_path, b"not onnx at all")
    proc = subprocess.run([sys.executable, "-m", "graphopt.cli.main", "optimize", str(bad), "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=60, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "is not an ONNX model or is truncated (15 bytes could not be decoded" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def _good_model() -> onnx.ModelProto:
    """y = Relu(Identity(x) + b): O1 removes the Identity (3 nodes -> 2)."""
    b = numpy_helper.from_array(np.array([1.0, -2.0, 0.5, 0.0], np.float32), "b")
    return _model([helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Add", ["i", "b"], ["s"]),
                   helper.make_node("Relu", ["s"], ["y"])], [b])


def test_good_model_writes_output(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    digest = sha256(src)
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", out / "opt.onnx")
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["opt.onnx"]
    assert "wrote " in stdout
    assert sha256(src) == digest
    written = onnx.load(out / "opt.onnx")
    assert [n.op_type for n in written.graph.node] == ["Add", "Relu"]
    x = np.array([0.5, 1.0, -1.0, 3.0], np.float32)
    sess = ort.InferenceSession(str(out / "opt.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x + np.array([1.0, -2.0, 0.5, 0.0], np.float32), 0))


def test_json_report(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", tmp_path / "opt.onnx", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["before"]["nodes"] == 3
    assert doc["after"]["nodes"] == 2
    assert doc["before"]["ops"]["Identity"] == 1 and "Identity" not in doc["after"]["ops"]
    assert doc["pipeline"] == "O1"
    assert doc["output"] == str(tmp_path / "opt.onnx")
    assert doc["verify"] is not None


def test_unknown_pass_lists_candidates(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", tmp_path / "opt.onnx", "-p", "dcee")
    assert code == 2
    err = _flat(stderr)
    assert "Traceback" not in stderr
    assert "unknown pass 'dcee'. Did you mean dce?" in err
    from graphopt.passmanager import registered_passes

    assert "Registered passes: " + ", ".join(registered_passes()) in err
    assert not (tmp_path / "opt.onnx").exists()


def test_bad_provider_option_exits_2(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", tmp_path / "opt.onnx", "-p",
                                "fuse-skip-norm{for-provider=gpu}")
    assert code == 2
    assert "Traceback" not in stderr
    assert "fuse-skip-norm: for-provider must be auto, cpu or cuda, got 'gpu'" in _flat(stderr)
    assert not (tmp_path / "opt.onnx").exists()


@pytest.mark.parametrize("dim", ["batch=0", "batch", "batch=x", "=3"])
def test_bad_dim_exits_2(dim, tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", tmp_path / "opt.onnx", "--dim", dim)
    assert code == 2
    assert "Traceback" not in stderr
    assert f"--dim expects NAME=SIZE with a positive integer size (e.g. --dim batch=1), got '{dim}'" in _flat(stderr)
    assert not (tmp_path / "opt.onnx").exists()


def test_output_over_input_is_refused(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    digest = sha256(src)
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", src)
    assert code == 2
    assert "refusing to write over the input model" in _flat(stderr)
    assert sha256(src) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_output_folder_missing(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    code, stdout, stderr = _run(capsys, "optimize", src, "-o", tmp_path / "no" / "opt.onnx")
    assert code == 2
    assert "does not exist; create it first" in _flat(stderr)


def test_missing_output_option_is_usage_error(tmp_path, capsys):
    src = _save(tmp_path, _good_model())
    with pytest.raises(SystemExit) as info:
        main(["optimize", str(src)])
    assert info.value.code == 2
    assert "the following arguments are required: -o/--output" in _flat(capsys.readouterr().err)

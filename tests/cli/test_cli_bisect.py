"""``graphopt bisect`` and ``graphopt optimize --verify-each / --dump-dir``,
run in-process so that passes registered here are visible to the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphopt import ir
from graphopt.cli.main import main
from graphopt.passmanager import ModelRunner, Pass, PassResult, register_pass
from helpers import relu_to_neg, restore_logging  # noqa: F401 - autouse fixture


@register_pass("test-cli-wrong-relu")
class WrongRelu(Pass):
    """Test pass, deliberately wrong: turns every Relu into Neg."""

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        count = relu_to_neg(model)
        return PassResult(modified=count > 0, stats={"changed": count})


@register_pass("test-cli-crash")
class Crash(Pass):
    """Test pass: raises."""

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        raise RuntimeError("cli boom")


MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
  a = Identity(x)
  b = Relu(a)
  dead = Exp(x)
  y = Add(b, x)
}"""



@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    ir.save(ir.from_text(MODEL), path)
    return path


# bisect ---------------------------------------------------------------

def test_bisect_names_the_wrong_pass(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bisect", str(model_path), "-p", "eliminate-identity,test-cli-wrong-relu"])
    out = capsys.readouterr().out
    assert code == 1
    assert "first diverging pass: #2 test-cli-wrong-relu" in out


def test_bisect_correct_pipeline_exits_0(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bisect", str(model_path), "-p", "eliminate-identity,dce"])
    out = capsys.readouterr().out
    assert code == 0
    assert "no divergence" in out and "2 passes ran, 2 changed the model" in out


def test_bisect_default_pipeline_is_o1(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bisect", str(model_path)]) == 0
    assert "no divergence" in capsys.readouterr().out


def test_bisect_json(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bisect", str(model_path), "-p", "eliminate-identity,test-cli-wrong-relu,dce", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["pipeline"] == "eliminate-identity,test-cli-wrong-relu,dce"
    assert doc["checked"] == 2
    assert doc["culprit"]["index"] == 2 and doc["culprit"]["pass"] == "test-cli-wrong-relu"
    assert doc["culprit"]["spec"] == "test-cli-wrong-relu"
    assert "y:" in doc["culprit"]["reason"]


def test_bisect_with_pipeline_file(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "pipe.yaml"
    spec.write_text("pipeline:\n  - eliminate-identity\n  - test-cli-wrong-relu\n")
    assert main(["bisect", str(model_path), "--pipeline-file", str(spec)]) == 1
    assert "test-cli-wrong-relu" in capsys.readouterr().out


def test_bisect_with_given_inputs(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # all-positive inputs: Relu == identity there, but Neg is not
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.ones((2, 3), dtype=np.float32))
    assert main(["bisect", str(model_path), "-p", "test-cli-wrong-relu", "--inputs", str(inputs)]) == 1
    assert "#1 test-cli-wrong-relu" in capsys.readouterr().out


def test_bisect_bad_spec_exits_2(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bisect", str(model_path), "-p", "eliminate-identity,test-cli-wrong-reluu"]) == 2
    assert "Did you mean test-cli-wrong-relu" in capsys.readouterr().err


def test_bisect_missing_model_exits_2(tmp_path: Path) -> None:
    assert main(["bisect", str(tmp_path / "nope.onnx"), "-p", "dce"]) == 2


# optimize --verify-each / --dump-dir / crash ------------------------------

def test_optimize_verify_each_rolls_back(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(model_path), "-o", str(out), "-p", "eliminate-identity,test-cli-wrong-relu,dce",
                 "--verify-each", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    doc = json.loads(captured.out)
    assert doc["rolled_back"] == ["test-cli-wrong-relu"]
    assert [p["rolled_back"] for p in doc["passes"]] == [False, True, False]
    assert "pass 'test-cli-wrong-relu' rolled back" in captured.err
    result = ir.load(out)
    assert sorted(n.op_type for n in result.graph) == ["Add", "Relu"]
    x = {"x": np.array([[-1, 2, -3], [4, -5, 6]], dtype=np.float32)}
    np.testing.assert_array_equal(ModelRunner(x).run(result)["y"], ModelRunner(x).run(ir.load(model_path))["y"])


def test_optimize_without_verify_each_refuses_to_write(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    code = main(["-q", "optimize", str(model_path), "-o", str(out), "-p", "eliminate-identity,test-cli-wrong-relu"])
    assert code == 1  # the final verification catches it; nothing is written
    assert not out.exists()


def test_optimize_dump_dir(model_path: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    code = main(["-q", "optimize", str(model_path), "-o", str(tmp_path / "out.onnx"), "-p", "eliminate-identity,dce",
                 "--dump-dir", str(dump)])
    assert code == 0
    assert sorted(p.name for p in dump.iterdir()) == [
        "000_input.onnx", "000_input.txt",
        "001_eliminate-identity.onnx", "001_eliminate-identity.txt",
        "002_dce.onnx", "002_dce.txt",
    ]
    assert (dump / "000_input.txt").read_text() == ir.to_text(ir.load(model_path))
    assert (dump / "002_dce.txt").read_text() == ir.to_text(ir.load(tmp_path / "out.onnx"))


def test_optimize_crash_writes_reproducer(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repro = tmp_path / "repro"
    code = main(["-q", "optimize", str(model_path), "-o", str(tmp_path / "out.onnx"),
                 "-p", "eliminate-identity,test-cli-crash", "--reproducer-dir", str(repro)])
    err = capsys.readouterr().err
    assert code == 3
    (folder,) = repro.iterdir()
    assert "test-cli-crash" in err and "cli boom" in err
    assert (folder / "pipeline.txt").read_text() == "test-cli-crash\n"
    assert "Identity" not in ir.to_text(ir.load(folder / "model.onnx"))
    assert not (tmp_path / "out.onnx").exists()

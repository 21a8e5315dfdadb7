"""graphopt.ir.save(check=True): an output that fails onnx.checker is a
graphopt defect (BrokenOutputError, exit 3) when the input it was loaded from
passes the check, and the input's problem (SaveError, exit 2) when the input
fails it too. Nothing is written either way."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import ir
from graphopt.errors import BrokenOutputError, SaveError


def _write(path: Path, output_shape) -> Path:  # noqa: ANN001 - a shape list or None
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def _break(model: ir.Model) -> None:
    """What a faulty pass might do: an attribute Relu does not have."""
    model.graph.node(0).attributes["alpha"] = ir.Attr("alpha", ir.AttributeType.FLOAT, 0.1)


def test_output_broken_by_graphopt_is_internal_error(tmp_path: Path) -> None:
    model = ir.load(_write(tmp_path / "in.onnx", [4]))
    _break(model)
    with pytest.raises(BrokenOutputError) as info:
        ir.save(model, tmp_path / "out.onnx", check=True)
    message = str(info.value)
    assert info.value.exit_code == 3
    assert message.startswith("the output model fails onnx.checker: ")
    assert "Unrecognized attribute: alpha for operator Relu" in message
    assert f"The input model '{(tmp_path / 'in.onnx').resolve()}' passes the same check" in message
    assert "--verify-each" in message and "graphopt bisect" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_output_of_an_input_that_fails_the_checker_is_save_error(tmp_path: Path) -> None:
    model = ir.load(_write(tmp_path / "in.onnx", None))  # an output without a shape: the full check refuses it
    _break(model)
    with pytest.raises(SaveError) as info:
        ir.save(model, tmp_path / "out.onnx", check=True)
    assert info.value.exit_code == 2
    assert "fails it too (Field 'shape' of 'type' is required but missing.): fix or re-export the input" in \
        str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_model_without_a_source_is_save_error(tmp_path: Path) -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) { y = Relu(x) }""")
    _break(model)
    with pytest.raises(SaveError, match="the output model fails onnx.checker: .*Unrecognized attribute: alpha"):
        ir.save(model, tmp_path / "out.onnx", check=True)

"""``graphopt optimize --inputs`` with sequence and optional inputs stored the
way the ONNX backend tests store them (issue 20, item 6: backend cases such as
test_identity_sequence and test_loop16_seq_none were refused with "graphopt
verification only feeds tensor inputs")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture


def _model(tmp_path: Path) -> Path:
    """y = ConcatFromSequence(s) + OptionalGetElement(o), with an Identity chain for O1 to remove."""
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    opt = helper.make_value_info("o", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["s2"]),
         helper.make_node("ConcatFromSequence", ["s2"], ["c"], axis=0),
         helper.make_node("OptionalGetElement", ["o"], ["v"]),
         helper.make_node("Add", ["c", "v"], ["y"])],
        "g", [seq, opt], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    data = tmp_path / "case" / "test_data_set_0"
    data.mkdir(parents=True)
    seq_value = [np.array([[1.0, 2.0]], np.float32), np.array([[3.0, 4.0]], np.float32)]
    (data / "input_0.pb").write_bytes(numpy_helper.from_list(seq_value, "s").SerializeToString())
    (data / "input_1.pb").write_bytes(numpy_helper.from_optional(np.array([10.0, 20.0], np.float32),
                                                                 "o").SerializeToString())
    return path


def test_sequence_and_optional_inputs_from_backend_files_optimize(tmp_path, capsys):
    path = _model(tmp_path)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", path, "-o", out, "--inputs", tmp_path / "case")
    assert code == 0, err
    written = onnx.load(out)
    assert [n.op_type for n in written.graph.node] == ["ConcatFromSequence", "OptionalGetElement", "Add"]
    assert [i.type.WhichOneof("value") for i in written.graph.input] == ["sequence_type", "optional_type"]


def test_without_inputs_the_refusal_names_the_input_and_inputs_option(tmp_path, capsys):
    path = _model(tmp_path)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", path, "-o", out)
    assert code == 2 and not out.exists()
    assert ("error: input 's' is a sequence_type, which graphopt cannot generate; give it with --inputs "
            "(a directory of input_N.pb files laid out like the ONNX backend test data)") in flat(err)


def test_given_string_input_is_not_generated(tmp_path, capsys):
    """A string tensor given with --inputs (backend cases test_ai_onnx_ml_label_encoder_string_*) was refused:
    "input 'X' is a string tensor; graphopt cannot generate it" although it was given."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Identity", ["i"], ["y"]),
         helper.make_node("Relu", ["f"], ["g"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.STRING, [2]),
              helper.make_tensor_value_info("f", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, [3])])
    path = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    data = tmp_path / "case"
    data.mkdir()
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(np.array([b"a", b"bc"], dtype=object),
                                                              "x").SerializeToString())
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", path, "-o", out, "--inputs", data)  # f is generated
    assert code == 0, err
    assert [n.op_type for n in onnx.load(out).graph.node] == ["Identity", "Relu"]


def test_generate_inputs_leaves_given_names_out():
    from graphopt.verify import generate_inputs

    graph = helper.make_graph([helper.make_node("Relu", ["f"], ["g"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.STRING, [2]),
                               helper.make_tensor_value_info("f", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    feed = generate_inputs(model, given=("x",))
    assert list(feed) == ["f"] and feed["f"].shape == (3,) and feed["f"].dtype == np.float32

"""graphopt.ir.check: the full check's false alarm on function-defined operators
left at their attribute defaults (issue 20, backend case ``test_mvn``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.onnx_cpp2py_export.shape_inference import InferenceError

from graphopt import ir
from graphopt.ir.check import check_model_file, fill_function_defaults
from graphopt.verify import compare


def _mvn(**attrs) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MeanVarianceNormalization", ["x"], ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3, 3, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3, 3, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def test_onnx_full_check_rejects_the_valid_model_itself(tmp_path):
    """The premise: onnx's own checker fails on MVN without axes (the body's
    ``Constant <value_ints = @axes>`` gets no value)."""
    onnx.save(_mvn(), tmp_path / "m.onnx")
    with pytest.raises(InferenceError, match="One and only one of the attributes 'value'"):
        onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_check_accepts_it_and_leaves_the_file_unchanged(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_mvn(), path)
    before = path.read_bytes()
    check_model_file(path, has_external_data=False)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.onnx"]


def test_fill_function_defaults_writes_the_schema_default_only_where_omitted():
    model = _mvn()
    assert fill_function_defaults(model) == 1
    assert helper.get_attribute_value(model.graph.node[0].attribute[0]) == [0, 2, 3]
    explicit = _mvn(axes=[1])
    assert fill_function_defaults(explicit) == 0
    relu = _mvn()
    relu.graph.node[0].op_type = "Relu"  # not defined by a function: untouched
    assert fill_function_defaults(relu) == 0


def test_a_real_defect_inside_a_function_body_is_still_reported(tmp_path):
    """A Constant with no value in the main graph is not a function-body false
    alarm: the check still fails."""
    model = _mvn()
    model.graph.node.insert(0, helper.make_node("Constant", [], ["c"]))
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises((onnx.checker.ValidationError, InferenceError)):
        check_model_file(tmp_path / "bad.onnx", has_external_data=False)


def test_mvn_model_optimizes_and_saves(tmp_path):
    model = ir.from_proto(_mvn())
    saved = ir.save(model, tmp_path / "out.onnx", check=True)
    x = np.arange(27, dtype=np.float32).reshape(3, 3, 3, 1)
    assert compare(_mvn(), str(saved.path), inputs={"x": x}).ok

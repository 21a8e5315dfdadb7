"""The pass manager's three rules for every pipeline (issue 20, items 1, 2, 5):
the structural check after each modifying pass, the declared signature put
back after the last pass, and IR-3 initializer inputs dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import ir
from graphopt.errors import LoadError, PassError
from graphopt.ir.load import drop_initializer_inputs, structure_problem
from graphopt.passmanager import (
    Pass, PassContext, PassManager, PassResult, Reproducer, VerifyEach, register_pass,
)
from graphopt.passmanager.manager import declared_signature, restore_signature

CHAIN = """<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, n] y) {
  a = Relu(x)
  y = Neg(a)
}"""


def _dims(value: ir.Value) -> list:
    return [d if isinstance(d, int) else d.value for d in value.shape]


# structure_problem -------------------------------------------------------


def test_structure_ok() -> None:
    assert structure_problem(ir.from_text(CHAIN)) is None


def test_structure_two_producers_of_one_name() -> None:
    model = ir.from_text(CHAIN)
    graph = model.graph
    graph.append(ir.Node("", "Identity", [graph.inputs[0]], outputs=[ir.Value(name="a")], name="twin"))
    kind, message = structure_problem(model)
    assert kind == "ssa"
    assert message == ("the main graph defines value 'a' twice (also as an output of node Identity[twin] -> a); "
                       "a graph must be in SSA form, each value produced once")


def test_structure_name_of_a_graph_input_produced_again() -> None:
    model = ir.from_text(CHAIN)
    graph = model.graph
    graph.append(ir.Node("", "Identity", [graph.node(0).outputs[0]], outputs=[ir.Value(name="x")], name="dup"))
    assert structure_problem(model) == (
        "ssa", "the main graph defines value 'x' twice (also as an output of node Identity[dup] -> x); "
               "a graph must be in SSA form, each value produced once")


def test_structure_read_of_a_removed_node() -> None:
    model = ir.from_text(CHAIN)
    graph = model.graph
    relu = graph.node(0)
    graph.remove(relu)  # Neg still reads a, whose producer is gone
    kind, message = structure_problem(model)
    assert kind == "undefined"
    assert "reads value 'a', which no node, graph input or initializer produces" in message
    assert message.startswith("node Neg[")


def test_structure_output_not_produced() -> None:
    model = ir.from_text(CHAIN)
    graph = model.graph
    graph.remove(graph.node(1))  # y's producer gone
    assert structure_problem(model) == (
        "output", "the main graph's output 'y' is not produced by any node, graph input or initializer of it")


def test_structure_cycle_out_of_order() -> None:
    model = ir.from_text(CHAIN)
    graph = model.graph
    relu, neg = graph.node(0), graph.node(1)
    relu.name, neg.name = "r", "n"
    relu.replace_input_with(0, neg.outputs[0])  # a = Relu(y), y = Neg(a)
    assert structure_problem(model) == ("cycle", "the main graph has a cycle (Neg[n] -> y -> Relu[r] -> a)")


def test_structure_out_of_order_but_acyclic() -> None:
    model = ir.from_text(CHAIN)
    graph = model.graph
    relu = graph.node(0)
    graph.remove(relu)
    graph.append(relu)  # consumer listed first: not sorted, still a DAG
    assert structure_problem(model) is None


def test_load_refuses_duplicate_producers(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["a"]),
                               helper.make_node("Identity", ["a"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    with pytest.raises(LoadError, match="value 'a' is defined twice .*the model is malformed: re-export it"):
        ir.load(path)


# the structural check in the pass manager ---------------------------------


@register_pass("test-pm-break-ssa")
class BreakSSA(Pass):
    """Test only: a second producer of the first node's output name."""

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001
        graph = model.graph
        name = graph.node(0).outputs[0].name
        graph.append(ir.Node("", "Identity", [graph.inputs[0]], outputs=[ir.Value(name=name)], name="twin"))
        return PassResult(modified=True)


@register_pass("test-pm-sharpen-output")
class SharpenOutput(Pass):
    """Test only: what shape inference does to a graph output (symbolic -> 8)
    and to the input (batch -> 2)."""

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001
        model.graph.outputs[0].shape = ir.Shape([2, 8])
        model.graph.inputs[0].shape = ir.Shape([2, 4])
        return PassResult(modified=True)


def test_broken_pass_is_exit_3_with_reproducer(tmp_path: Path) -> None:
    ctx = PassContext(instruments=[Reproducer(tmp_path)])
    with pytest.raises(PassError) as info:
        PassManager("dce,test-pm-break-ssa", ctx).run(ir.from_text(CHAIN))
    error = info.value
    assert error.exit_code == 3 and error.pass_name == "test-pm-break-ssa"
    assert str(error).startswith("pass 'test-pm-break-ssa' broke the graph: the main graph defines value 'a' twice")
    assert error.reproducer and Path(error.reproducer).parent == tmp_path
    assert (Path(error.reproducer) / "pipeline.txt").read_text() == "test-pm-break-ssa\n"
    received = onnx.load(str(Path(error.reproducer) / "model.onnx"))
    assert [n.op_type for n in received.graph.node] == ["Relu", "Neg"]


def test_broken_pass_without_reproducer_instrument_says_so() -> None:
    with pytest.raises(PassError, match="no reproducer was written") as info:
        PassManager("test-pm-break-ssa").run(ir.from_text(CHAIN))
    assert info.value.exit_code == 3 and info.value.reproducer is None


def test_broken_pass_rolled_back_under_verify_each(caplog: pytest.LogCaptureFixture) -> None:
    verify = VerifyEach()
    result = PassManager("test-pm-break-ssa,dce", PassContext(instruments=[verify])).run(ir.from_text(CHAIN))
    record = result.report.records[0]
    assert record.name == "test-pm-break-ssa" and record.rolled_back and not record.modified
    assert [n.op_type for n in result.model.graph] == ["Relu", "Neg"]
    assert verify.failures[0][0] == "test-pm-break-ssa"
    assert "structural check failed: pass 'test-pm-break-ssa' broke the graph" in caplog.text


# the declared signature ----------------------------------------------------


def test_declared_signature_put_back_after_the_pipeline() -> None:
    result = PassManager("test-pm-sharpen-output").run(ir.from_text(CHAIN))
    assert _dims(result.model.graph.outputs[0]) == ["batch", "n"]
    assert _dims(result.model.graph.inputs[0]) == ["batch", 4]


def test_restore_leaves_a_changed_static_dim_for_verification() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y) { y = Relu(x) }""")
    declared = declared_signature(model)
    model.graph.outputs[0].shape = ir.Shape([5])  # a pass that changed the model: not masked
    assert restore_signature(model, declared) == []
    assert _dims(model.graph.outputs[0]) == [5]
    model.graph.outputs[0].shape = ir.Shape([4, 1])  # rank changed: not masked either
    assert restore_signature(model, declared) == []
    model.graph.outputs[0].shape = ir.Shape([ir.SymbolicDim("unk__0")])  # renamed/unknown: declared again
    assert restore_signature(model, declared) == ["output 'y'"]
    assert _dims(model.graph.outputs[0]) == [4]


def test_restore_keeps_what_was_found_for_unnamed_or_undeclared_dims() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[?, n, ?] y, float z) { y = Relu(x)\n z = Neg(x) }""")
    declared = declared_signature(model)
    y, z = model.graph.outputs
    y.shape = ir.Shape([2, 8, ir.SymbolicDim("unk__3")])
    z.shape = ir.Shape([4])
    assert restore_signature(model, declared) == ["output 'y'"]
    assert _dims(y) == [2, "n", None] and _dims(z) == [4]


def test_restore_leaves_a_changed_dtype() -> None:
    model = ir.from_text(CHAIN)
    declared = declared_signature(model)
    out = model.graph.outputs[0]
    out.type = ir.TensorType(ir.DataType.FLOAT16)  # a lossy pass's business
    out.shape = ir.Shape([2, 8])
    assert restore_signature(model, declared) == []
    assert out.dtype == ir.DataType.FLOAT16 and _dims(out) == [2, 8]


# IR 3 ---------------------------------------------------------------------


def _ir3(ir_version: int = 3) -> ir.Model:
    w = numpy_helper.from_array(np.full((4,), 2.0, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    proto.ir_version = ir_version
    return ir.from_proto(proto)


def test_drop_initializer_inputs_ir3() -> None:
    model = _ir3()
    assert drop_initializer_inputs(model) == ["w"]
    assert [v.name for v in model.graph.inputs] == ["x"] and model.ir_version == 4
    assert list(model.graph.initializers) == ["w"]
    assert ir.is_constant(model.graph.node(0).inputs[1])  # passes may fold it now
    onnx.checker.check_model(ir.to_proto(model))


def test_drop_initializer_inputs_leaves_ir4() -> None:
    model = _ir3(ir_version=4)
    assert drop_initializer_inputs(model) == []
    assert [v.name for v in model.graph.inputs] == ["x", "w"]


def test_pass_manager_drops_them_unless_asked_to_keep() -> None:
    dropped = PassManager("dce").run(_ir3()).model
    assert [v.name for v in dropped.graph.inputs] == ["x"]
    kept = PassManager("dce", PassContext(config={"ir.keep_initializer_inputs": True})).run(_ir3()).model
    assert [v.name for v in kept.graph.inputs] == ["x", "w"] and kept.ir_version == 3
    via_api = graphopt.optimize(_ir3(), "dce", ir_keep_initializer_inputs=True)
    assert [v.name for v in via_api.graph.inputs] == ["x", "w"]

"""Instruments: VerifyEach rollback, Bisect, DumpIR, ModelRunner; and pass
behaviour the golden cases do not cover."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from graphopt import ir
from graphopt.passmanager import (
    Bisect, DumpIR, ModelRunner, Pass, PassContext, PassManager, PassResult, VerifyEach, register_pass,
)
from helpers import relu_to_neg


@register_pass("test-instr-wrong-relu")
class WrongRelu(Pass):
    """Test pass, deliberately wrong: turns every Relu into Neg."""

    preserves = frozenset({"topo-sorted"})

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        count = relu_to_neg(model)
        return PassResult(modified=count > 0, stats={"changed": count})


@register_pass("test-instr-wrong-relu-sorted")
class WrongReluSorted(WrongRelu):
    """Test pass, deliberately wrong, that requires a sorted graph."""

    requires = frozenset({"topo-sorted"})


@register_pass("test-instr-break-structure")
class BreakStructure(Pass):
    """Test pass, deliberately wrong: gives a node an op the default domain lacks."""

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        next(iter(model.graph)).op_type = "NoSuchOp"
        return PassResult(modified=True)


@register_pass("test-instr-lossy-neg")
class LossyNeg(WrongRelu):
    """Test pass: the same change, declared lossy (structure checked only)."""

    lossy = True


MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
  a = Identity(x)
  b = Relu(a)
  dead = Exp(x)
  y = Add(b, x)
}"""

WRONG = "eliminate-identity,test-instr-wrong-relu,dce"
INPUTS = {"x": np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 0.5]], dtype=np.float32)}


def ops(model: ir.Model) -> list[str]:
    return sorted(n.op_type for n in model.graph)


# VerifyEach -----------------------------------------------------------

def test_verify_each_rolls_back_the_wrong_pass(caplog: pytest.LogCaptureFixture) -> None:
    model = ir.from_text(MODEL)
    reference = ModelRunner(INPUTS).run(ir.from_text(MODEL))
    verify = VerifyEach(ModelRunner(INPUTS))
    with caplog.at_level(logging.WARNING, logger="graphopt.passmanager.instruments"):
        result = PassManager(WRONG, PassContext(instruments=[verify])).run(model)
    ident, wrong, dce = result.report.records
    assert wrong.name == "test-instr-wrong-relu"
    assert wrong.rolled_back and not wrong.modified
    # the note is the reason: the failing output and its error figures
    assert wrong.note.startswith("y: float32[2, 3]") and "max_abs=8" in wrong.note and "FAIL" in wrong.note
    assert wrong.stats == {"changed": 1}
    assert not ident.rolled_back and ident.modified
    assert not dce.rolled_back and dce.modified
    assert [r.name for r in result.report.rolled_back] == ["test-instr-wrong-relu"]
    assert verify.failures == [("test-instr-wrong-relu", wrong.note)]

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pass 'test-instr-wrong-relu' rolled back" in warnings[0].getMessage()
    assert wrong.note in warnings[0].getMessage()

    # the other passes still applied; the wrong one did not
    assert ops(result.model) == ["Add", "Relu"]
    got = ModelRunner(INPUTS).run(result.model)
    assert list(got) == ["y"]
    np.testing.assert_array_equal(got["y"], reference["y"])


def test_verify_each_generates_inputs_when_none_given() -> None:
    verify = VerifyEach()
    result = PassManager(WRONG, PassContext(instruments=[verify])).run(ir.from_text(MODEL))
    assert [r.rolled_back for r in result.report.records] == [False, True, False]
    assert ops(result.model) == ["Add", "Relu"]
    assert verify.runner.inputs is not None and set(verify.runner.inputs) == {"x"}


def test_verify_each_keeps_correct_passes() -> None:
    verify = VerifyEach(ModelRunner(INPUTS))
    result = PassManager("eliminate-identity,dce", PassContext(instruments=[verify])).run(ir.from_text(MODEL))
    assert not result.report.rolled_back and verify.failures == []
    assert ops(result.model) == ["Add", "Relu"]


def test_verify_each_rolls_back_structural_breakage() -> None:
    verify = VerifyEach(ModelRunner(INPUTS))
    result = PassManager("test-instr-break-structure", PassContext(instruments=[verify])).run(ir.from_text(MODEL))
    (record,) = result.report.records
    assert record.rolled_back
    assert record.note.startswith("structural check failed")
    assert "NoSuchOp" not in ir.to_text(result.model)


def test_verify_each_checks_only_structure_of_lossy_passes() -> None:
    verify = VerifyEach(ModelRunner(INPUTS))
    result = PassManager("test-instr-lossy-neg", PassContext(instruments=[verify])).run(ir.from_text(MODEL))
    assert not result.report.rolled_back
    assert "Neg" in ops(result.model)


def test_verify_each_respects_tolerance() -> None:
    # an absurd tolerance accepts the wrong pass: the comparison uses ctx's config
    ctx = PassContext(config={"verify.rtol": 1e9, "verify.atol": 1e9}, instruments=[VerifyEach(ModelRunner(INPUTS))])
    result = PassManager(WRONG, ctx).run(ir.from_text(MODEL))
    assert not result.report.rolled_back


# Bisect ---------------------------------------------------------------

def test_bisect_names_the_wrong_pass() -> None:
    bisect = Bisect(ModelRunner(INPUTS))
    result = PassManager(WRONG, PassContext(instruments=[bisect])).run(ir.from_text(MODEL))
    assert bisect.culprit is not None
    assert bisect.culprit.name == "test-instr-wrong-relu"
    assert bisect.culprit.index == 2
    assert bisect.culprit.spec == "test-instr-wrong-relu"
    assert bisect.reason
    assert bisect.checked == 2  # eliminate-identity, then the culprit
    # the pipeline stopped at the culprit: dce never ran
    assert [r.name for r in result.report.records] == ["eliminate-identity", "test-instr-wrong-relu"]
    assert "test-instr-wrong-relu" in result.report.stopped


def test_bisect_index_counts_auto_passes() -> None:
    unsorted = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
  y = Add(b, x)
  b = Relu(x)
}"""
    bisect = Bisect(ModelRunner(INPUTS))
    result = PassManager("test-instr-wrong-relu-sorted", PassContext(instruments=[bisect])).run(
        ir.from_text(unsorted))
    assert [(r.name, r.auto) for r in result.report.records] == [
        ("topological-sort", True), ("test-instr-wrong-relu-sorted", False)]
    assert (bisect.culprit.index, bisect.culprit.name) == (2, "test-instr-wrong-relu-sorted")


def test_bisect_index_after_unchanged_passes() -> None:
    bisect = Bisect(ModelRunner(INPUTS))
    PassManager("eliminate-dropout,dce,eliminate-identity,test-instr-wrong-relu,dce",
                PassContext(instruments=[bisect])).run(ir.from_text(MODEL))
    assert (bisect.culprit.index, bisect.culprit.name) == (4, "test-instr-wrong-relu")


def test_bisect_correct_pipeline_has_no_culprit() -> None:
    bisect = Bisect(ModelRunner(INPUTS))
    result = PassManager("O1", PassContext(instruments=[bisect])).run(ir.from_text(MODEL))
    assert bisect.culprit is None and bisect.reason == ""
    assert result.report.stopped == ""
    assert ops(result.model) == ["Add", "Relu"]


# DumpIR ---------------------------------------------------------------

def test_dump_ir_writes_each_pass(tmp_path) -> None:
    out = tmp_path / "dump"
    PassManager("eliminate-identity,dce", PassContext(instruments=[DumpIR(out)])).run(ir.from_text(MODEL))
    assert sorted(p.name for p in out.iterdir()) == [
        "000_input.onnx", "000_input.txt",
        "001_eliminate-identity.onnx", "001_eliminate-identity.txt",
        "002_dce.onnx", "002_dce.txt",
    ]
    assert (out / "000_input.txt").read_text() == ir.to_text(ir.from_text(MODEL))
    for stem in ("000_input", "001_eliminate-identity", "002_dce"):
        assert ir.to_text(ir.load(out / f"{stem}.onnx")) == (out / f"{stem}.txt").read_text()
    assert "Identity" in (out / "000_input.txt").read_text()
    assert "Identity" not in (out / "001_eliminate-identity.txt").read_text()
    assert "Exp" in (out / "001_eliminate-identity.txt").read_text()
    assert "Exp" not in (out / "002_dce.txt").read_text()


def test_dump_ir_includes_auto_and_fixpoint_passes(tmp_path) -> None:
    unsorted = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
  y = Relu(a)
  a = Identity(x)
}"""
    spec = "topological-sort,fixpoint{max-iters=8}(eliminate-identity,eliminate-dropout,dce)"
    PassManager(spec, PassContext(instruments=[DumpIR(tmp_path)])).run(ir.from_text(unsorted))
    stems = sorted({p.stem for p in tmp_path.iterdir()})
    assert stems == ["000_input", "001_topological-sort", "002_eliminate-identity", "003_eliminate-dropout",
                     "004_dce", "005_eliminate-identity"]  # round 2 skips the passes clean since the last change


def test_dump_ir_shows_the_rolled_back_model(tmp_path) -> None:
    ctx = PassContext(instruments=[VerifyEach(ModelRunner(INPUTS)), DumpIR(tmp_path)])
    PassManager(WRONG, ctx).run(ir.from_text(MODEL))
    text = (tmp_path / "002_test-instr-wrong-relu.txt").read_text()
    assert "Relu" in text and "Neg" not in text


# ModelRunner ----------------------------------------------------------

def test_model_runner_keeps_its_inputs() -> None:
    runner = ModelRunner(seed=3)
    first = runner.run(ir.from_text(MODEL))
    inputs = runner.inputs
    second = runner.run(ir.from_text(MODEL))
    assert runner.inputs is inputs
    np.testing.assert_array_equal(first["y"], second["y"])


# passes: cases the golden files do not cover ----------------------------

def test_dce_keeps_initializers_that_are_graph_inputs() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x, float[4] w) => (float[4] y)
<float[4] w = {1, 2, 3, 4}, float[4] unused = {5, 6, 7, 8}>
{
  y = Relu(x)
}""")
    assert set(model.graph.initializers) == {"w", "unused"}
    result = PassManager("dce").run(model)
    graph = result.model.graph
    assert set(graph.initializers) == {"w"}
    assert [v.name for v in graph.inputs] == ["x", "w"]
    assert result.report.records[0].stats["initializers"] == 1
    onnx.checker.check_model(ir.to_proto(result.model))


def test_dce_keeps_initializer_that_is_a_graph_output() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[4] x) => (float[4] y, float[4] w)
<float[4] w = {1, 2, 3, 4}>
{
  y = Relu(x)
}""")
    result = PassManager("dce").run(model)
    assert set(result.model.graph.initializers) == {"w"}
    assert not result.report.records[0].modified


FUNCTION_IDENTITIES = """<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
g (float[4] x) => (float[4] y) { y = local.f(x) }
<domain: "local", opset_import: ["" : 17]>
f (a) => (b) {
  t = Identity(a)
  u = Relu(t)
  b = Identity(u)
}"""


def test_identity_removed_in_function_body() -> None:
    inputs = {"x": np.array([-1, 2, -3, 4], dtype=np.float32)}
    reference = ModelRunner(inputs).run(ir.from_text(FUNCTION_IDENTITIES))
    result = PassManager("eliminate-identity").run(ir.from_text(FUNCTION_IDENTITIES))
    assert result.report.records[0].stats == {"removed": 2, "kept": 0}
    (func,) = result.model.functions.values()
    assert [n.op_type for n in func] == ["Relu"]
    # the function's signature is kept: its output is still called b, its input a
    assert [v.name for v in func.inputs] == ["a"] and [v.name for v in func.outputs] == ["b"]
    assert func[0].inputs[0] is func.inputs[0] and func[0].outputs[0] is func.outputs[0]
    onnx.checker.check_model(ir.to_proto(result.model))
    np.testing.assert_array_equal(ModelRunner(inputs).run(result.model)["y"], reference["y"])


def test_identity_in_function_passing_input_through_is_kept() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
g (float[4] x) => (float[4] y) { y = local.f(x) }
<domain: "local", opset_import: ["" : 17]>
f (a) => (b) { b = Identity(a) }""")
    result = PassManager("eliminate-identity").run(model)
    (func,) = result.model.functions.values()
    assert [n.op_type for n in func] == ["Identity"]
    assert result.report.records[0].stats == {"removed": 0, "kept": 1}
    assert not result.report.records[0].modified


def _dropout_opset6(attr: str) -> ir.Model:
    return ir.from_text(f"""<ir_version: 3, opset_import: ["" : 6]>
g (float[2, 8] x) => (float[2, 8] y) {{
  a = Relu(x)
  y = Dropout{attr}(a)
}}""")


def test_opset6_model_builds_and_checks() -> None:
    proto = ir.to_proto(_dropout_opset6("<is_test: int = 1>"))
    assert proto.opset_import[0].version == 6
    onnx.checker.check_model(proto)


@pytest.mark.parametrize("attr, removed", [
    ("<is_test: int = 1>", True),   # inference mode: output == input
    ("<is_test: int = 0>", False),  # training mode
    ("", False),                    # is_test defaults to 0 (training) before opset 7
])
def test_dropout_opset6_is_test(attr: str, removed: bool) -> None:
    result = PassManager("eliminate-dropout").run(_dropout_opset6(attr))
    record = result.report.records[0]
    assert record.modified is removed
    assert record.stats == ({"removed": 1, "kept": 0} if removed else {"removed": 0, "kept": 1})
    graph = result.model.graph
    assert [n.op_type for n in graph] == (["Relu"] if removed else ["Relu", "Dropout"])
    assert [v.name for v in graph.outputs] == ["y"]


def test_dropout_opset7_to_11_always_inference() -> None:
    model = ir.from_text("""<ir_version: 5, opset_import: ["" : 10]>
g (float[2, 8] x) => (float[2, 8] y) {
  a = Relu(x)
  y = Dropout<ratio: float = 0.3>(a)
}""")
    result = PassManager("eliminate-dropout").run(model)
    assert [n.op_type for n in result.model.graph] == ["Relu"]


def test_dropout_constant_node_training_mode_true_is_kept() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) {
  t = Constant<value: tensor = bool {1}>()
  y = Dropout(x, , t)
}""")
    result = PassManager("eliminate-dropout").run(model)
    assert "Dropout" in [n.op_type for n in result.model.graph]
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 8] x) => (float[2, 8] y) {
  t = Constant<value: tensor = bool {0}>()
  a = Dropout(x, , t)
  y = Relu(a)
}""")
    result = PassManager("eliminate-dropout").run(model)
    assert "Dropout" not in [n.op_type for n in result.model.graph]


def test_topological_sort_of_a_subgraph() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
g (bool c, float[4] x) => (float[4] y) {
  y = If(c) <
    then_branch = t () => (float[4] ty) {
      ty = Add(q, p)
      q = Exp(p)
      p = Relu(x)
    },
    else_branch = e () => (float[4] ey) { ey = Sigmoid(x) }
  >
}""")
    branch = model.graph[0].attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["Add", "Exp", "Relu"]
    result = PassManager("topological-sort").run(model)
    record = result.report.records[0]
    assert record.modified and record.stats["moved"] > 0
    branch = result.model.graph[0].attributes["then_branch"].as_graph()
    assert [n.op_type for n in branch] == ["Relu", "Exp", "Add"]
    assert [v.name for v in branch.outputs] == ["ty"]
    onnx.checker.check_model(ir.to_proto(result.model))
    again = PassManager("topological-sort").run(result.model)
    assert not again.report.records[0].modified and again.report.records[0].stats["moved"] == 0


def test_topological_sort_of_a_function_body() -> None:
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
g (float[4] x) => (float[4] y) { y = local.f(x) }
<domain: "local", opset_import: ["" : 17]>
f (a) => (b) {
  b = Add(u, v)
  v = Exp(u)
  u = Relu(a)
}""")
    result = PassManager("topological-sort").run(model)
    (func,) = result.model.functions.values()
    assert [n.op_type for n in func] == ["Relu", "Exp", "Add"]
    assert result.report.records[0].modified

"""Tests of the ``inline`` pass beyond the golden cases: attribute references,
pass-through outputs, name uniqueness across scopes, opset mismatches,
constant-If edge cases and options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.errors import PassError
from graphopt.passmanager import PassContext, PassManager
from graphopt.verify import compare, run_model


def run(model: ir.Model, pipeline: str = "inline"):
    return PassManager(pipeline, PassContext()).run(model)


def stats(result, name: str = "inline") -> dict:
    return next(r.stats for r in result.report.records if r.name == name)


def all_names(model: ir.Model) -> list[str]:
    """Every value name defined in the main graph and its subgraphs, with repeats."""
    names: list[str] = []
    for graph in [model.graph, *model.graph.subgraphs()]:
        names += [v.name for v in graph.inputs] + list(graph.initializers)
        names += [v.name for n in graph for v in n.outputs if v.name]
    return names


def test_attribute_reference_without_value_or_default_is_dropped():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y) {
          y = local.Leaky(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Leaky <alpha> (u) => (v) {
          v = LeakyRelu <alpha: float = @alpha> (u)
        }""")
    proto = ir.to_proto(model)
    result = run(model)
    (node,) = list(result.model.graph)
    assert node.op_type == "LeakyRelu" and "alpha" not in node.attributes  # ONNX default 0.01 applies
    assert not result.model.functions
    assert compare(proto, ir.to_proto(result.model), rtol=1e-5, atol=1e-6).ok


def test_passthrough_and_repeated_outputs_keep_the_signature():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y, float[4] z, float[4] w) {
          y, z, w = local.Triple(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Triple (a) => (a, b, b) {
          b = Relu(a)
        }""")
    result = run(model, "inline,eliminate-identity")
    graph = result.model.graph
    assert [v.name for v in graph.inputs] == ["x"]
    assert [v.name for v in graph.outputs] == ["y", "z", "w"]
    assert len({id(v) for v in graph.outputs}) == 3
    onnx.checker.check_model(ir.to_proto(result.model), full_check=True)
    x = np.array([-1, 2, -3, 4], np.float32)
    out = run_model(ir.to_proto(result.model), {"x": x})
    np.testing.assert_array_equal(out["y"], x)
    np.testing.assert_array_equal(out["z"], np.maximum(x, 0))
    np.testing.assert_array_equal(out["w"], np.maximum(x, 0))


def test_inlined_names_do_not_clash_with_names_in_subgraphs():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (bool c, float[4] x) => (float[4] y, float[4] z) {
          y = local.F(x)
          z = If(c) <
            then_branch = tb () => (float[4] t) { t = Exp(x) },
            else_branch = eb () => (float[4] e) { t2 = Neg(x)
              e = Abs(t2) }
          >
        }
        <domain: "local", opset_import: ["" : 17]>
        F (a) => (b) {
          t = Sigmoid(a)
          t2 = Mul(a, t)
          b = Neg(t2)
        }""")
    proto = ir.to_proto(model)
    result = run(model)
    names = all_names(result.model)
    assert len(names) == len(set(names)), sorted(names)
    onnx.checker.check_model(ir.to_proto(result.model), full_check=True)
    assert compare(proto, ir.to_proto(result.model), rtol=1e-5, atol=1e-6).ok


def test_function_with_other_opset_is_kept():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y) {
          y = local.Old(x)
        }
        <domain: "local", opset_import: ["" : 13]>
        Old (a) => (b) {
          b = Relu(a)
        }""")
    result = run(model)
    assert stats(result) == {"inlined": 0, "ifs": 0, "functions": 0}
    assert not result.report.records[-1].modified
    assert list(result.model.functions) == [("local", "Old", "")]


def test_recursive_functions_raise_before_changing_anything():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y) {
          y = local.A(x)
        }
        <domain: "local", opset_import: ["" : 17, "local" : 1]>
        A (a) => (b) {
          b = local.B(a)
        }
        <domain: "local", opset_import: ["" : 17, "local" : 1]>
        B (a) => (b) {
          b = local.A(a)
        }""")
    before = ir.to_text(model)
    with pytest.raises(PassError, match="Cyclic"):
        run(model)
    assert ir.to_text(model) == before


def test_constant_if_in_function_body_and_in_loop_body():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y) {
          y = local.F(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        F (a) => (b) {
          k = Constant <value = bool {1}> ()
          b = If(k) <
            then_branch = tb () => (float[4] t) { t = Exp(a) },
            else_branch = eb () => (float[4] e) { e = Neg(a) }
          >
        }""")
    result = run(model, "inline{functions=false}")
    assert stats(result)["ifs"] == 1
    func = result.model.functions[("local", "F", "")]
    assert [n.op_type for n in func] == ["Constant", "Exp"]
    assert func.outputs[0].producer().op_type == "Exp"


def _if_model(cond: np.ndarray, cond_is_input: bool = False) -> onnx.ModelProto:
    then_g = helper.make_graph([helper.make_node("Exp", ["x"], ["t"])], "tb", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "eb", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])]
    if cond_is_input:
        inputs.append(helper.make_tensor_value_info("c", TensorProto.BOOL, list(cond.shape)))
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              initializer=[numpy_helper.from_array(cond, "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("cond, folds", [
    (np.array(True), True),
    (np.array([False]), True),
    (np.array([[True]]), True),
    (np.array([True, False]), False),   # more than one element: ONNX requires one
])
def test_constant_condition_shapes(cond, folds):
    proto = _if_model(cond)
    result = run(ir.from_proto(proto), "inline,dce")
    ops = [n.op_type for n in result.model.graph]
    assert (ops == (["Exp"] if cond.reshape(-1)[0] else ["Neg"])) if folds else ops == ["If"]
    assert [v.name for v in result.model.graph.outputs] == ["y"]
    if folds:
        assert compare(proto, ir.to_proto(result.model), rtol=1e-5, atol=1e-6).ok


def test_condition_initializer_that_is_a_graph_input_is_not_folded():
    result = run(ir.from_proto(_if_model(np.array(True), cond_is_input=True)))
    assert stats(result)["ifs"] == 0


def test_spliced_names_stay_unique_and_discarded_branch_reads_become_dead():
    """Sibling branches may reuse a name ('ta'); spliced into one graph they must not."""
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y, float[4] z)
        <bool flag = {1}>
        {
          only_else = Exp(x)
          y = If(flag) <
            then_branch = t1 () => (float[4] o1) { ta = Abs(x)
              o1 = Add(ta, x) },
            else_branch = e1 () => (float[4] o2) { o2 = Mul(only_else, x) }
          >
          z = If(flag) <
            then_branch = t2 () => (float[4] o3) { ta = Sigmoid(x)
              o3 = Add(ta, y) },
            else_branch = e2 () => (float[4] o4) { o4 = Sub(x, y) }
          >
        }""")
    proto = ir.to_proto(model)
    result = run(model, "inline,dce")
    assert stats(result) == {"inlined": 0, "ifs": 2, "functions": 0}
    names = all_names(result.model)
    assert len(names) == len(set(names)), sorted(names)
    assert sorted(n.op_type for n in result.model.graph) == ["Abs", "Add", "Add", "Sigmoid"]
    onnx.checker.check_model(ir.to_proto(result.model), full_check=True)
    assert compare(proto, ir.to_proto(result.model), rtol=1e-5, atol=1e-6).ok


def test_options_turn_parts_off():
    text = """<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y) <bool flag = {1}> {
          a = local.F(x)
          y = If(flag) <
            then_branch = tb () => (float[4] t) { t = Exp(a) },
            else_branch = eb () => (float[4] e) { e = Neg(a) }
          >
        }
        <domain: "local", opset_import: ["" : 17]>
        F (u) => (v) { v = Relu(u) }
        <domain: "local", opset_import: ["" : 17]>
        G (u) => (v) { v = Relu(u) }"""
    assert stats(run(ir.from_text(text), "inline{functions=false}")) == {"inlined": 0, "ifs": 1, "functions": 1}
    assert stats(run(ir.from_text(text), "inline{constant-if=false}")) == {"inlined": 1, "ifs": 0, "functions": 1}
    kept = run(ir.from_text(text), "inline{remove-unused=false,functions=false}")
    assert len(kept.model.functions) == 2


@pytest.mark.parametrize("name", ["bert_tiny_dynamo", "gpt2_tiny_dynamo", "llama_gqa_tiny_dynamo", "vit_tiny_dynamo"])
def test_corpus_numerics(name):
    path = Path(__file__).resolve().parents[2] / "models" / f"{name}.onnx"
    result = run(ir.load(path), "inline,dce")
    assert not result.model.functions or stats(result)["inlined"] == 0
    report = compare(str(path), ir.to_proto(result.model), rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()


def test_name_probe_replacement_matches_onnx_ir():
    """The patched-in name probe must exist in onnx-ir and give the same names."""
    from onnx_ir.passes.common import inliner as module

    from graphopt.ir.inliner import _UniqueNames

    assert callable(getattr(module, "_make_unique_name", None))
    theirs, ours = set(), set()
    fast = _UniqueNames()
    for name in ["t", "t", "u", "t", "t_2", "t"]:
        assert module._make_unique_name(name, [], theirs) == fast(name, [], ours)

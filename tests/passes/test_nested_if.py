"""Nested control flow: shapes and ranks flow into If branches (outer-scope
values included), so that the guards the shapes decide fold and ``inline``
splices their If; guards on run-time values stay. The golden cases are
``tests/golden/pipelines/O1/nested_if_rank_guards.golden`` and
``kept_nested_if_runtime.golden``; the streaming-VAD-like model is
``tools/nested_if_model.py`` (also timed by ``tools/bench_nested_if.py``)."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import ROOT
from graphopt import ir
from graphopt.passmanager import PassContext, PassManager
from graphopt.passes.folding.shape_dims import model_dims
from graphopt.passes.folding.shape_values import Propagator, SymValue, if_condition

sys.path.insert(0, str(ROOT / "tools"))
from nested_if_model import DECIDED_IFS, GUARD_IFS, build_vad_model, vad_inputs  # noqa: E402

HEAD = '<ir_version: 10, opset_import: ["" : 18]>\n'


def _ifs(model: ir.Model) -> int:
    return sum(n.op_type == "If" for g in ir.all_graphs(model) for n in g)


def _hist(graph: ir.Graph) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in graph).items()))


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def vad():
    """(original proto, O1 report) of the VAD-like model."""
    proto = build_vad_model(hidden=32)
    result = PassManager("O1", PassContext(target="ort")).run(ir.serde.deserialize_model(proto))
    return proto, result


_BRANCH = {"Add": 1, "Concat": 3, "ConstantOfShape": 1, "Conv": 5, "Equal": 2, "Gather": 5, "If": 2, "LSTM": 1,
           "MatMul": 1, "Mul": 2, "Pad": 1, "Relu": 5, "Shape": 3, "Sigmoid": 1, "Slice": 2, "Sqrt": 1, "Squeeze": 2,
           "Unsqueeze": 5}
"""A branch of the VAD-like model after O1: the two run-time guards (chunk
length, batch) are its two Ifs; its nine decided guards are gone (three of
them by the LSTM's rank: ``shape_worlds``; the decoder's squeeze stays as
a Squeeze)."""


def test_o1_resolves_every_shape_decided_if_of_the_vad_model(vad):
    proto, result = vad
    model = result.model
    assert _ifs(ir.serde.deserialize_model(proto)) == GUARD_IFS + 1
    assert _ifs(model) == GUARD_IFS + 1 - DECIDED_IFS == 5
    assert _hist(model.graph) == {"Equal": 1, "If": 1}  # the top-level If on sr stays: sr is a graph input
    top = next(n for n in model.graph if n.op_type == "If")
    for key in ("then_branch", "else_branch"):
        assert _hist(top.attributes[key].value) == _BRANCH
    # the guards that stay read a dynamic dim: Gather(Shape(x), -1) == chunk, Shape(state)[1] == Shape(x)[0]
    guards = [n for g in ir.subgraphs(model.graph) for n in g if n.op_type == "If"]
    assert sorted(n.inputs[0].producer().op_type for n in guards) == ["Equal"] * 4


def test_o1_resolves_the_guards_in_one_round_with_one_inference_per_round(vad):
    _, result = vad
    records = result.report.records
    inline = [r.stats["ifs"] for r in records if r.name == "inline" and r.stats["ifs"]]
    assert inline == [DECIDED_IFS]  # every guard after the first fold-shapes: the chained ones too
    fold_shapes = [r.stats["inferred"] for r in records if r.name == "fold-shapes"]
    assert all(n <= 1 for n in fold_shapes)


@pytest.mark.parametrize("sr", [16000, 8000])
def test_the_vad_model_keeps_its_outputs_at_both_sample_rates(vad, sr):
    proto, result = vad
    feeds = vad_inputs(sr, hidden=32)
    want = _run(proto, feeds)
    got = _run(ir.serde.serialize_model(result.model), feeds)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_guard_on_a_run_time_value_stays():
    text = HEAD + """g (float[?, 8] x, int64 n) => (float[?, 8] y) <int64 one = {1}, float two = {2.0}> {
      s = Shape(x)
      d = Gather(s, one)
      c = Greater(d, n)
      y = If(c) <then_branch = t () => (float[?, 8] a) { a = Mul(x, two) },
                 else_branch = e () => (float[?, 8] b) { b = Neg(x) }>
    }"""
    model = PassManager("O1", PassContext()).run(ir.from_text(text)).model
    assert _hist(model.graph) == {"Greater": 1, "If": 1}  # Shape(x)[1] folded to 8; Greater(8, n) is run-time


def test_guard_outputs_take_the_taken_branchs_rank():
    # x: [?, ?]; If(Equal(Size(Shape(x)), 1)) unsqueezes: ONNX inference
    # merges [1, ?, ?] with [?, ?] into no rank; the rules give the taken
    # (else) branch's [?, ?], so Size(Shape(x1)) is 2 in the same walk.
    text = HEAD + """g (float[?, ?] x) => (int64 r) <int64 one = {1}, int64[1] ax = {0}> {
      s0 = Shape(x)
      r0 = Size(s0)
      c = Equal(r0, one)
      x1 = If(c) <then_branch = t () => (float[1, ?, ?] a) { a = Unsqueeze(x, ax) },
                  else_branch = e () => (float[?, ?] b) { b = Identity(x) }>
      s1 = Shape(x1)
      r = Size(s1)
    }"""
    model = ir.from_text(text)
    ir.infer_shapes(model)
    x1 = next(n for n in model.graph if n.op_type == "If").outputs[0]
    assert x1.shape is None  # inference cannot pick a branch
    run = PassManager("fold-shapes", PassContext()).run(model)
    out = model.graph.outputs[0]
    assert ir.const_array(out).tolist() == 2
    assert run.report.records[-1].stats["inferred"] == 1


def test_if_rule_merges_both_branches_when_the_condition_is_unknown():
    text = HEAD + """g (float[?, 4] x, bool c) => (float[?, 4] y) <int64[2] sh = {-1, 4}> {
      y = If(c) <then_branch = t () => (float[?, 4] a) { a = Reshape(x, sh) },
                 else_branch = e () => (float[?, 4] b) { b = Relu(x) }>
    }"""
    model = ir.from_text(text)
    for graph in ir.all_graphs(model):
        for node in graph:
            for v in node.outputs:
                v.shape = None
    _, native = model_dims(model)
    assert native(model.graph.outputs[0]) == (None, 4)


@pytest.mark.parametrize("op,a,b,want", [
    ("Greater", (3,), (2,), (True,)),
    ("Less", (3,), (2,), (False,)),
    ("GreaterOrEqual", (2,), (2,), (True,)),
    ("LessOrEqual", ("batch",), (2,), (None,)),  # a symbolic dim may be any size
])
def test_propagator_decides_order_comparisons_of_ints_only(op, a, b, want):
    prop = Propagator(18)
    x, y = ir.Value(name="a"), ir.Value(name="b")
    prop.values[x], prop.values[y] = SymValue(a, scalar=True), SymValue(b, scalar=True)
    node = ir.Node("", op, [x, y], num_outputs=1)
    assert prop.visit(node) == SymValue(want, scalar=True, boolean=True)


def test_propagator_not_and_or_with_an_unknown_side():
    prop = Propagator(18)
    t, u = ir.Value(name="t"), ir.Value(name="u")
    prop.values[t] = SymValue((True,), scalar=True, boolean=True)
    prop.values[u] = SymValue((None,), scalar=True, boolean=True)
    assert prop.visit(ir.Node("", "Not", [t], num_outputs=1)).dims == (False,)
    assert prop.visit(ir.Node("", "Or", [t, u], num_outputs=1)).dims == (True,)  # True absorbs
    assert prop.visit(ir.Node("", "And", [t, u], num_outputs=1)).dims == (None,)
    assert prop.visit(ir.Node("", "Not", [u], num_outputs=1)).dims == (None,)


def test_if_condition_reads_constants_and_decided_shape_values():
    prop = Propagator(18)
    known, unknown = ir.Value(name="k"), ir.Value(name="u")
    prop.values[known] = SymValue((False,), scalar=True, boolean=True)
    prop.values[unknown] = SymValue((None,), scalar=True, boolean=True)
    const = ir.Value(name="c", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]),
                     const_value=ir.Tensor(np.array(True)))
    graph = ir.Graph([], [], nodes=[], initializers=[const])
    assert graph is not None
    assert if_condition(ir.Node("", "If", [known], num_outputs=1), prop.get) is False
    assert if_condition(ir.Node("", "If", [unknown], num_outputs=1), prop.get) is None
    assert if_condition(ir.Node("", "If", [const], num_outputs=1), prop.get) is True


def test_pad_rule_keeps_the_rank_and_adds_the_pads():
    text = HEAD + """g (float[?, 10] x) => (float[?, ?] y) <int64[4] p = {0, 1, 0, 3}> {
      y = Pad <mode = "reflect"> (x, p)
    }"""
    model = ir.from_text(text)
    y = model.graph.outputs[0]
    y.shape = None
    _, native = model_dims(model)
    assert native(y) == (None, 14)


def test_shape_inference_reaches_branches_holding_large_initializers():
    # Initializers over 1 KiB are handed to inference as typed inputs of the
    # main graph: an If branch given inputs was refused (no shapes inside).
    text = HEAD + """g (float[2, 300] x, bool c) => (float[2, 300] y) {
      y = If(c) <then_branch = t () => (float[2, 300] a) <float[300] w = {%s}> { m = Mul(x, w)
                   a = Relu(m) },
                 else_branch = e () => (float[2, 300] b) { b = Neg(x) }>
    }""" % ", ".join(["1.0"] * 300)
    model = ir.from_text(text)
    ir.infer_shapes(model)
    then = next(iter(model.graph)).attributes["then_branch"].value
    assert str(next(iter(then)).outputs[0].shape) == "[2,300]"  # Mul: not a graph output, inferred


def test_fold_constants_folds_not_of_a_bool_scalar_in_a_branch():
    # numpy's logical_not of a 0-d array is a numpy scalar, not an array
    text = HEAD + """g (float[4] x, bool c) => (float[4] y) <bool t = {1}> {
      y = If(c) <then_branch = tb () => (float[4] a) { n = Not(t)
                   a = If(n) <then_branch = t2 () => (float[4] a2) { a2 = Neg(x) },
                              else_branch = e2 () => (float[4] b2) { b2 = Relu(x) }> },
                 else_branch = e () => (float[4] b) { b = Abs(x) }>
    }"""
    model = PassManager("fold-constants,inline,dce", PassContext()).run(ir.from_text(text)).model
    then = next(iter(model.graph)).attributes["then_branch"].value
    assert _hist(then) == {"Relu": 1}


@pytest.mark.parametrize("guard,kept", [
    # Equal of the 1-D Shape(Shape(x)) with a [1] constant, squeezed to the scalar condition
    ("ss = Shape(s)\n      e = Equal(ss, k)\n      c = Squeeze(e, ax)", "Mul"),
    # TorchScript's aten::Bool of the rank: Cast to bool (non-zero is true)
    ("r = Size(s)\n      c = Cast <to = 9> (r)", "Mul"),
    # And of two decided comparisons, one false
    ("r = Size(s)\n      g = Greater(r, one)\n      l = Less(r, one)\n      c = And(g, l)", "Neg"),
])
def test_guard_forms_of_exporters_fold(guard, kept):
    text = HEAD + """g (float[?, ?] x) => (float[?, ?] y)
        <int64[1] k = {2}, int64[1] ax = {0}, int64 one = {1}, float two = {2.0}> {
      s = Shape(x)
      %s
      y = If(c) <then_branch = t () => (float[?, ?] a) { a = Mul(x, two) },
                 else_branch = e () => (float[?, ?] b) { b = Neg(x) }>
    }""" % guard
    model = PassManager("O1", PassContext()).run(ir.from_text(text)).model
    assert _hist(model.graph) == {kept: 1}


def _decoder(tail: str) -> onnx.ModelProto:
    """Silero VAD's decoder guards: ``d = If(Shape(enc)[-1] == 1)`` squeezes
    the time axis (rank 2) or not (rank 3), at run time; then the rank
    guard ``If(Not(Equal(Size(Shape(d)), 2)))`` unsqueezes, and ``tail``
    reads the result: ``lstm`` (X must be rank 3: only the rank-2 world
    runs) or ``relu`` (any rank runs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    i64 = lambda *v: numpy_helper.from_array(np.array(v, np.int64))  # noqa: E731
    branch = lambda name, nodes, out: helper.make_graph(  # noqa: E731
        nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Shape", ["enc"], ["s"]),
        helper.make_node("Constant", [], ["m1"], value=i64(-1)),
        helper.make_node("Gather", ["s", "m1"], ["t"]),
        helper.make_node("Constant", [], ["one"], value=i64(1)),
        helper.make_node("Equal", ["t", "one"], ["c"]),
        helper.make_node("If", ["c"], ["d"],
                         then_branch=branch("sq", [helper.make_node("Squeeze", ["enc", "m1"], ["sq_out"])], "sq_out"),
                         else_branch=branch("id", [helper.make_node("Identity", ["enc"], ["id_out"])], "id_out")),
        helper.make_node("Shape", ["d"], ["sd"]),
        helper.make_node("Size", ["sd"], ["r"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("Equal", ["r", "two"], ["e"]),
        helper.make_node("Not", ["e"], ["n"]),
        helper.make_node("Constant", [], ["zero"], value=i64(0)),
        helper.make_node("If", ["n"], ["x"],
                         then_branch=branch("un", [helper.make_node("Unsqueeze", ["d", "zero"], ["un_out"])], "un_out"),
                         else_branch=branch("keep", [helper.make_node("Identity", ["d"], ["keep_out"])], "keep_out")),
        helper.make_node("Unsqueeze", ["x", "zero"], ["x3"]),
    ]
    inits = []
    if tail == "lstm":
        inits = [numpy_helper.from_array(rng.standard_normal((1, 8, 8)).astype(np.float32), "W"),
                 numpy_helper.from_array(rng.standard_normal((1, 8, 2)).astype(np.float32), "R")]
        nodes.append(helper.make_node("LSTM", ["x3", "W", "R"], ["", "y"], hidden_size=2))
    else:
        nodes.append(helper.make_node("Relu", ["x3"], ["y"]))
    graph = helper.make_graph(nodes, "decoder",
                              [helper.make_tensor_value_info("enc", TensorProto.FLOAT, [None, 8, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_a_rank_guard_behind_a_run_time_if_folds_when_only_one_branch_can_run():
    proto = _decoder("lstm")
    model = PassManager("O1", PassContext()).run(ir.serde.deserialize_model(proto)).model
    # with the rank-3 output of the squeeze If the LSTM's X would be rank 5:
    # every run of the original squeezes, and the rank guard keeps its input
    assert _hist(model.graph) == {"LSTM": 1, "Squeeze": 1, "Unsqueeze": 1}
    feeds = {"enc": np.random.default_rng(1).standard_normal((3, 8, 1)).astype(np.float32)}
    np.testing.assert_allclose(_run(ir.serde.serialize_model(model), feeds)[0], _run(proto, feeds)[0], rtol=1e-6)


def test_a_rank_guard_behind_a_run_time_if_stays_when_both_branches_can_run():
    for proto, spec in ((_decoder("relu"), "O1"), (_decoder("lstm"), "fold-shapes{valid-runs=false},inline,dce")):
        model = PassManager(spec, PassContext()).run(ir.serde.deserialize_model(proto)).model
        assert _hist(model.graph)["If"] == 2, spec


def test_pin_if_outputs_is_empty_without_subgraphs():
    from graphopt.passes.folding.shape_worlds import pin_if_outputs

    model = ir.from_text(HEAD + "g (float[?, 4] x) => (float[?, 4] y) { y = Relu(x) }")
    assert pin_if_outputs(model, ir.all_graphs(model)) == {}


def test_a_failing_op_whose_result_is_unused_decides_nothing():
    # the LSTM's outputs reach no graph output: a runtime may skip it, so
    # the rank-3 world is not ruled out
    from onnx import helper

    from graphopt.passes.folding.shape_worlds import pin_if_outputs

    proto = _decoder("lstm")
    proto.graph.node.append(helper.make_node("Relu", ["x3"], ["z"]))
    proto.graph.output[0].name = "z"
    model = ir.serde.deserialize_model(proto)
    ir.infer_shapes(model)
    assert pin_if_outputs(model, ir.all_graphs(model)) == {}
    live = ir.serde.deserialize_model(_decoder("lstm"))  # the LSTM's output is the graph's
    ir.infer_shapes(live)
    taken: dict = {}
    pins = pin_if_outputs(live, ir.all_graphs(live), taken)
    assert [(v.name, dims) for v, dims in pins.items()] == [("d", (None, 8))]  # the squeezed branch's
    assert [(n.outputs[0].name, branch) for n, branch in taken.items()] == [("d", True)]

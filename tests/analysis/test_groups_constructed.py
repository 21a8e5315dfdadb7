"""Coupled groups on constructed graphs: each rule's positive case with an
exactness check, the refusals with their reasons, bad plans, and a
hypothesis property over random MLP and conv chains."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.analysis.groups import apply_pruning, describe, find_groups
from graphopt.errors import InputError
from tests.analysis.groups_helpers import constant, run, set_constant, signature, zero_removed_inputs

F = TensorProto.FLOAT


def model(nodes, inits, inputs, outputs, opset: int = 17) -> ir.Model:  # noqa: ANN001
    """An IR model from onnx.helper pieces; ``inits`` maps name -> array."""
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def seq_input(d: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", F, ["batch", "seq", d])


def out(name: str = "y", dims=("batch", "seq", None)) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, F, list(dims))


CONV_OUT = ("n", None, None, None)


def feed_seq(d: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 5, d)).astype(np.float32)}


def mlp(rng: np.random.Generator, act: str = "Relu", hidden_output: bool = False) -> ir.Model:
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"])]
    if act == "GeluErf":  # BERT TorchScript's decomposed GELU
        nodes += [helper.make_node("Div", ["h1", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["h1", "e1"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["h2"])]
    else:
        nodes.append(helper.make_node(act, ["h1"], ["h2"]))
    nodes += [helper.make_node("MatMul", ["h2", "w2"], ["y0"]), helper.make_node("Add", ["y0", "b2"], ["y"])]
    inits = {"w1": rand(rng, 8, 16), "b1": rand(rng, 16), "w2": rand(rng, 16, 8), "b2": rand(rng, 8),
             "sqrt2": np.float32(1.4142135), "one": np.float32(1.0), "half": np.float32(0.5)}
    outputs = [out()] + ([out("h2")] if hidden_output else [])
    return model(nodes, inits, [seq_input(8)], outputs)


def exact_after(m: ir.Model, keep: dict, feed: dict, zero_inputs: bool = True) -> ir.Model:
    """Prune ``m`` by ``keep`` and check outputs within 1e-5 of the unpruned model (after zeroing)."""
    analysis = find_groups(m)
    if zero_inputs:
        zero_removed_inputs(m, analysis, keep)
    before = ir.to_proto(m)
    expected = run(before, feed)
    apply_pruning(m, keep, analysis)
    after = ir.to_proto(m)
    onnx.checker.check_model(after, full_check=True)
    assert signature(after) == signature(before)
    actual = run(after, feed)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
    return m


@pytest.mark.parametrize("act", ["Relu", "GeluErf", "Sigmoid", "Tanh"])
def test_mlp_group_and_exact_prune_of_silent_neurons(act: str) -> None:
    rng = np.random.default_rng(0)
    m = mlp(rng, act)
    analysis = find_groups(m)
    assert describe(analysis, slices=True).splitlines()[:7] == [
        "group layer0.ffn kind=ffn size=16 weights/unit=17",
        "  producers: " + m.graph.node(0).name,
        "  consumers: " + [n.name for n in m.graph if n.op_type == "MatMul"][1],
        "  consumer_input: h2",
        "  slice out w1 axis=1 start=0 unit=1",
        "  slice param b1 axis=0 start=0 unit=1",
        "  slice in w2 axis=0 start=0 unit=1",
    ]
    # the brief's construction: zero the up-projection columns of the removed neurons (act(0) == 0 for Relu,
    # GELU, Tanh; Sigmoid(0) = 0.5 is not silent, so there the consumer rows are zeroed instead)
    removed = [1, 4, 5, 11]
    keep = {"layer0.ffn": [u for u in range(16) if u not in removed]}
    if act != "Sigmoid":
        w1, b1 = constant(m, "w1"), constant(m, "b1")
        w, b = np.array(ir.const_array(w1)), np.array(ir.const_array(b1))
        w[:, removed], b[removed] = 0, 0
        set_constant(w1, w)
        set_constant(b1, b)
    exact_after(m, keep, feed_seq(8), zero_inputs=act == "Sigmoid")
    assert tuple(constant(m, "w1").const_value.shape) == (8, 12)
    assert tuple(constant(m, "w2").const_value.shape) == (12, 8)


def test_swiglu_gate_and_up_prune_together() -> None:
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["g"]), helper.make_node("MatMul", ["x", "wu"], ["u"]),
             helper.make_node("Sigmoid", ["g"], ["sg"]), helper.make_node("Mul", ["g", "sg"], ["silu"]),
             helper.make_node("Mul", ["silu", "u"], ["h"]), helper.make_node("MatMul", ["h", "wd"], ["y"])]
    m = model(nodes, {"wg": rand(rng, 8, 16), "wu": rand(rng, 8, 16), "wd": rand(rng, 16, 8)},
              [seq_input(8)], [out()])
    analysis = find_groups(m)
    (g,) = [g for g in analysis.groups if g.kind == "ffn"]
    assert len(g.producers) == 2 and g.size == 16 and g.weights_per_unit == 24
    # zero the up columns: SiLU(gate) * 0 == 0
    wu = constant(m, "wu")
    w = np.array(ir.const_array(wu))
    w[:, [0, 7]] = 0
    set_constant(wu, w)
    exact_after(m, {g.name: [u for u in range(16) if u not in (0, 7)]}, feed_seq(8), zero_inputs=False)
    assert tuple(constant(m, "wg").const_value.shape) == (8, 14)


def attention(rng: np.random.Generator, literal_heads: bool) -> ir.Model:
    """BERT-style attention, 2 heads of 4: Reshape targets state H (edited) or -1."""
    h = 2 if literal_heads else -1
    nodes = []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"]),
                  helper.make_node("Add", [f"{p}0", f"b{p}"], [f"{p}1"]),
                  helper.make_node("Reshape", [f"{p}1", "split_shape"], [f"{p}2"])]
    nodes += [helper.make_node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["q3", "k3"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["s1"]),
              helper.make_node("Softmax", ["s1"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v3"], ["c"]),
              helper.make_node("Transpose", ["c"], ["c1"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["c1", "merge_shape"], ["c2"]),
              helper.make_node("MatMul", ["c2", "wo"], ["y"])]
    inits = {f"w{p}": rand(rng, 8, 8) for p in "qkvo"}
    inits.update({f"b{p}": rand(rng, 8) for p in "qkv"})
    inits.update({"split_shape": np.array([0, 0, h, 4], np.int64),
                  "merge_shape": np.array([0, 0, 8 if literal_heads else -1], np.int64), "scale": np.float32(0.5)})
    return model(nodes, inits, [seq_input(8)], [out()])


@pytest.mark.parametrize("literal_heads", [True, False])
def test_heads_separate_qkv_zeroed_v_is_exact(literal_heads: bool) -> None:
    m = attention(np.random.default_rng(2), literal_heads)
    analysis = find_groups(m)
    (g,) = [g for g in analysis.groups if g.kind == "heads"]
    assert g.size == 2 and g.weights_per_unit == 4 * 8 * 4 + 4 * 3
    edits = {(e.target, e.index, e.per_unit) for e in g.edits}
    assert edits == ({("split_shape", 2, 1), ("merge_shape", 2, 4)} if literal_heads else set())
    # zero V's columns and bias of head 1: its context is zero, the output projection adds nothing
    for name, index in (("wv", (slice(None), slice(4, 8))), ("bv", slice(4, 8))):
        value = constant(m, name)
        array = np.array(ir.const_array(value))
        array[index] = 0
        set_constant(value, array)
    exact_after(m, {g.name: [0]}, feed_seq(8), zero_inputs=False)
    assert tuple(constant(m, "wq").const_value.shape) == (8, 4)
    assert tuple(constant(m, "wo").const_value.shape) == (4, 8)
    if literal_heads:
        assert ir.const_array(constant(m, "split_shape")).tolist() == [0, 0, 1, 4]
        assert ir.const_array(constant(m, "merge_shape")).tolist() == [0, 0, 4]


def conv_chain(rng: np.random.Generator) -> ir.Model:
    nodes = [helper.make_node("Conv", ["x", "w1", "c1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    inits = {"w1": rand(rng, 6, 3, 3, 3), "c1": rand(rng, 6), "s": np.ones(6, np.float32),
             "bb": np.zeros(6, np.float32), "mu": np.zeros(6, np.float32), "var": np.ones(6, np.float32),
             "w2": rand(rng, 4, 6, 1, 1)}
    return model(nodes, inits, [helper.make_tensor_value_info("x", F, ["n", 3, 8, 8])], [out(dims=CONV_OUT)])


def test_conv_bn_relu_channels_with_dead_channels_are_exact() -> None:
    m = conv_chain(np.random.default_rng(3))
    analysis = find_groups(m)
    (g,) = analysis.groups
    assert (g.kind, g.size, g.name) == ("channels", 6, f"conv:{m.graph.node(0).name}")
    assert [(s.tensor, s.axis, s.role) for s in g.slices] == [
        ("w1", 0, "out"), ("c1", 0, "param"), ("s", 0, "param"), ("bb", 0, "param"), ("mu", 0, "param"),
        ("var", 0, "param"), ("w2", 1, "in")]
    # zero weight and negative bias: BN gives about -1, Relu 0
    w1, c1 = constant(m, "w1"), constant(m, "c1")
    w, c = np.array(ir.const_array(w1)), np.array(ir.const_array(c1))
    w[[2, 5]], c[[2, 5]] = 0, -1
    set_constant(w1, w)
    set_constant(c1, c)
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    exact_after(m, {g.name: [0, 1, 3, 4]}, feed, zero_inputs=False)
    assert tuple(constant(m, "var").const_value.shape) == (4,)


def test_depthwise_residual_and_concat_couple_branches() -> None:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wd"], ["d"], group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "ra"], ["res"]),                # residual: one group
             helper.make_node("Conv", ["x", "w3"], ["b"]),
             helper.make_node("Concat", ["res", "b"], ["cat"], axis=1),    # two groups, two sections
             helper.make_node("Conv", ["cat", "w4"], ["y"])]
    inits = {"w1": rand(rng, 8, 3, 1, 1), "wd": rand(rng, 8, 1, 3, 3), "w3": rand(rng, 4, 3, 1, 1),
             "w4": rand(rng, 5, 12, 1, 1)}
    m = model(nodes, inits, [helper.make_tensor_value_info("x", F, ["n", 3, 6, 6])], [out(dims=CONV_OUT)])
    analysis = find_groups(m, ("channels",))
    first, second = analysis.groups
    assert (first.size, second.size) == (8, 4)
    assert [e.attribute for e in first.edits] == ["group"]
    assert {(s.tensor, s.start) for s in first.slices if s.role == "in"} == {("w4", 0)}
    assert {(s.tensor, s.start) for s in second.slices if s.role == "in"} == {("w4", 8)}
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)}
    exact_after(m, {first.name: [0, 2, 3, 7], second.name: [1, 3]}, feed)
    assert tuple(constant(m, "w4").const_value.shape) == (5, 6, 1, 1)
    dw = next(n for n in m.graph if n.attributes.get("group") is not None)
    assert dw.attributes["group"].value == 4


def test_residual_layer_branch_removed_exactly_when_its_output_is_zero() -> None:
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["f"]), helper.make_node("Add", ["f", "x"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "beta"], ["y"], axis=-1)]
    inits = {"w1": rand(rng, 8, 16), "w2": np.zeros((16, 8), np.float32), "g": rand(rng, 8), "beta": rand(rng, 8)}
    m = model(nodes, inits, [seq_input(8)], [out()])
    analysis = find_groups(m)
    layer = next(g for g in analysis.groups if g.kind == "layer")
    assert layer.residual_add == m.graph.node(3).name and layer.weights_per_unit == 256
    exact_after(m, {layer.name: []}, feed_seq(8), zero_inputs=False)
    assert [n.op_type for n in m.graph] == ["LayerNormalization"]
    assert set(m.graph.initializers) == {"g", "beta"}


def test_refusals_name_the_reason() -> None:
    rng = np.random.default_rng(6)
    analysis = find_groups(mlp(rng, hidden_output=True))
    assert not [g for g in analysis.groups if g.kind == "ffn"]
    assert any("h2 is a graph output" in r.reason for r in analysis.refused)
    # a down projection whose weight is a graph input
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "wdyn"], ["y"])]
    m = model(nodes, {"w1": rand(rng, 8, 16)},
              [seq_input(8), helper.make_tensor_value_info("wdyn", F, [16, 8])], [out()])
    (refusal,) = find_groups(m).refused
    assert refusal.reason == "the units reach graph input wdyn"
    # an op without a channel rule
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("CumSum", ["h", "ax"], ["c"]),
             helper.make_node("MatMul", ["c", "w2"], ["y"])]
    m = model(nodes, {"w1": rand(rng, 8, 16), "w2": rand(rng, 16, 8), "ax": np.array(1, np.int64)},
              [seq_input(8)], [out()])
    assert find_groups(m).refused[0].reason.startswith("no channel rule for CumSum")


@pytest.mark.parametrize(("keep", "message"), [
    ({"nope": [0]}, "unknown group"),
    ({"layer0.ffn": [0, 16]}, "must lie in [0, 16)"),
    ({"layer0.ffn": [3, 1]}, "sorted, unique"),
    ({"layer0.ffn": [1, 1]}, "sorted, unique"),
    ({"layer0.ffn": []}, "keep at least one"),
    ({"layer0.ffn": ["a"]}, "list of unit indices"),
])
def test_bad_plans_raise_before_any_change(keep: dict, message: str) -> None:
    m = mlp(np.random.default_rng(7))
    text = ir.to_text(m)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace(")", r"\)")):
        apply_pruning(m, {"layer0.ffn": list(range(16)), **keep} if "nope" in keep else keep)
    assert ir.to_text(m) == text


def test_bad_plan_in_a_later_group_changes_nothing() -> None:
    m = attention(np.random.default_rng(8), literal_heads=True)
    text = ir.to_text(m)
    analysis = find_groups(m)
    heads = next(g for g in analysis.groups if g.kind == "heads")
    with pytest.raises(InputError):
        apply_pruning(m, {heads.name: [0], "no-such-group": [0]}, analysis)
    assert ir.to_text(m) == text


# -- property: random MLP and conv chains -----------------------------------------------------------------------
ACTS = ("Relu", "Tanh", "Sigmoid", "Identity")


def random_chain(data: st.DataObject, conv: bool) -> tuple[ir.Model, dict[str, np.ndarray]]:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    widths = data.draw(st.lists(st.integers(2, 6), min_size=2, max_size=4))
    d_in = 3
    nodes, inits, prev = [], {}, "x"
    for i, w in enumerate(widths):
        if conv:
            inits[f"w{i}"] = rand(rng, w, d_in, 1, 1)
            inits[f"b{i}"] = rand(rng, w)
            nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"z{i}"]))
        else:
            inits[f"w{i}"] = rand(rng, d_in, w)
            inits[f"b{i}"] = rand(rng, w)
            nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"])]
        act = data.draw(st.sampled_from(ACTS))
        nodes.append(helper.make_node(act, [f"z{i}"], [f"a{i}"]))
        prev = f"a{i}"
        if w == d_in and data.draw(st.booleans()):  # a residual Add couples input and output channels
            nodes.append(helper.make_node("Add", [prev, nodes[-3 if not conv else -2].input[0]], [f"r{i}"]))
            prev = f"r{i}"
        d_in = w
    if conv:
        inits["wout"] = rand(rng, 2, d_in, 1, 1)
        nodes.append(helper.make_node("Conv", [prev, "wout"], ["y"]))
        x = helper.make_tensor_value_info("x", F, ["n", 3, 4, 4])
        feed = {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    else:
        inits["wout"] = rand(rng, d_in, 2)
        nodes.append(helper.make_node("MatMul", [prev, "wout"], ["y"]))
        x = seq_input(3)
        feed = feed_seq(3)
    return model(nodes, inits, [x], [out(dims=CONV_OUT if conv else ("batch", "seq", None))]), feed


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), conv=st.booleans())
def test_random_chains_prune_exactly(data: st.DataObject, conv: bool) -> None:
    m, feed = random_chain(data, conv)
    analysis = find_groups(m, ("ffn", "channels"))
    # every hidden layer is a group, except those coupled to the input by a residual
    for g in analysis.groups:
        assert g.producers and g.consumers
    keep = {g.name: sorted(data.draw(st.sets(st.integers(0, g.size - 1), min_size=1))) for g in analysis.groups}
    exact_after(m, keep, feed)


def test_multi_head_attention_heads() -> None:
    """com.microsoft.MultiHeadAttention fed by three projections (2 heads of 4)."""
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", f"w{p}"], [p]) for p in "qkv"]
    nodes += [helper.make_node("MultiHeadAttention", ["q", "k", "v", "bqkv"], ["c"], domain="com.microsoft",
                               num_heads=2),
              helper.make_node("MatMul", ["c", "wo"], ["y"])]
    inits = {f"w{p}": rand(rng, 8, 8) for p in "qkvo"}
    inits["bqkv"] = rand(rng, 24)
    graph = helper.make_graph(nodes, "g", [seq_input(8)], [out()],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    m = ir.from_proto(proto)
    analysis = find_groups(m)
    (g,) = [g for g in analysis.groups if g.kind == "heads"]
    assert g.size == 2 and [e.attribute for e in g.edits] == ["num_heads"]
    assert sorted(s.start for s in g.slices if s.tensor == "bqkv") == [0, 8, 16]
    zero_removed_inputs(m, analysis, {g.name: [1]})
    feed = feed_seq(8)
    expected = run(ir.to_proto(m), feed)
    apply_pruning(m, {g.name: [1]}, analysis)
    np.testing.assert_allclose(run(ir.to_proto(m), feed)["y"], expected["y"], rtol=1e-5, atol=1e-5)
    mha = next(n for n in m.graph if n.op_type == "MultiHeadAttention")
    assert mha.attributes["num_heads"].value == 1 and tuple(constant(m, "bqkv").const_value.shape) == (12,)

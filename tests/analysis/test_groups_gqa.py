"""Grouped-query attention (LLaMA's ``repeat_kv``): a KV head pruned with its
whole query group, on the committed tiny LLaMA (hidden 64, 4 query heads, 2
KV heads, head_dim 16, so n_rep 2): exact weight shapes, shape constants,
and outputs equal to the unpruned model's whose removed group is silenced."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.analysis.groups import apply_pruning, find_groups
from graphopt.analysis.groups.dims import Dims
from graphopt.errors import InputError
from tests.analysis.groups_helpers import feed_for, groups_of, load, run, signature, zero_removed_inputs

HD, NREP = 16, 2


def _prune_layer0_group0(name: str, pipeline: str) -> tuple[ir.Model, ir.Model, object]:
    """Prune KV head 0 (and query heads 0, 1) of layer 0; return (before, after, group)."""
    before = load(name, pipeline)
    model = load(name, pipeline)
    analysis = groups_of(model)
    g = analysis.group("layer0.attn.kv-heads")
    assert (g.kind, g.size) == ("heads", 2)
    apply_pruning(model, {g.name: [1]}, analysis)
    return before, model, g


def _const(node: ir.Node, index: int) -> np.ndarray:
    return np.asarray(ir.const_array(node.inputs[index]))


def _exact(name: str, pipeline: str, g_name: str, keep: list[int]) -> None:
    """Silence the removed units (zero their o_proj rows), prune: outputs equal."""
    model = load(name, pipeline)
    analysis = groups_of(model)
    zero_removed_inputs(model, analysis, {g_name: keep})
    before = ir.to_proto(model)
    feed = feed_for(before)
    expected = run(before, feed)
    apply_pruning(model, {g_name: keep}, analysis)
    after = ir.to_proto(model)
    if pipeline != "O2":  # O2's contrib ops are unknown to onnx.checker
        onnx.checker.check_model(after, full_check=True)
    assert signature(after) == signature(before)
    for key, value in run(after, feed).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_kv_head_packed_qkv_ts_o1() -> None:
    """TorchScript after O1 (packed Q/K/V MatMul + Split): exact shapes and constants."""
    before, model, g = _prune_layer0_group0("llama_gqa_tiny_ts", "O1")
    nodes = {n.name: n for n in model.graph}
    old = {n.name: n for n in before.graph}
    qkv = nodes[g.producers[0]]
    w_old = _const(old[g.producers[0]], 1)
    w = _const(qkv, 1)
    assert w_old.shape == (64, 128) and w.shape == (64, 64)
    kept = np.r_[32:64, 64 + HD:64 + 2 * HD, 96 + HD:96 + 2 * HD]  # Q heads 2, 3; K head 1; V head 1
    np.testing.assert_array_equal(w, w_old[:, kept])
    o_proj = nodes[g.consumers[0]]
    assert _const(o_proj, 1).shape == (32, 64)
    np.testing.assert_array_equal(_const(o_proj, 1), _const(old[g.consumers[0]], 1)[32:64])
    split = next(u.node for u in qkv.outputs[0].uses())
    assert split.op_type == "Split" and _const(split, 1).tolist() == [32, 16, 16]
    other = [n for n in model.graph if n.op_type == "Split" and n is not split and len(n.outputs) == 3]
    assert [_const(n, 1).tolist() for n in other] == [[64, 32, 32]]  # layer 1 keeps the shared sizes
    dims = Dims(model)
    layer0 = [n for n in model.graph if "layers.0/self_attn" in n.name]
    expands = [n for n in layer0 if n.op_type == "Expand"]
    assert len(expands) == 2
    for e in expands:
        concat = e.inputs[1].producer()
        assert concat.op_type == "Concat"
        assert _const(concat, 1).tolist() == [1] and _const(concat, 2).tolist() == [NREP]  # kv 2 -> 1, n_rep stays
        assert dims.of(e.outputs[0])[1:3] == (1, NREP)
        reshape = e.outputs[0].uses()[0].node
        assert reshape.op_type == "Reshape" and _const(reshape, 1).tolist() == [0, 2, -1, HD]
    layer1 = [n for n in model.graph if "layers.1/self_attn" in n.name]
    for e in (n for n in layer1 if n.op_type == "Expand"):
        concat = e.inputs[1].producer()
        assert _const(concat, 1).tolist() == [2] and _const(concat, 2).tolist() == [NREP]
        assert _const(e.outputs[0].uses()[0].node, 1).tolist() == [0, 4, -1, HD]
    heads = [n for n in layer0 if n.op_type == "Reshape" and dims.of(n.outputs[0]) is not None
             and len(dims.of(n.outputs[0])) == 4]
    assert sorted(dims.of(n.outputs[0])[1:3] for n in heads) == sorted([(19, 2), (19, 1), (19, 1), (2, 19),
                                                                         (2, 19)])


def test_kv_head_separate_projections_dynamo() -> None:
    """dynamo (separate q/k/v projections, Concat-built shapes shared by both layers): exact shapes."""
    before, model, g = _prune_layer0_group0("llama_gqa_tiny_dynamo", "")
    nodes = {n.name: n for n in model.graph}
    assert [_const(nodes[p], 1).shape for p in g.producers] == [(64, 32), (64, 16), (64, 16)]
    assert _const(nodes[g.consumers[0]], 1).shape == (32, 64)
    repeat_kv = [n for n in model.graph if n.op_type == "Expand" and n.name.startswith("node_expand_")]
    assert len(repeat_kv) == 4
    for e in repeat_kv[:2]:
        concat = e.inputs[1].producer()
        assert [_const(concat, i).tolist() for i in (1, 2, 4)] == [[1], [NREP], [HD]]
        reshape = e.outputs[0].uses()[0].node
        assert _const(reshape.inputs[1].producer(), 1).tolist() == [2]  # num_heads 4 -> 2
    for e in repeat_kv[2:]:
        assert _const(e.inputs[1].producer(), 1).tolist() == [2]
        assert _const(e.outputs[0].uses()[0].node.inputs[1].producer(), 1).tolist() == [4]


@pytest.mark.parametrize(("name", "pipeline"), [("llama_gqa_tiny_ts", ""), ("llama_gqa_tiny_ts", "O1"),
                                                ("llama_gqa_tiny_dynamo", ""), ("llama_gqa_tiny_sdpa_dynamo", "O1"),
                                                ("llama_gqa_tiny_ts", "O2")])
@pytest.mark.parametrize("keep", [[0], [1]])
def test_kv_head_exact(name: str, pipeline: str, keep: list[int]) -> None:
    _exact(name, pipeline, "layer0.attn.kv-heads", keep)


def test_kv_head_fused_group_query_attention_o2() -> None:
    """O2's com.microsoft.GroupQueryAttention: heads 4 -> 2, KV heads 2 -> 1, packed weight and o_proj sliced."""
    before, model, g = _prune_layer0_group0("llama_gqa_tiny_ts", "O2")
    nodes = {n.name: n for n in model.graph}
    gqa = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert [(n.attributes["num_heads"].value, n.attributes["kv_num_heads"].value) for n in gqa] == [(2, 1), (4, 2)]
    assert _const(nodes[g.producers[0]], 1).shape == (64, 64)
    assert _const(nodes[g.consumers[0]], 1).shape == (32, 64)
    feed = feed_for(ir.to_proto(before))
    for key, value in run(model, feed).items():
        assert value.shape == run(before, feed)[key].shape


def test_query_heads_within_groups_dynamo() -> None:
    """Query head 0 of each KV group removed (heads 0 and 2 of 4), every KV head kept: n_rep 2 -> 1."""
    before = load("llama_gqa_tiny_dynamo")
    model = load("llama_gqa_tiny_dynamo")
    analysis = groups_of(model)
    g = analysis.group("layer0.attn.query-heads")
    assert (g.kind, g.size, g.exclusive) == ("query-heads", NREP, ("layer0.attn.kv-heads",))
    assert analysis.group("layer0.attn.kv-heads").exclusive == (g.name,)
    apply_pruning(model, {g.name: [1]}, analysis)
    nodes = {n.name: n for n in model.graph}
    old = {n.name: n for n in before.graph}
    q, k, v = (nodes[n] for n in ("node_linear", "node_linear_1", "node_linear_2"))
    kept = np.r_[HD:2 * HD, 3 * HD:4 * HD]
    np.testing.assert_array_equal(_const(q, 1), _const(old["node_linear"], 1)[:, kept])
    assert _const(k, 1).shape == (64, 32) and _const(v, 1).shape == (64, 32)
    np.testing.assert_array_equal(_const(nodes[g.consumers[0]], 1), _const(old[g.consumers[0]], 1)[kept])
    repeat_kv = [n for n in model.graph if n.op_type == "Expand" and n.name.startswith("node_expand_")]
    for e in repeat_kv[:2]:
        concat = e.inputs[1].producer()
        assert [_const(concat, i).tolist() for i in (1, 2)] == [[2], [1]]  # KV heads stay 2, n_rep 2 -> 1
        assert _const(e.outputs[0].uses()[0].node.inputs[1].producer(), 1).tolist() == [2]  # heads 4 -> 2
    for e in repeat_kv[2:]:
        assert [_const(e.inputs[1].producer(), i).tolist() for i in (1, 2)] == [[2], [2]]


@pytest.mark.parametrize(("name", "pipeline"), [("llama_gqa_tiny_ts", ""), ("llama_gqa_tiny_ts", "O1"),
                                                ("llama_gqa_tiny_dynamo", ""), ("llama_gqa_tiny_sdpa_dynamo", "O1"),
                                                ("llama_gqa_tiny_sdpa_ts", ""), ("llama_gqa_tiny_sdpa_ts", "O1"),
                                                ("llama_gqa_tiny_ts", "O2"), ("llama_gqa_tiny_dynamo", "O2")])
@pytest.mark.parametrize("keep", [[0], [1]])
def test_query_heads_within_groups_exact(name: str, pipeline: str, keep: list[int]) -> None:
    _exact(name, pipeline, "layer0.attn.query-heads", keep)
    _exact(name, pipeline, "layer1.attn.query-heads", keep)


def test_fused_query_heads_within_groups_o2() -> None:
    model = load("llama_gqa_tiny_ts", "O2")
    analysis = groups_of(model)
    apply_pruning(model, {"layer1.attn.query-heads": [0]}, analysis)
    gqa = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    assert [(n.attributes["num_heads"].value, n.attributes["kv_num_heads"].value) for n in gqa] == [(4, 2), (2, 2)]


def test_two_forms_exclusive() -> None:
    """A plan may not remove units of both forms of one layer (their shape edits would not add up)."""
    model = load("llama_gqa_tiny_dynamo", "O1")
    analysis = groups_of(model)
    text = ir.to_text(model)
    with pytest.raises(InputError, match="two forms"):
        apply_pruning(model, {"layer0.attn.kv-heads": [1], "layer0.attn.query-heads": [0]}, analysis)
    assert ir.to_text(model) == text
    apply_pruning(model, {"layer0.attn.kv-heads": [1], "layer1.attn.query-heads": [0]}, analysis)


def test_query_heads_raw_torchscript_constants() -> None:
    """Raw TorchScript states n_rep inside shape arithmetic: the Expand shape's constant (behind the Where
    guard) and the Mul scalar of the heads entry (``Shape(k)[1] * n_rep``) are edited, read by nothing else."""
    model = load("llama_gqa_tiny_ts")
    analysis = groups_of(model)
    g = analysis.group("layer0.attn.query-heads")
    consts = {e.target: e for e in g.edits}
    assert len(consts) == 4 and all(e.attribute == "value" and e.per_unit == 1 for e in g.edits)
    nodes = {n.name: n for n in model.graph}
    readers = sorted(nodes[e.readers[0].split("#")[0]].op_type for e in g.edits)
    assert readers == ["Concat", "Concat", "Mul", "Mul"]
    apply_pruning(model, {g.name: [0]}, analysis)
    dims = Dims(model)
    for n in model.graph:
        if n.op_type == "Expand" and "layers.0/self_attn" in n.name:
            assert dims.of(n.outputs[0])[1:3] == (2, 1)
            assert dims.of(n.outputs[0].uses()[0].node.outputs[0])[1] == 2


def _graph(nodes: list, inits: dict[str, np.ndarray], opset: int = 17, check: bool = False) -> ir.Model:
    """A model of ``nodes`` from graph input x [2, 5, 8] float to output y [2, 5, 8], ``inits`` its initializers
    (checked by onnx.checker with ``check``)."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 8])],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    if check:
        onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _repeat_kv(expand_kv: int, opset: int = 17) -> ir.Model:
    """k [B, 2, S, 4] -> Unsqueeze(2) -> Expand([B, expand_kv, 3, S, 4]) -> Reshape([B, 6, S, 4])."""
    nodes = [helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("Reshape", ["k", "split_heads"], ["k4"]),
             helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 1, 3]),
             helper.make_node("Unsqueeze", ["kt", "axis2"], ["k5"]),
             helper.make_node("Expand", ["k5", "rep"], ["ke"]),
             helper.make_node("Reshape", ["ke", "merge"], ["kr"]),
             helper.make_node("Transpose", ["kr"], ["kb"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", ["kb", "flat"], ["h"]),
             helper.make_node("MatMul", ["h", "wo"], ["y"])]
    rng = np.random.default_rng(0)
    inits = {"wk": rng.standard_normal((8, 8)).astype(np.float32), "split_heads": np.array([0, 0, 2, 4]),
             "axis2": np.array([2]), "rep": np.array([1, expand_kv, 3, 1, 1]), "merge": np.array([0, 6, -1, 4]),
             "flat": np.array([0, 0, 24]), "wo": rng.standard_normal((24, 8)).astype(np.float32)}
    return _graph(nodes, inits, opset, check=True)


@pytest.mark.parametrize("entry", [1, 2])
def test_repeat_kv_constructed(entry: int) -> None:
    """A constructed repeat_kv (n_rep 3): the Expand entry of the KV axis is 1 (nothing to edit) or 2 (edited)."""
    m = _repeat_kv(entry)
    (g,) = [g for g in find_groups(m).groups if g.kind == "heads"]
    assert (g.name, g.size) == ("layer0.attn.kv-heads", 2)
    assert [(s.tensor, s.unit) for s in g.slices] == [("wk", 4), ("wo", 12)]
    feed = {"x": np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)}
    analysis = find_groups(m)
    zero_removed_inputs(m, analysis, {g.name: [1]})
    expected = run(m, feed)
    apply_pruning(m, {g.name: [1]}, analysis)
    np.testing.assert_allclose(run(m, feed)["y"], expected["y"], rtol=1e-5, atol=1e-6)
    consts = {n: ir.const_array(m.graph.initializers[n]).tolist() for n in ("split_heads", "rep", "merge", "flat")}
    assert consts == {"split_heads": [0, 0, 1, 4], "rep": [1, 1, 3, 1, 1], "merge": [0, 3, -1, 4], "flat": [0, 0, 12]}
    assert ir.const_array(m.graph.initializers["wk"]).shape == (8, 4)


def test_expand_tiling_the_units_refused() -> None:
    """An Expand that broadcasts the units' own axis from 1 is refused with its reason."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("ReduceSum", ["x", "axis"], ["a"], keepdims=1),
             helper.make_node("Expand", ["a", "shape"], ["e"]),
             helper.make_node("Add", ["h", "e"], ["s"]),
             helper.make_node("MatMul", ["s", "w2"], ["y"])]
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 4)).astype(np.float32), "axis": np.array([2]),
             "shape": np.array([2, 5, 4]), "w2": rng.standard_normal((4, 8)).astype(np.float32)}
    analysis = find_groups(_graph(nodes, inits))
    assert not analysis.groups
    assert analysis.refused[0].reason.startswith("Expand Expand_2 tiles the units")


@pytest.mark.parametrize(("name", "pipeline"), [("llama_gqa_tiny_ts", ""), ("llama_gqa_tiny_dynamo", "O1"),
                                                ("llama_gqa_tiny_ts", "O2")])
def test_kv_head_unit_flops(name: str, pipeline: str) -> None:
    """A KV unit costs its q/k/v columns and o_proj rows (2 FLOPs each per token) and the QK^T / AV
    products of its n_rep query heads (4 * tokens * head_dim each)."""
    from graphopt.passes.pruning.plan import build_plan

    model = load(name, pipeline)
    analysis = groups_of(model)
    plans, _ = build_plan(model, analysis, ("heads",), tokens=128)
    (plan,) = [p for p in plans if p.name == "layer0.attn.kv-heads"]
    weights = 64 * NREP * HD + 2 * 64 * HD + NREP * HD * 64
    assert plan.group.weights_per_unit == weights
    assert plan.unit_flops == 2 * weights + 4 * 128 * HD * NREP
    assert plan.step == 1 and plan.rows[plan.group.consumers[0]].shape == (2, NREP * HD)


def test_shape_entry_reading_the_units_elsewhere_refused() -> None:
    """An Expand whose shape reads the channel count at run time into another entry (its
    output's axis 0) would change shape when pruned: refused, naming the entry."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Shape", ["h"], ["s"]),
             helper.make_node("Gather", ["s", "two"], ["c"], axis=0),
             helper.make_node("Unsqueeze", ["c", "zero"], ["c1"]),
             helper.make_node("Concat", ["c1", "b2", "s5", "c1"], ["shape"], axis=0),
             helper.make_node("Expand", ["h", "shape"], ["e"]),
             helper.make_node("ReduceSum", ["e", "zero"], ["r"], keepdims=0),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 8)).astype(np.float32), "two": np.array(2), "zero": np.array([0]),
             "b2": np.array([2]), "s5": np.array([5]), "w2": rng.standard_normal((8, 8)).astype(np.float32)}
    analysis = find_groups(_graph(nodes, inits))
    assert not analysis.groups
    reason = "Expand Expand_5: entry 0 of its shape reads the channel count of h at run time"
    assert analysis.refused[0].reason == reason

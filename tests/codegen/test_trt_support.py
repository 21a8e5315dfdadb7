"""The pure-Python TensorRT check (onnx-tensorrt's operator table): it names
the nodes TensorRT's parser rejects and why, passes what it takes, and no
``--target tensorrt`` output of the corpus has a node it rejects."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.codegen.tensorrt import check_model
from graphopt.codegen.tensorrt.support import operator_info, table
from trt_helpers import VARIANT_IDS, VARIANTS, _restore_logging, tensorrt_o2, unsupported_model  # noqa: F401

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, opset=23, inits=(), functions=()):  # noqa: ANN001, ANN201
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10,
                             functions=list(functions))


def vi(name, shape, dtype=F):  # noqa: ANN001, ANN201
    return helper.make_tensor_value_info(name, dtype, shape)


def test_table_is_the_pinned_onnx_tensorrt_edition():
    doc = table()
    assert (doc["tensorrt_version"], doc["opset_min"], doc["opset_max"]) == ("10.15", 9, 24)
    assert operator_info("Unique") == {"supported": False}
    assert operator_info("Attention")["supported"] and "4-D" in operator_info("Attention")["restrictions"]
    assert all(operator_info(op)["supported"] for op in
               ("LayerNormalization", "RMSNormalization", "Gelu", "RotaryEmbedding", "QuantizeLinear"))
    assert operator_info("NoSuchOp") is None


def test_unique_and_contrib_op_are_named_with_reasons():
    issues = check_model(unsupported_model())
    assert [(i.node, i.op_type, i.index) for i in issues] == [
        ("uniq0", "Unique", 1), ("msgelu", "com.microsoft::Gelu", 2)]
    assert "unsupported" in issues[0].reason and "10.15" in issues[0].reason
    assert "domain 'com.microsoft'" in issues[1].reason and "--target tensorrt" in issues[1].reason
    assert issues[0].describe().startswith("node 'uniq0' (Unique): ")


def test_supported_model_has_no_issues():
    m = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", [4])], [vi("y", [4])])
    assert check_model(m) == []


def test_opset_outside_the_parsers_range_is_a_model_issue():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])], opset=8)
    [issue] = check_model(m)
    assert issue.node is None and "opset 8 is outside the parser's range 9..24" in issue.reason


def test_unlisted_operator_is_reported():
    m = model([helper.make_node("Swish", ["x"], ["y"], name="s")], [vi("x", [4])], [vi("y", [4])], opset=24)
    [issue] = check_model(m)
    assert issue.node == "s" and "not in TensorRT's operator table" in issue.reason


def test_attention_restrictions():
    q3 = [vi("q", ["b", "s", 64]), vi("k", ["b", "s", 64]), vi("v", ["b", "s", 64])]
    att = helper.make_node("Attention", ["q", "k", "v"], ["o"], name="att", q_num_heads=4, kv_num_heads=4)
    reasons = [i.reason for i in check_model(model([att], q3, [vi("o", None)]))]
    assert reasons == [f"{w} is 3-D; TensorRT takes 4-D [batch, heads, sequence, head_size] only" for w in "QKV"]
    q4 = [vi(n, ["b", 4, "s", 16]) for n in ("q", "k", "v", "pk", "pv")]
    past = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["o", "present_k"], name="att", softcap=2.0)
    reasons = [i.reason for i in check_model(model([past], q4, [vi("o", None), vi("present_k", None)]))]
    assert reasons == ["input past_key is unsupported", "input past_value is unsupported",
                       "output present_key is unsupported", "attribute softcap is unsupported"]
    plain = helper.make_node("Attention", ["q", "k", "v"], ["o"], name="att")
    assert check_model(model([plain], q4[:3], [vi("o", None)])) == []


def test_layernorm_extra_outputs_only_when_read():
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "s")]
    ln = helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], name="ln")
    assert check_model(model([ln], [vi("x", [2, 4])], [vi("y", [2, 4])], inits=inits)) == []
    [issue] = check_model(model([ln], [vi("x", [2, 4])], [vi("y", [2, 4]), vi("mean", None)], inits=inits))
    assert issue.node == "ln" and "only the first output Y" in issue.reason


def test_constant_restrictions_dropout_topk_zero_point():
    t = numpy_helper.from_array
    inits = [t(np.array(True), "train"), t(np.array([4000], np.int64), "k"), t(np.float32(0.5), "sc"),
             t(np.int8(3), "zp"), t(np.array(False), "eval")]
    nodes = [helper.make_node("Dropout", ["x", "", "train"], ["d"], name="drop"),
             helper.make_node("Dropout", ["x", "", "eval"], ["d2"], name="drop_eval"),
             helper.make_node("TopK", ["x", "k"], ["tv", "ti"], name="topk", sorted=0),
             helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="quant")]
    issues = check_model(model(nodes, [vi("x", [8000])], [vi("d", None), vi("d2", None), vi("tv", None),
                                                          vi("q", None)], inits=inits))
    assert [(i.node, i.reason) for i in issues] == [
        ("drop", "is_training is true; TensorRT runs inference only"),
        ("topk", "sorted=0 is unsupported"),
        ("topk", "K=4000 is too large (below 3840 only)"),
        ("quant", "y_zero_point must be zero (symmetric quantization only)")]


def test_runtime_reduce_axes_and_resize_mode():
    nodes = [helper.make_node("Shape", ["x"], ["axes"]),
             helper.make_node("ReduceSum", ["x", "axes"], ["r"], name="sum"),
             helper.make_node("Resize", ["x", "", "scales"], ["z"], name="rs", mode="cubic")]
    inits = [numpy_helper.from_array(np.array([2.0], np.float32), "scales")]
    issues = check_model(model(nodes, [vi("x", [4])], [vi("r", None), vi("z", None)], inits=inits))
    assert [(i.node, i.reason) for i in issues] == [
        ("sum", "axes must be an initializer (it is computed at run time)"),
        ("rs", "mode=cubic is unsupported (nearest or linear only)")]


def test_nodes_inside_control_flow_bodies_are_checked():
    body = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner")], "then", [],
                             [vi("u", None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["u2"])], "else", [], [vi("u2", None)])
    cond = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=body, else_branch=other)
    [issue] = check_model(model([cond], [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi("y", None)]))
    assert (issue.node, issue.graph) == ("inner", "branch.then_branch")
    assert issue.describe() == ("node 'inner' in branch.then_branch (Unique): Unique is unsupported by "
                                "TensorRT's ONNX parser (TensorRT 10.15)")


def test_model_local_function_of_another_domain_is_expanded_not_rejected():
    fn = helper.make_function("local", "MyRelu", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                              [helper.make_opsetid("", 23)])
    m = model([helper.make_node("MyRelu", ["x"], ["y"], domain="local", name="f")], [vi("x", [4])],
              [vi("y", [4])], functions=[fn])
    m.opset_import.append(helper.make_opsetid("local", 1))
    assert check_model(m) == []


def test_ort_target_output_is_rejected(tmp_path, capsys):
    """The ort target's com.microsoft fusions are what the check is for."""
    from conftest import MODELS
    from graphopt.cli.main import main

    out = tmp_path / "ort.onnx"
    assert main(["-q", "optimize", str(MODELS / "bert_tiny_ts.onnx"), "-o", str(out), "-p", "O2", "--no-verify"]) == 0
    ops = {i.op_type for i in check_model(out)}
    assert ops == {"com.microsoft::Attention", "com.microsoft::BiasGelu", "com.microsoft::FusedGemm"}


@pytest.mark.parametrize(("path", "opset"), VARIANTS, ids=VARIANT_IDS)
def test_target_tensorrt_emits_nothing_the_check_rejects(path, opset):
    out = tensorrt_o2(path, opset)
    assert check_model(out) == []
    m = onnx.load(str(out), load_external_data=False)
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}

"""``prune`` with ``kinds=layers``: whole layers removed by ShortGPT's Block Influence. On bert_tiny: the exact
structure left by removing one layer, outputs equal to the original with that layer's branches zeroed, no dead
node of the block after O1; on a constructed residual MLP: the near-identity block goes first, the ratio and the
budget; bad options."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import ir
from graphopt.calibrate.data import CalibrationData
from graphopt.errors import InputError
from graphopt.passes.pruning import PruneOptions, prune

MODELS = Path(__file__).resolve().parents[3] / "models"
D = 8  # width of the constructed residual MLP
F = 16  # its hidden units

# layer1 of bert_tiny_ts: the branch nodes removed (attention: 55 with the two Shape nodes reading the residual
# stream, MLP: 12) and the two residual Adds; the two LayerNorms stay
BERT_LAYER1_REMOVED = Counter({"Constant": 21, "Add": 10, "Unsqueeze": 8, "MatMul": 8, "Reshape": 4, "Concat": 4,
                               "Transpose": 4, "Mul": 3, "Shape": 2, "Gather": 2, "Softmax": 1, "Div": 1, "Erf": 1})
# the same after O1, against the original after O1 (Q/K/V merged into one MatMul + Split)
O1_REMOVED = 35
O1_REMOVED_OPS = Counter({"Add": 8, "MatMul": 6, "Reshape": 4, "Transpose": 4, "Mul": 3, "Gather": 2,
                          "Unsqueeze": 2, "Shape": 1, "Concat": 1, "Split": 1, "Softmax": 1, "Div": 1, "Erf": 1})


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def outputs(proto: onnx.ModelProto, batches: list[dict]) -> list[np.ndarray]:
    sess = session(proto)
    runs = [sess.run(None, b) for b in batches]
    return [np.concatenate([r[i] for r in runs]) for i in range(len(runs[0]))]


def bert() -> tuple[onnx.ModelProto, CalibrationData]:
    proto = onnx.load(MODELS / "bert_tiny_ts.onnx")
    return proto, CalibrationData.generated(proto, count=4, seed=0)


def zero_branch_outputs(proto: onnx.ModelProto, layer: int, scale: float = 0.0) -> onnx.ModelProto:
    """A copy of bert_tiny with layer ``layer``'s output projections (attention output dense, FFN output dense:
    MatMul weight and bias) multiplied by ``scale``."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    names = set()
    for node in out.graph.node:
        if node.name.startswith((f"/inner/encoder/layer.{layer}/attention/output/dense/",
                                 f"/inner/encoder/layer.{layer}/output/dense/")):
            names.update(node.input)
    inits = {t.name: t for t in out.graph.initializer}
    hit = [n for n in names if n in inits]
    assert len(hit) == 4, hit  # two weights, two biases
    for name in hit:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(scale), name))
    return out


def test_bert_remove_one_layer_structure_and_outputs():
    proto, calib = bert()
    model = ir.from_proto(proto)
    before = Counter(n.op_type for n in model.graph)
    report = prune(model, PruneOptions(kinds=("layer",), layers=1), calib)
    assert [(lay.name, lay.removed) for lay in report.whole_layers] == [("layer1", True), ("layer0", False)]
    assert report.whole_layers[0].influence < report.whole_layers[1].influence
    assert report.whole_layers[0].branches == ["layer1.attn", "layer1.mlp"]
    assert report.pruned == 1 and report.achieved == 0.5 and report.groups == []
    assert [r.how.startswith("not applicable") for r in report.refits] == [True, True]
    # golden structure: 236 -> 167 nodes, the layer's LayerNorms stay, nothing else of its blocks
    after = Counter(n.op_type for n in model.graph)
    assert sum(after.values()) == 167 and sum(before.values()) == 236
    assert before - after == BERT_LAYER1_REMOVED and not after - before
    left = sorted(n.name for n in model.graph if "/layer.1/" in n.name)
    assert left == ["/inner/encoder/layer.1/attention/output/LayerNorm/LayerNormalization",
                    "/inner/encoder/layer.1/output/LayerNorm/LayerNormalization"]
    pruned = ir.to_proto(model)
    onnx.checker.check_model(pruned, full_check=True)
    assert [(i.name, i.type) for i in pruned.graph.input] == [(i.name, i.type) for i in proto.graph.input]
    assert [(o.name, o.type) for o in pruned.graph.output] == [(o.name, o.type) for o in proto.graph.output]
    # the reference: the original with layer1's output projections zeroed (branch output 0, Add(0, x) = x)
    batches = [dict(b) for b in CalibrationData.generated(proto, count=3, seed=7)]
    expect = outputs(zero_branch_outputs(proto, 1), batches)
    got = outputs(pruned, batches)
    for e, g in zip(expect, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
    assert min(np.abs(o - g).max() for o, g in zip(outputs(proto, batches), got)) > 1e-2  # the layer mattered
    assert "graphopt.pruning" in model.metadata_props
    # after O1, nothing of the removed block is left (only the two LayerNorms, fused or not)
    o1 = graphopt.optimize(model, "O1")
    assert not [n.name for n in o1.graph if "/layer.1/" in n.name and "LayerNorm" not in n.name]
    reference = graphopt.optimize(ir.from_proto(proto), "O1")
    assert len(list(reference.graph)) - len(list(o1.graph)) == O1_REMOVED
    ref_ops, o1_ops = Counter(n.op_type for n in reference.graph), Counter(n.op_type for n in o1.graph)
    assert ref_ops - o1_ops == O1_REMOVED_OPS and not o1_ops - ref_ops
    for e, g in zip(expect, outputs(ir.to_proto(o1), batches)):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_bert_near_identity_layer_goes_first():
    proto, calib = bert()
    tiny = zero_branch_outputs(proto, 0, scale=1e-3)  # layer0's branches almost vanish
    model = ir.from_proto(tiny)
    report = prune(model, PruneOptions(kinds=("layers",), layers=1), calib)
    assert [lay.name for lay in report.whole_layers if lay.removed] == ["layer0"]
    # post-LN: the block's two LayerNorms stay and move the stream a little, so its BI is small, not 0
    assert report.whole_layers[0].influence < report.whole_layers[1].influence


def residual_mlp(scales: list[float], seed: int = 0) -> onnx.ModelProto:
    """x [batch, 5, D] -> for each block i: x = x + (relu(x @ W1_i + b1_i) @ W2_i + b2_i) * scales[i] (the
    scale folded into W2_i and b2_i) -> y; node names ``/layers.{i}/...``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i, s in enumerate(scales):
        p = f"/layers.{i}"
        arrays = {f"{p}/w1": rng.standard_normal((D, F)) / np.sqrt(D), f"{p}/b1": 0.1 * rng.standard_normal(F),
                  f"{p}/w2": s * rng.standard_normal((F, D)) / np.sqrt(F), f"{p}/b2": s * 0.1 * rng.standard_normal(D)}
        inits += [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
        nodes += [helper.make_node("MatMul", [x, f"{p}/w1"], [f"{p}/h"], name=f"{p}/fc1/MatMul"),
                  helper.make_node("Add", [f"{p}/h", f"{p}/b1"], [f"{p}/hb"], name=f"{p}/fc1/Add"),
                  helper.make_node("Relu", [f"{p}/hb"], [f"{p}/r"], name=f"{p}/Relu"),
                  helper.make_node("MatMul", [f"{p}/r", f"{p}/w2"], [f"{p}/o"], name=f"{p}/fc2/MatMul"),
                  helper.make_node("Add", [f"{p}/o", f"{p}/b2"], [f"{p}/ob"], name=f"{p}/fc2/Add"),
                  helper.make_node("Add", [f"{p}/ob", x], [f"{p}/out"], name=f"{p}/residual/Add")]
        x = f"{p}/out"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="/out/Identity"))
    graph = helper.make_graph(nodes, "residual_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, D])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def mlp_data(count: int, seed: int) -> CalibrationData:
    rng = np.random.default_rng(seed)
    return CalibrationData.from_arrays([{"x": rng.standard_normal((2, 5, D)).astype(np.float32)}
                                        for _ in range(count)])


def test_block_influence_orders_layers_and_ratio():
    proto = residual_mlp([1.0, 1e-3, 0.5, 2.0])
    model = ir.from_proto(proto)
    report = prune(model, PruneOptions(kinds=("layers",), ratio=0.6), mlp_data(4, 0))
    assert [lay.name for lay in report.whole_layers] == ["layer1", "layer2", "layer0", "layer3"]
    assert report.whole_layers[0].influence < 1e-3 < report.whole_layers[1].influence
    # four layers of equal FLOPs: two go to keep <= 0.6 (achieved 0.5)
    assert [lay.removed for lay in report.whole_layers] == [True, True, False, False]
    assert report.achieved == 0.5 and report.ratio == 0.6
    names = {n.name for n in model.graph}
    assert not any(n.startswith(("/layers.1/", "/layers.2/")) for n in names)
    assert sum(1 for n in model.graph if n.op_type == "MatMul") == 4
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_block_influence_matches_numpy():
    from graphopt.calibrate.importance import block_influence

    proto = residual_mlp([1.0, 0.3])
    data = [dict(b) for b in mlp_data(3, 1)]
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.extend([helper.make_tensor_value_info("/layers.0/out", TensorProto.FLOAT, None)])
    sess = session(probe)
    acts = [sess.run(None, b) for b in data]
    x = np.concatenate([b["x"] for b in data])
    h0 = np.concatenate([a[1] for a in acts])
    y = np.concatenate([a[0] for a in acts])
    report = prune(ir.from_proto(proto), PruneOptions(layers=1), mlp_data(3, 1))
    got = {lay.name: lay.influence for lay in report.whole_layers}
    assert got["layer0"] == pytest.approx(block_influence(x, h0), abs=1e-6)
    assert got["layer1"] == pytest.approx(block_influence(h0, y), abs=1e-6)


def test_budget_removes_only_the_near_identity_layer():
    proto = residual_mlp([1.0, 1e-3, 0.5, 2.0])
    model = ir.from_proto(proto)
    report = prune(model, PruneOptions(kinds=("layers",)), mlp_data(4, 0), evaluation=list(mlp_data(3, 5)),
                   budget={"cosine": 0.999})
    assert [lay.name for lay in report.whole_layers if lay.removed] == ["layer1"]
    assert report.budget["ratio"] < 1 and report.budget["score"] >= 0.999


def test_pipeline_spec_with_layers():
    from graphopt.passmanager import PassContext, PassManager, Pipeline

    spec = "prune{kinds=layers,layers=2}"
    assert str(Pipeline.parse(spec).to_spec()) == spec
    ctx = PassContext(target="ort", calibration=mlp_data(2, 0))
    result = PassManager(Pipeline.parse(spec), ctx).run(ir.from_proto(residual_mlp([1.0, 1e-3, 0.5])))
    stats = next(p for p in result.report.to_dict()["passes"] if p["name"] == "prune")["stats"]
    assert stats["groups pruned"] == 2 and stats["layers removed"] == 2 and stats["layers"] == 3
    assert sum(1 for n in result.model.graph if n.op_type == "MatMul") == 2


def test_bad_layer_options():
    proto = residual_mlp([1.0, 0.5])
    calib = mlp_data(2, 0)
    with pytest.raises(InputError, match="cannot remove 3 layers: the model has 2 removable"):
        prune(ir.from_proto(proto), PruneOptions(kinds=("layers",), layers=3), calib)
    with pytest.raises(InputError, match="cannot be removed together with heads"):
        prune(ir.from_proto(proto), PruneOptions(kinds=("layers", "heads"), ratio=0.5), calib)
    with pytest.raises(InputError, match="only one of them"):
        prune(ir.from_proto(proto), PruneOptions(layers=1, ratio=0.5), calib)
    with pytest.raises(InputError, match="goes with kinds=layers"):
        prune(ir.from_proto(proto), PruneOptions(layers=1, kinds=("ffn",)), calib)
    with pytest.raises(InputError, match="calibration data"):
        prune(ir.from_proto(proto), PruneOptions(layers=1))
    from graphopt.passes.pruning.layers import LayerPlan, choose_layers

    plans = [LayerPlan(f"layer{i}", [], "x", "y", -1, 1.0, 0, influence=float(i)) for i in range(3)]
    with pytest.raises(InputError, match="cannot keep as little as 0.1"):  # a fourth, refused layer stays
        choose_layers(plans, ratio=0.1, total=4.0)
    assert [lp.name for lp in choose_layers(plans, ratio=0.5, total=4.0)] == ["layer0", "layer1"]
    flat = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, D])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, D])],
                             [numpy_helper.from_array(np.eye(D, dtype=np.float32), "w")])
    no_layers = ir.from_proto(helper.make_model(flat, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    with pytest.raises(InputError, match="no whole layer to remove"):
        prune(no_layers, PruneOptions(kinds=("layers",), layers=1), calib)


@pytest.mark.parametrize("name,first", [("gpt2_tiny_dynamo", "layer1"), ("llama_gqa_tiny_ts", "layer1"),
                                        ("vit_tiny_ts", "layer1"), ("bert_tiny_opset14_ts", "layer1"),
                                        ("paddleocr_cls", "residual:Add@27")])
def test_valid_model_signature_kept_across_families(name, first):
    proto = onnx.load(MODELS / f"{name}.onnx")
    model = ir.from_proto(proto)
    report = prune(model, PruneOptions(layers=1), CalibrationData.generated(proto, count=2, seed=0))
    assert [lay.name for lay in report.whole_layers if lay.removed] == [first]
    out = ir.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    assert len(out.graph.node) < len(proto.graph.node)
    assert [(o.name, o.type) for o in out.graph.output] == [(o.name, o.type) for o in proto.graph.output]
    batch = dict(next(iter(CalibrationData.generated(proto, count=1, seed=3))))
    for value in session(out).run(None, batch):
        assert np.isfinite(value).all()


def test_refused_layer_keeps_its_reason_and_still_counts():
    proto = residual_mlp([1e-3, 1.0, 0.5])
    for t in proto.graph.initializer:  # layer0's branch ends in one channel, broadcast over the stream
        if t.name in ("/layers.0/w2", "/layers.0/b2"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[..., :1].copy(), t.name))
    model = ir.from_proto(proto)
    report = prune(model, PruneOptions(kinds=("layers",), ratio=0.5), mlp_data(2, 0))
    assert [lay.name for lay in report.whole_layers] == ["layer2", "layer1"]  # layer0 (near identity) refused
    refused = {r["site"]: r for r in report.refused}
    assert refused["layer0"]["kind"] == "layers" and "layer0.mlp is refused" in refused["layer0"]["reason"]
    assert "differ in dims (broadcast)" in refused["layer0.mlp"]["reason"]
    # a refused branch is no group: its FLOPs are not counted; of the two equal layers one goes
    assert [lay.removed for lay in report.whole_layers] == [True, False]
    assert report.achieved == 0.5
    assert {n.name for n in model.graph if n.name.startswith("/layers.0/")} == {
        "/layers.0/fc1/MatMul", "/layers.0/fc1/Add", "/layers.0/Relu", "/layers.0/fc2/MatMul", "/layers.0/fc2/Add",
        "/layers.0/residual/Add"}

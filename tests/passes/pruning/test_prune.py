"""The ``prune`` pass: identity at ratio 0 / 1, valid pruned models with their signature on real exports,
least squares exact when the removed activations are zero, reconstruction beating none on a correlated case,
the allocation's rounding, and the budget search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.calibrate.data import CalibrationData
from graphopt.errors import InputError
from graphopt.passes.pruning import PruneOptions, prune
from graphopt.passes.pruning.allocation import allocate, keep_sets, kept_ratio, ladder, round_keep
from graphopt.passes.pruning.plan import GroupPlan

MODELS = Path(__file__).resolve().parents[3] / "models"
H = 8  # hidden units of the constructed MLP
D = 4  # model width


def mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> ir.Model:
    """x [batch, 6, D] -> MatMul w1 -> Add b1 -> Relu -> MatMul w2 -> Add b2 -> y."""
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, D])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def data(count: int, seed: int) -> CalibrationData:
    rng = np.random.default_rng(seed)
    return CalibrationData.from_arrays([{"x": rng.standard_normal((1, 6, D)).astype(np.float32)}
                                        for _ in range(count)])


def run(model: ir.Model, batches) -> np.ndarray:  # noqa: ANN001
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": b["x"]})[0] for b in batches]).astype(np.float64)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratio_zero_or_one_is_identity(ratio):
    model = ir.load(MODELS / "bert_tiny_ts.onnx")
    before = ir.to_text(model)
    report = prune(model, PruneOptions(ratio=ratio))
    assert report.pruned == 0 and "keeps every unit" in report.nothing
    assert ir.to_text(model) == before


def test_nothing_prunable_is_identity():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    before = ir.to_text(model)
    report = prune(model, PruneOptions(ratio=0.5, method="magnitude", reconstruction="none"))
    assert report.nothing.startswith("nothing prunable") and ir.to_text(model) == before


@pytest.mark.parametrize("name,kinds", [("bert_tiny_ts", ("heads", "ffn")), ("gpt2_tiny_dynamo", ("heads", "ffn")),
                                        ("paddleocr_cls", ("channels",))])
@pytest.mark.parametrize("reconstruction", ["least-squares", "bias"])
def test_pruned_model_valid_signature_kept(name, kinds, reconstruction):
    proto = onnx.load(MODELS / f"{name}.onnx")
    model = ir.from_proto(proto)
    calib = CalibrationData.generated(proto, count=4, seed=0)
    report = prune(model, PruneOptions(ratio=0.5, align=4, reconstruction=reconstruction), calib)
    assert report.pruned > 0 and {g.kind for g in report.groups} == set(kinds)
    assert report.achieved < 0.75
    out = ir.to_proto(model)
    onnx.checker.check_model(out)
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    sig = [(o.name, o.type) for o in sess.get_outputs()]
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sig == [(o.name, o.type) for o in ref.get_outputs()]
    assert [(i.name, i.type) for i in sess.get_inputs()] == [(i.name, i.type) for i in ref.get_inputs()]
    batch = next(iter(calib))
    got, want = sess.run(None, batch), ref.run(None, batch)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(np.isfinite(g).all() for g in got if np.issubdtype(g.dtype, np.floating))


def test_least_squares_exact_when_removed_activations_are_zero():
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((D, H))
    b1 = rng.standard_normal(H)
    w1[:, 5:], b1[5:] = 0.0, -1.0  # units 5, 6, 7: relu(-1) = 0 on every input
    w2, b2 = rng.standard_normal((H, D)), rng.standard_normal(D)
    model, reference = mlp(w1, b1, w2, b2), mlp(w1, b1, w2, b2)
    calib, ev = data(8, 0), list(data(4, 1))
    report = prune(model, PruneOptions(ratio=5 / 8, align=1, ridge=0.0), calib)
    assert [(g.name, g.kept, g.size) for g in report.groups] == [(report.groups[0].name, 5, 8)]
    assert [r.how for r in report.refits] == ["least-squares"]
    assert model.graph.initializers["w2"].const_value.shape == (5, D) or \
        any(v.const_value.shape == (5, D) for v in model.graph.initializers.values())
    np.testing.assert_allclose(run(model, ev), run(reference, ev), rtol=1e-5, atol=1e-5)


def test_reconstruction_beats_none_on_correlated_units():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((D, 4))
    w1 = np.concatenate([a, 0.5 * a], axis=1)  # units 4..7 = 0.5 * units 0..3 (relu is positively homogeneous)
    b1 = np.zeros(H)
    w2 = rng.standard_normal((H, D))
    w2[4:] *= 0.2  # the copies score lower: exactly one of each pair is removed
    b2 = np.zeros(D)
    ev = list(data(6, 1))
    want = run(mlp(w1, b1, w2, b2), ev)
    errors = {}
    for how in ("least-squares", "none"):
        model = mlp(w1, b1, w2, b2)
        report = prune(model, PruneOptions(ratio=0.5, align=1, reconstruction=how, ridge=0.0), data(8, 0))
        assert report.groups[0].kept == 4
        got = run(model, ev)
        errors[how] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    # none loses the copies' share 0.5 * relu(x a) @ (0.2 w2[:4]-like rows); least squares folds them back exactly
    r = np.maximum(np.concatenate([b["x"] for b in ev]).astype(np.float64) @ a, 0)
    expected_none = np.linalg.norm(0.5 * r @ w2[4:]) / np.linalg.norm(want)
    assert errors["least-squares"] < 1e-5
    assert errors["none"] == pytest.approx(expected_none, rel=1e-4) and errors["none"] > 0.05


def _plan(name: str, size: int, unit_flops: float, step: int, scores) -> GroupPlan:  # noqa: ANN001
    from graphopt.analysis.groups import CoupledGroup

    g = CoupledGroup(name, "heads" if step == 1 else "ffn", size, (), (), (), (), "", 0)
    return GroupPlan(g, unit_flops, step, scores=np.asarray(scores, dtype=np.float64))


def test_allocation_rounding_exact():
    assert round_keep(921.6, 8, 1536) == 920 and round_keep(7.2, 1, 12) == 7 and round_keep(2.0, 8, 1536) == 8
    assert round_keep(76.8, 8, 128) == 80 and round_keep(6.0, 8, 6) == 6 and round_keep(1540.0, 8, 1540) == 1540
    assert ladder(12, 1, 24) == list(range(12, 0, -1))
    assert ladder(64, 8, 3) == [64, 48, 24, 8]
    heads = _plan("heads", 12, 98304 + 16384, 1, np.arange(12))
    ffn = _plan("ffn", 1536, 1536.0, 8, np.arange(1536))
    counts = allocate([heads, ffn], 0.6, "uniform")
    assert counts == {"heads": 7, "ffn": 920}
    total = 12 * (98304 + 16384) + 1536 * 1536.0
    assert kept_ratio([heads, ffn], counts) == pytest.approx((7 * (98304 + 16384) + 920 * 1536.0) / total)
    assert keep_sets([heads, ffn], counts)["heads"] == list(range(5, 12))
    # global: standardized scores tie across groups; every kept count is a multiple of the step
    g = allocate([heads, ffn], 0.5, "global")
    assert g["ffn"] % 8 == 0 and 1 <= g["heads"] <= 12
    # error: the cheaper error per FLOP goes first
    e = allocate([heads, ffn], 0.9, "error", lambda: {"heads": ([12, 11], [0.0, 1.0]),
                                                      "ffn": ([1536, 1024], [0.0, 1e9])})
    assert e == {"heads": 11, "ffn": 1536} or kept_ratio([heads, ffn], e) <= 0.9


def test_bad_options():
    model = ir.load(MODELS / "paddleocr_cls.onnx")
    with pytest.raises(InputError, match="no heads"):
        prune(model, PruneOptions(ratio=0.5, kinds=("heads",), method="magnitude", reconstruction="none"))
    with pytest.raises(InputError, match="ratio must be in"):
        prune(model, PruneOptions(ratio=1.5))
    with pytest.raises(InputError, match="needs calibration data"):
        prune(model, PruneOptions(ratio=0.5))


def test_budget_search_holds_on_evaluation():
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((D, 32)), rng.standard_normal(32)
    w2, b2 = rng.standard_normal((32, D)), rng.standard_normal(D)
    model = mlp(w1, b1, w2, b2)
    ev = list(data(6, 1))
    report = prune(model, PruneOptions(align=1), data(8, 0), evaluation=ev, budget={"cosine": 0.99})
    b = report.budget
    assert b["ratio"] < 1.0 and b["score"] >= 0.99 and all(
        v < 0.99 for k, v in b["trials"].items() if float(k) < b["ratio"])


def test_pipeline_spec_and_kinds_left_out_still_count():
    from graphopt.passmanager import PassContext, PassManager, Pipeline

    spec = "prune{ratio=0.8,method=magnitude,reconstruction=none,kinds=ffn}"
    assert str(Pipeline.parse(spec).to_spec()) == spec
    result = PassManager(Pipeline.parse(spec), PassContext(target="ort")).run(ir.load(MODELS / "bert_tiny_ts.onnx"))
    stats = next(p for p in result.report.to_dict()["passes"] if p["name"] == "prune")["stats"]
    assert stats["groups pruned"] == 2 and 0.75 < stats["kept ratio"] <= 0.8
    with pytest.raises(InputError, match="cannot keep as little as 0.6"):
        prune(ir.load(MODELS / "bert_tiny_ts.onnx"), PruneOptions(ratio=0.6, kinds=("ffn",), method="magnitude",
                                                                  reconstruction="none"))


def test_error_curve_matches_output_error():
    from graphopt.calibrate.reconstruct import output_error, refit_kept
    from graphopt.calibrate.stats import ChannelStats
    from graphopt.passes.pruning.plan import Site
    from graphopt.passes.pruning.refit import error_curve

    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 3)) @ rng.standard_normal((3, H))  # rank 3: correlated channels
    x += 0.01 * rng.standard_normal(x.shape)
    st = ChannelStats("r", -1)
    st.update(x, gram=True)
    st.finish()
    w = rng.standard_normal((H, D))
    site = Site("mm", "MatMul", "w2", 1, 0, "r", -1, None, True, H, w)
    plan = _plan("ffn", H, 2.0 * D, 1, np.arange(H)[::-1])
    plan.rows = {"mm": np.arange(H)[:, None]}
    counts = [8, 5, 3, 1]
    got = error_curve(plan, {"mm": site}, {"r": st}, counts, "least-squares", 1e-6)
    g = st.gram
    for k, e in zip(counts, got):
        keep = np.arange(k)
        fit = refit_kept(g, keep, w, ridge=1e-6)
        assert e == pytest.approx(max(output_error(g[np.ix_(keep, keep)], g[keep], g, w, fit.weight), 0.0),
                                  rel=1e-6, abs=1e-6 * float(np.sum(w * (g @ w))))
    assert got[0] == pytest.approx(0.0, abs=1e-9 * float(np.sum(w * (g @ w)))) and got[-1] > got[1]
    none = error_curve(plan, {"mm": site}, {"r": st}, [5], "none", 0.0)[0]
    removed = np.arange(5, H)
    assert none == pytest.approx(float(np.sum(w[removed] * (g[np.ix_(removed, removed)] @ w[removed]))))

"""factorize: exactness at full rank and on exactly low-rank weights, whitening beats plain SVD on correlated
inputs, the rewrite of MatMul / Gemm / 1x1 Conv, the speed guard (injected timing), rank selection."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.calibrate import CalibrationData
from graphopt.errors import InputError
from graphopt.passes.lowrank import FactorizeOptions, factorize
from graphopt.passes.lowrank.decompose import factors, relative_output_error, spectrum
from graphopt.passes.lowrank.ranks import budget_ranks, candidates, energy_ranks
from graphopt.passes.lowrank.speed import SpeedGuard
from graphopt.passmanager import PassContext, PassManager


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run(proto: onnx.ModelProto, feed: dict) -> np.ndarray:
    s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def _correlated(rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Rows with strongly correlated channels of very different scales (activation-like)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, k // 4))
    mix = rng.standard_normal((k // 4, k))
    scale = np.exp(rng.uniform(-2, 2, size=k))
    return (z @ mix + 0.05 * rng.standard_normal((rows, k))) * scale


def _calib(proto, name, arrays):
    return CalibrationData.from_arrays([{name: a.astype(np.float32)} for a in arrays], proto)


def _cases(seed: int = 0):
    """(proto, input name, sample shape, K, N) of a MatMul with 3-D x, a Gemm transB with bias, a 1x1 Conv."""
    rng = np.random.default_rng(seed)
    k, n = 48, 40
    w = rng.standard_normal((k, n)).astype(np.float32)
    mm = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 5, k])], [_vi("y", [2, 5, n])],
                {"w": w})
    gm = _model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                [_vi("x", [6, k])], [_vi("y", [6, n])],
                {"w": np.ascontiguousarray(w.T), "c": rng.standard_normal(n).astype(np.float32)})
    cv = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"])], [_vi("x", [1, k, 3, 3])], [_vi("y", [1, n, 3, 3])],
                {"w": np.ascontiguousarray(w.T[:, :, None, None]), "b": rng.standard_normal(n).astype(np.float32)})
    return [(mm, (2, 5, k)), (gm, (6, k)), (cv, (1, k, 3, 3))]


@pytest.mark.parametrize("method", ["svd", "asvd", "svd-llm"])
def test_full_rank_reproduces_the_layer(method):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 16))
    x = _correlated(200, 24)
    spec = spectrum(w, method, gram=x.T @ x, abs_mean=np.abs(x).mean(0))
    for refit in (False, True):
        a, b = factors(spec, 16, gram=x.T @ x, weight=w, refit=refit)
        assert np.abs(a @ b - w).max() <= 1e-5 * np.abs(w).max()


def _lowrank(k, n, r, seed=2):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, r)) @ rng.standard_normal((r, n))).astype(np.float32)


@pytest.mark.parametrize("case", range(3), ids=["matmul-3d", "gemm-transB-bias", "conv-1x1"])
@pytest.mark.parametrize("method", ["svd", "svd-llm"])
def test_exactly_rank_r_weight_factorizes_exactly(case, method):
    proto, shape = _cases()[case]
    w = _lowrank(48, 40, 8)
    for init in proto.graph.initializer:
        if init.name == "w":
            array = {0: w, 1: w.T, 2: w.T[:, :, None, None]}[case]
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), "w"))
    rng = np.random.default_rng(3)
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    model = ir.from_proto(proto)
    calib = _calib(proto, "x", [rng.standard_normal(shape) for _ in range(8)])
    report = factorize(model, FactorizeOptions(method=method, rank=8, speed_guard=False), calib)
    assert report.factorized == 1 and report.layers[0].rank == 8
    assert report.layers[0].params_after == 8 * (48 + 40)
    out = ir.to_proto(model)
    ops = [n.op_type for n in out.graph.node]
    assert ops == [proto.graph.node[0].op_type] * 2
    ref, got = _run(proto, feed), _run(out, feed)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert report.layers[0].error is not None and report.layers[0].error < 1e-10


def test_whitening_beats_plain_svd_on_correlated_inputs():
    rng = np.random.default_rng(4)
    k, n, r = 64, 64, 8
    w = rng.standard_normal((k, n))
    x = _correlated(2000, k)
    g = x.T @ x
    errors = {}
    for method in ("svd", "asvd", "svd-llm"):
        spec = spectrum(w, method, gram=g, abs_mean=np.abs(x).mean(0))
        a, b = factors(spec, r)
        errors[method] = relative_output_error(g, w, a @ b)
        a, b = factors(spec, r, gram=g, weight=w, refit=True, ridge=1e-6)
        errors[method + "+refit"] = relative_output_error(g, w, a @ b)
    # The whitened spectrum's tail is the output error (SVD-LLM's truncation awareness).
    spec = spectrum(w, "svd-llm", gram=g)
    assert spec.tail(r) == pytest.approx(errors["svd-llm"], rel=1e-2)
    # Measured: svd 0.645, asvd 0.402, svd-llm 0.137 (refit: svd 0.282, svd-llm unchanged: already optimal).
    assert errors["svd"] > 0.6  # plain SVD ignores the activations' scales and correlations
    assert errors["svd-llm"] < 0.14 and errors["svd-llm"] < errors["svd"] / 4
    assert errors["svd-llm"] < errors["asvd"] < errors["svd"]
    assert errors["svd+refit"] < errors["svd"]
    assert errors["svd-llm+refit"] <= errors["svd-llm"] * (1 + 1e-6)


def _mlp(k=64, n=64, seed=5, rank=None):
    """x -> MatMul -> Relu -> MatMul; with ``rank``, weights of that rank plus 1% noise."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    if rank:
        w1 = _lowrank(k, n, rank, seed) + 0.01 * w1
        w2 = _lowrank(n, k, rank, seed + 1) + 0.01 * w2
    return _model([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                   helper.make_node("MatMul", ["r", "w2"], ["y"])], [_vi("x", [4, k])], [_vi("y", [4, k])],
                  {"w1": w1, "w2": w2})


def test_speed_guard_leaves_slower_layers_alone():
    proto = _mlp()
    calib = _calib(proto, "x", [_correlated(4, 64, s) for s in range(4)])
    seen = []

    def slower(m, k, n, r):
        seen.append((m, k, n, r))
        return 1.25

    model = ir.from_proto(proto)
    before = ir.to_text(model)
    report = factorize(model, FactorizeOptions(rank=8, tokens=96), calib, timing=slower)
    assert report.factorized == 0 and sorted(report.skipped_for_speed) == ["h", "y"]
    assert ir.to_text(model) == before
    # y's output is [4, 64]: measured at its own 4 rows; h's output has no inferred shape here: the tokens option
    assert sorted({m for m, *_ in seen}) == [4, 96]
    assert "speed guard" in report.layers[0].reason
    # rows the shape does not say (a symbolic batch): measured at the tokens option
    symbolic = onnx.ModelProto()
    symbolic.CopyFrom(proto)
    symbolic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    symbolic.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    seen.clear()
    factorize(ir.from_proto(symbolic), FactorizeOptions(rank=8, tokens=96), calib, timing=slower)
    assert seen and all(m == 96 for m, *_ in seen)
    # Faster only up to rank 16: the guard caps the ranks a budget may pick.
    model = ir.from_proto(proto)
    report = factorize(model, FactorizeOptions(energy=0.9999), calib, timing=lambda m, k, n, r: r / 20)
    assert report.factorized == 2 and all(0 < r.rank <= 16 for r in report.layers)
    assert all(r.speed_ratio == r.rank / 20 for r in report.layers)


def test_speed_cache_on_disk(tmp_path):
    path = tmp_path / "speed.json"
    guard = SpeedGuard(tokens=16, cache=path, threads=1)
    first = guard.ratio(32, 32, 8)
    assert path.is_file() and guard.measured == 1 and 0 < first < 10
    again = SpeedGuard(tokens=16, cache=path, threads=1)
    assert again.ratio(32, 32, 8) == first and again.measured == 0


def test_rank_selection():
    assert candidates(64, 64, 8, 0.9) == [8, 16, 24]
    assert candidates(8, 8, 8, 0.9) == []
    tails = [lambda r: np.exp(-r / 8.0), lambda r: np.exp(-r / 64.0)]
    allowed = [candidates(64, 64, 8, 0.9)] * 2
    assert energy_ranks(allowed, tails, 0.5) == [8, 0]  # the second never keeps half its energy at rank <= 24
    chosen = budget_ranks(allowed, tails, [(64, 64)] * 2, 0.75)
    params = sum(r * 128 if r else 4096 for r in chosen)
    assert params <= 0.75 * 8192
    assert chosen[0] <= chosen[1] or chosen[1] == 0  # the fast-decaying spectrum gives up more
    assert budget_ranks(allowed, tails, [(64, 64)] * 2, 1.0) == [0, 0]


def test_flops_budget_weights_each_layer_by_its_tokens():
    """Same spectra, the second layer sees 4x the tokens: a FLOPs budget takes from it first, a parameter budget
    (ties go to the first layer) from the first; equal costs allocate as the parameter budget."""
    steps = {24: 0.01, 16: 0.02, 8: 0.04}
    allowed = [candidates(64, 64, 8, 0.9)] * 2
    assert allowed[0] == [8, 16, 24]
    tails = [steps.__getitem__] * 2
    shapes = [(64, 64)] * 2
    assert budget_ranks(allowed, tails, shapes, 0.8) == [16, 0]
    # FLOPs 4096 + 4 * 4096 = 20480; rank 24 of the second saves 4 * 1024, rank 16 another 4 * 1024: 0.8, 0.6 exactly
    assert budget_ranks(allowed, tails, shapes, 0.8, costs=[1, 4]) == [0, 24]
    assert budget_ranks(allowed, tails, shapes, 0.6, costs=[1, 4]) == [0, 16]
    for ratio in (0.9, 0.8, 0.6, 0.4):
        assert budget_ranks(allowed, tails, shapes, ratio, costs=[3, 3]) == budget_ranks(allowed, tails, shapes, ratio)
    with pytest.raises(InputError, match="costs"):
        budget_ranks(allowed, tails, shapes, 0.8, costs=[1, 0])


def test_flops_budget_on_convs_of_different_spatial_size():
    """Two 64x64 1x1 Convs on 8x8 and 2x2 maps (tokens 64 and 4): at flops=0.8 only the 8x8 one is cut, to rank 24:
    FLOPs (64 * 24 * 128 + 4 * 4096) / (68 * 4096) = 0.7647; params=0.8 needs both layers' parameters."""
    rng = np.random.default_rng(3)
    convs, inits = [], {}
    for i, side in enumerate((8, 2)):
        inits[f"w{i}"] = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
        convs.append(helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"y{i}"], name=f"conv{i}"))
    proto = _model(convs, [_vi("x0", [1, 64, 8, 8]), _vi("x1", [1, 64, 2, 2])],
                   [_vi("y0", [1, 64, 8, 8]), _vi("y1", [1, 64, 2, 2])], inits)
    opts = dict(method="svd", refit="none", speed_guard=False)
    report = factorize(ir.from_proto(proto), FactorizeOptions(flops=0.8, **opts))
    assert [r.tokens for r in report.layers] == [64, 4]
    assert [r.rank for r in report.layers] == [24, 0]
    assert report.flops_before == 2 * 68 * 4096 and report.flops_after == 2 * (64 * 24 * 128 + 4 * 4096)
    flop_ratio = report.to_dict()["flop_ratio"]
    assert flop_ratio == pytest.approx(212992 / 278528) and flop_ratio <= 0.8
    by_params = factorize(ir.from_proto(proto), FactorizeOptions(params=0.8, **opts))
    assert by_params.params_after <= 0.8 * by_params.params_before
    with pytest.raises(InputError, match="exactly one of"):
        factorize(ir.from_proto(proto), FactorizeOptions(flops=0.8, params=0.8, **opts))
    with pytest.raises(InputError, match="flops must be in"):
        factorize(ir.from_proto(proto), FactorizeOptions(flops=1.5, **opts))


def test_dynamic_convs_count_their_calibration_positions():
    """The same two Convs with symbolic spatial dims: their shapes are measured on the first calibration batch
    (8x8 and 2x2 again: tokens 64 and 4, the same ranks as the static model); without calibration data they
    fall back to ``tokens``."""
    rng = np.random.default_rng(3)
    convs, inits = [], {}
    for i in range(2):
        inits[f"w{i}"] = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
        convs.append(helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"y{i}"], name=f"conv{i}"))
    proto = _model(convs, [_vi("x0", [1, 64, "h0", "w0"]), _vi("x1", [1, 64, "h1", "w1"])],
                   [_vi("y0", [1, 64, "h0", "w0"]), _vi("y1", [1, 64, "h1", "w1"])], inits)
    calib = CalibrationData.from_arrays([{"x0": rng.standard_normal((1, 64, 8, 8)).astype(np.float32),
                                          "x1": rng.standard_normal((1, 64, 2, 2)).astype(np.float32)}
                                         for _ in range(2)], proto)
    opts = dict(method="svd", refit="none", speed_guard=False, flops=0.8)
    report = factorize(ir.from_proto(proto), FactorizeOptions(**opts), calib)
    assert [r.tokens for r in report.layers] == [64, 4] and [r.rank for r in report.layers] == [24, 0]
    assert [r.tokens for r in factorize(ir.from_proto(proto), FactorizeOptions(**opts)).layers] == [128, 128]


def test_global_budget_meets_the_ratio():
    proto = _mlp(96, 96)
    calib = _calib(proto, "x", [_correlated(4, 96, s) for s in range(6)])
    model = ir.from_proto(proto)
    report = factorize(model, FactorizeOptions(params=0.5, method="svd-llm"), calib, timing=lambda *a: 0.5)
    assert report.params_after <= 0.5 * report.params_before
    assert report.factorized >= 1


def test_options_and_data_errors():
    proto = _mlp()
    model = ir.from_proto(proto)
    with pytest.raises(InputError, match="exactly one"):
        factorize(model, FactorizeOptions(rank=8, params=0.5, speed_guard=False))
    with pytest.raises(InputError, match="unknown factorization method"):
        factorize(model, FactorizeOptions(rank=8, method="tucker", speed_guard=False))
    with pytest.raises(InputError, match="needs calibration data"):
        factorize(model, FactorizeOptions(rank=8, method="svd-llm", speed_guard=False))
    with pytest.raises(InputError):
        factorize(model, FactorizeOptions(params=1.5, speed_guard=False))


def test_pass_in_a_pipeline_and_budget():
    proto = _mlp()
    model = ir.from_proto(proto)
    result = PassManager("factorize{method=svd,refit=none,rank=8,speed-guard=false}", PassContext()).run(model)
    assert [n.op_type for n in result.model.graph].count("MatMul") == 4
    # An accuracy budget on evaluation data: the smallest parameter ratio whose cosine holds.
    proto = _mlp(rank=12)
    calib = _calib(proto, "x", [_correlated(4, 64, s) for s in range(6)])
    evaluation = [{"x": _correlated(4, 64, 100 + s).astype(np.float32)} for s in range(3)]
    model = ir.from_proto(proto)
    report = factorize(model, FactorizeOptions(), calib, evaluation=evaluation, budget={"cosine": 0.999},
                       timing=lambda *a: 0.5)
    assert report.budget["metric"] == "cosine" and report.budget["score"] >= 0.999
    assert report.budget["params"] < 1.0 and report.factorized >= 1


def test_speed_guard_checks_the_allocated_rank_itself():
    """The bisection measures a few ranks (32, 48, 56 of 8..56 here); a rank it skipped that reads slower
    steps down to a faster one, or leaves the layer whole."""
    proto = _mlp(128, 128)
    calib = _calib(proto, "x", [_correlated(4, 128, s) for s in range(4)])
    model = ir.from_proto(proto)
    report = factorize(model, FactorizeOptions(rank=40), calib, timing=lambda m, k, n, r: 1.5 if r == 40 else 0.5)
    assert [r.rank for r in report.layers] == [32, 32]
    assert all(r.speed_ratio == 0.5 for r in report.layers)
    model = ir.from_proto(proto)
    report = factorize(model, FactorizeOptions(rank=24), calib, timing=lambda m, k, n, r: 1.5 if r <= 24 else 0.5)
    assert report.factorized == 0 and report.skipped_for_speed == ["h", "y"]


def test_weight_in_a_constant_node_is_removed_with_the_layer():
    """PaddleOCR-style weights held by Constant nodes: the factored layer's Constant goes away (not left dead with
    the unfactored weight); a Constant still read elsewhere stays."""
    rng = np.random.default_rng(7)
    w = _lowrank(64, 64, 8, 7).astype(np.float32)
    const = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w"))
    mm = helper.make_node("MatMul", ["x", "w"], ["y"])
    proto = _model([const, mm], [_vi("x", [4, 64])], [_vi("y", [4, 64])], {})
    x = rng.standard_normal((4, 64)).astype(np.float32)
    model = ir.from_proto(proto)
    report = factorize(model, FactorizeOptions(rank=8, method="svd", refit="none", speed_guard=False))
    assert report.factorized == 1
    assert [n.op_type for n in model.graph] == ["MatMul", "MatMul"]
    np.testing.assert_allclose(_run(ir.to_proto(model), {"x": x}), x @ w, rtol=1e-4, atol=1e-4)
    shared = _model([const, mm, helper.make_node("Add", ["y", "w"], ["z"])], [_vi("x", [4, 64])],
                    [_vi("z", [4, 64])], {})
    model = ir.from_proto(shared)
    assert factorize(model, FactorizeOptions(rank=8, method="svd", refit="none", speed_guard=False)).factorized == 1
    assert sorted(n.op_type for n in model.graph) == ["Add", "Constant", "MatMul", "MatMul"]


def test_plan_keeps_only_the_factors_a_rank_can_use():
    """The plan holds each layer's singular vectors only up to its largest candidate rank (the speed guard's cap
    included) and the float64 weight only where the refit or the output error reads it; the factors are unchanged."""
    from graphopt.passes.lowrank.factorize import plan_layers

    proto = _mlp(96, 96)
    opts = FactorizeOptions(rank=16, method="svd", refit="none")
    plan = plan_layers(ir.from_proto(proto), opts, timing=lambda m, k, n, r: 0.5 if r <= 24 else 1.5)
    assert [a[-1] for a in plan.allowed] == [24, 24]
    assert all(s.u.shape == (96, 24) and s.vt.shape == (24, 96) and s.s.shape == (96,) for s in plan.spectra)
    assert plan.weights == [None, None]
    model = ir.from_proto(proto)
    factorize(model, opts, timing=lambda m, k, n, r: 0.5 if r <= 24 else 1.5)
    w1 = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    u, s, vt = np.linalg.svd(w1, full_matrices=False)
    a = [numpy_helper.to_array(t) for t in ir.to_proto(model).graph.initializer if "w1_lowrank" in t.name]
    np.testing.assert_allclose(a[0] @ a[1], (u[:, :16] * s[:16]) @ vt[:16], rtol=1e-4, atol=1e-4)
    calib = _calib(proto, "x", [_correlated(4, 96, s) for s in range(4)])
    plan = plan_layers(ir.from_proto(proto), FactorizeOptions(rank=16), calib, timing=lambda *a: 0.5)
    assert all(w is not None and w.shape == (96, 96) for w in plan.weights)
    assert all(s.u.shape[1] == plan.allowed[0][-1] for s in plan.spectra)


def test_speed_cache_keeps_entries_another_guard_wrote(tmp_path):
    """Two guards on one cache file, each loaded before the other wrote: the second write keeps the first's entry
    (no lost update, so nothing is measured twice with two different readings)."""
    path = tmp_path / "speed.json"
    first, second = SpeedGuard(tokens=16, cache=path, threads=1), SpeedGuard(tokens=16, cache=path, threads=1)
    assert second._load() == {}
    a = first.ratio(32, 32, 8)
    b = second.ratio(32, 32, 16)
    third = SpeedGuard(tokens=16, cache=path, threads=1)
    assert third.ratio(32, 32, 8) == a and third.ratio(32, 32, 16) == b and third.measured == 0

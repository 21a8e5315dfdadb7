"""The ``obs`` pruning method (structured Optimal Brain Surgeon, passes/pruning/obs.py): the greedy removal order
against brute-force least squares (every step's choice and the running error, one site and two, rows of one and
of four per unit), a duplicated neuron that the compensation makes free, the scores on bert_tiny, bad input, and
``graphopt prune --method obs``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphopt import ir
from graphopt.analysis.groups import KINDS, find_groups
from graphopt.calibrate.data import CalibrationData
from graphopt.calibrate.stats import StatRequest, collect_stats
from graphopt.errors import InputError
from graphopt.passes.pruning import PruneOptions, prune
from graphopt.passes.pruning.obs import obs_order, obs_scores
from graphopt.passes.pruning.plan import build_plan
from graphopt.passes.pruning.scoring import score_groups
from graphopt.passes.pruning.sensitivity import output_change_scores
from helpers import restore_logging, run_cli  # noqa: F401 - autouse fixture

BERT = Path(__file__).resolve().parents[3] / "models" / "bert_tiny_ts.onnx"


def _ls_error(x: np.ndarray, w: np.ndarray, keep_rows: np.ndarray) -> float:
    """``min_W' ||X_S W' - X W||^2`` by numpy's least squares (no ridge)."""
    target = x @ w
    if keep_rows.size == 0:
        return float(np.sum(target ** 2))
    sol = np.linalg.lstsq(x[:, keep_rows], target, rcond=None)[0]
    return float(np.sum((x[:, keep_rows] @ sol - target) ** 2))


def _brute_greedy(xs: list[np.ndarray], ws: list[np.ndarray], units: list[np.ndarray]) -> tuple[list[int], list[float]]:
    """Greedy removal by re-solving the least squares for every candidate at every step: (order, error after
    each step), the error summed over the sites."""
    count = units[0].shape[0]
    removed: list[int] = []
    errors = []
    for _ in range(count):
        best = None
        for u in range(count):
            if u in removed:
                continue
            gone = removed + [u]
            err = 0.0
            for x, w, idx in zip(xs, ws, units):
                keep = np.setdiff1d(np.arange(w.shape[0]), idx[gone].reshape(-1))
                err += _ls_error(x, w, keep)
            if best is None or err < best[0] - 1e-12:
                best = (err, u)
        removed.append(best[1])
        errors.append(best[0])
    return removed, errors


def test_greedy_order_and_error_match_brute_force_least_squares():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    x = rng.normal(size=(200, 6)) @ mix  # correlated input channels
    w = rng.normal(size=(6, 3))
    units = np.arange(6)[:, None]
    order, added = obs_order(w, x.T @ x, units, ridge=0.0)
    want_order, want_errors = _brute_greedy([x], [w], [units])
    assert order.tolist() == want_order
    np.testing.assert_allclose(np.cumsum(added), want_errors, rtol=1e-7, atol=1e-9)


def test_heads_over_two_sites_match_brute_force():
    rng = np.random.default_rng(1)
    x1 = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    x2 = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    w1, w2 = rng.normal(size=(12, 5)), rng.normal(size=(12, 2))
    units = np.arange(12).reshape(3, 4)  # 3 "heads" of 4 rows, read by both consumers
    order, added = obs_order([w1, w2], [x1.T @ x1, x2.T @ x2], [units, units], ridge=0.0)
    want_order, want_errors = _brute_greedy([x1, x2], [w1, w2], [units, units])
    assert order.tolist() == want_order
    np.testing.assert_allclose(np.cumsum(added), want_errors, rtol=1e-7)


def test_step_removes_whole_steps_and_the_error_lands_on_the_first_of_each():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 8))
    w = rng.normal(size=(8, 2))
    order, added = obs_order(w, x.T @ x, np.arange(8)[:, None], step=3, ridge=0.0)
    assert sorted(order.tolist()) == list(range(8))
    assert added[[1, 2, 4, 5, 7]].tolist() == [0.0] * 5
    for k in (3, 6, 8):  # the running error after each whole step is the least squares of what stays
        keep = np.setdiff1d(np.arange(8), order[:k])
        assert np.isclose(added[:k].sum(), _ls_error(x, w, keep), rtol=1e-7)


def test_a_duplicated_neuron_goes_first_where_sensitivity_keeps_both():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6))
    x[:, 1] = x[:, 0]  # neuron 1 fires exactly as neuron 0
    w = rng.normal(size=(6, 4)) * 0.1
    w[0] = w[1] = 5.0  # and both carry the largest weights
    g = x.T @ x
    alone = output_change_scores(w, g, np.arange(6)[:, None])
    assert set(np.argsort(-alone)[:2].tolist()) == {0, 1}  # removed alone, each is the most harmful
    order, added = obs_order(w, g, np.arange(6)[:, None], ridge=1e-8)
    assert order[0] in (0, 1) and added[0] < 1e-3 * alone.min()  # the twin absorbs it (up to the ridge)
    assert order[-1] in (0, 1) and order[-1] != order[0]  # the twin is the last to go


def test_bad_input():
    w, g, u = np.ones((4, 2)), np.eye(4), np.arange(4)[:, None]
    with pytest.raises(InputError, match="one weight, Gram and unit table per site"):
        obs_order([w, w], [g], [u, u])
    with pytest.raises(InputError, match="step must be a positive integer"):
        obs_order(w, g, u, step=0)
    with pytest.raises(InputError, match="Gram \\[C, C\\]"):
        obs_order(w, np.eye(3), u)
    with pytest.raises(InputError, match="out of range"):
        obs_order(w, g, np.array([[4]]))
    with pytest.raises(InputError, match="same number of units"):
        obs_order([w, w], [g, g], [u, u[:2]])
    order, _ = obs_order(w, np.zeros((4, 4)), u)  # a dead input (all-zero Gram) still gets an order
    assert sorted(order.tolist()) == [0, 1, 2, 3]


def _bert_setup():  # noqa: ANN202
    proto = onnx.load(BERT)
    model = ir.from_proto(proto)
    calib = CalibrationData.generated(proto, count=4, seed=0)
    plans, sites = build_plan(model, find_groups(model, KINDS), ("heads", "ffn"))
    requests = {sites[n].data: StatRequest(sites[n].data, sites[n].data_axis, gram=True) for p in plans for n in p.rows}
    return model, plans, sites, collect_stats(model, list(requests.values()), calib), calib


def test_scores_on_bert_tiny_are_the_removal_steps():
    model, plans, sites, stats, _ = _bert_setup()
    score_groups(plans, sites, stats, "obs", model)
    by_name = {p.name: p for p in plans}
    heads, ffn = by_name["layer0.attn.heads"], by_name["layer0.ffn"]
    assert sorted(heads.scores.tolist()) == [0.0, 1.0, 2.0, 3.0]
    assert sorted(ffn.scores.tolist()) == list(map(float, range(128)))
    # FFN neurons go 8 (the align step) at a time: each step's 8 are the ones of least compensated error
    site = sites[next(iter(ffn.rows))]
    assert site.bias is not None  # centered Gram, as the intercept refit sees it
    again = obs_scores(ffn, sites, stats, centered=True)
    np.testing.assert_array_equal(again, ffn.scores)
    assert not np.array_equal(obs_scores(ffn, sites, stats, centered=False), ffn.scores)


def test_prune_obs_keeps_the_last_removed_and_refits():
    model, plans, sites, stats, calib = _bert_setup()
    score_groups(plans, sites, stats, "obs", model)
    ffn = next(p for p in plans if p.name == "layer0.ffn")
    want = np.sort(np.argsort(-ffn.scores, kind="stable")[:64])
    up = next(s for s in ffn.group.slices if s.role == "out" and s.unit == 1)  # the up projection's columns
    original = np.moveaxis(ir.const_array(model.graph.initializers[up.tensor]), up.axis, 0)
    target = ir.from_proto(onnx.load(BERT))
    report = prune(target, PruneOptions(ratio=0.5, kinds=("heads", "ffn"), method="obs"), calib)
    assert {g.name: g.kept for g in report.groups} == {"layer0.attn.heads": 2, "layer1.attn.heads": 2,
                                                       "layer0.ffn": 64, "layer1.ffn": 64}
    assert {r.how for r in report.refits} == {"least-squares"}
    pruned = np.moveaxis(ir.const_array(target.graph.initializers[up.tensor]), up.axis, 0)
    np.testing.assert_array_equal(pruned, original[up.start + want])  # producers are sliced, not refitted


@pytest.mark.parametrize("reconstruction", ["least-squares", "none"])
def test_cli_prune_method_obs(tmp_path, capsys, reconstruction):
    out = tmp_path / "p.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", BERT, "-o", out, "--calib", "generate", "--calib-limit", "4",
                                   "--ratio", "0.6", "--method", "obs", "--reconstruct", reconstruction, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["options"]["method"] == "obs" and doc["pruned"] == 4
    assert {(g["name"], g["kept"]) for g in doc["groups"]} == {("layer0.attn.heads", 2), ("layer1.attn.heads", 2),
                                                               ("layer0.ffn", 80), ("layer1.ffn", 80)}
    onnx.checker.check_model(onnx.load(out))


def test_brute_force_helper_is_exhaustive_on_pairs():
    """The brute force itself: on 4 units its first two picks are the best pair among those containing the best
    single (greedy), checked against every pair."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 4)) @ rng.normal(size=(4, 4))
    w = rng.normal(size=(4, 2))
    units = np.arange(4)[:, None]
    order, errors = _brute_greedy([x], [w], [units])
    first = order[0]
    pairs = {p: _ls_error(x, w, np.setdiff1d(np.arange(4), p)) for p in itertools.combinations(range(4), 2)
             if first in p}
    assert np.isclose(errors[1], min(pairs.values()))


def test_scores_are_memoized_per_statistics_object():
    import graphopt.passes.pruning.obs as obs_module

    model, plans, sites, stats, _ = _bert_setup()
    ffn = next(p for p in plans if p.name == "layer0.ffn")
    first = obs_scores(ffn, sites, stats)
    calls = []
    real = obs_module.obs_order
    obs_module.obs_order = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        np.testing.assert_array_equal(obs_scores(ffn, sites, stats), first)  # same statistics: no recomputation
        assert calls == []
        obs_scores(ffn, sites, stats, ridge=1e-2)  # another ridge: computed
        assert calls == [1]
        other = {k: v for k, v in collect_stats(model, [StatRequest(v.value, v.axis, gram=True)
                                                        for v in stats.values()],
                                                CalibrationData.generated(onnx.load(BERT), count=2, seed=5)).items()}
        obs_scores(ffn, sites, other)  # other statistics: computed
        assert calls == [1, 1]
    finally:
        obs_module.obs_order = real


def test_a_group_that_also_feeds_a_k_by_k_conv_takes_the_consumer_scores():
    """Conv 3->8 -> Relu, read by a 1x1 Conv and a 3x3 Conv: least squares compensates only in the 1x1 one, so an
    OBS order over it alone would ignore the 3x3 consumer; obs gives None and the group gets the output-change
    scores of both consumers (what PaddleOCR det's FPN groups get)."""
    from onnx import TensorProto, helper, numpy_helper

    from graphopt.passes.pruning.sensitivity import consumer_scores

    rng = np.random.default_rng(3)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3)), "b1": rng.standard_normal(8),
              "wp": rng.standard_normal((4, 8, 1, 1)), "wk": rng.standard_normal((4, 8, 3, 3))}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wp"], ["p"], name="pointwise"),
             helper.make_node("Conv", ["r", "wk"], ["k"], pads=[1, 1, 1, 1], name="kxk")]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("p", "k")],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()])
    model = ir.from_proto(onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    plans, sites = build_plan(model, find_groups(model, KINDS), ("channels",), align=1)
    assert [(p.name, sorted(p.rows)) for p in plans] == [("conv:conv", ["kxk", "pointwise"])]
    assert (sites["pointwise"].pointwise, sites["kxk"].pointwise) == (True, False)
    calib = CalibrationData.from_arrays([{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
                                         for _ in range(8)])
    stats = collect_stats(model, [StatRequest("r", 1, gram=True)], calib)
    assert obs_scores(plans[0], sites, stats) is None
    score_groups(plans, sites, stats, "obs", model, calibration=calib)
    np.testing.assert_array_equal(plans[0].scores, consumer_scores(plans[0], sites, stats))

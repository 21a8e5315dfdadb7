"""The ``sensitivity`` and ``ablation`` pruning methods: the consumer-level score equals ``||X_u W_u||^2``
computed by brute force, the model-output score of a head equals ``1 - cos`` of the model run with that head's
rows zeroed, a head whose rows cancel is found where Wanda keeps it, which groups get which level, and
``graphopt prune --method sensitivity`` / ``ablation`` on a committed model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from graphopt import ir
from graphopt.analysis.groups import KINDS, find_groups
from graphopt.calibrate.activations import stream_activations
from graphopt.calibrate.data import CalibrationData
from graphopt.calibrate.stats import StatRequest, collect_stats
from graphopt.errors import InputError
from graphopt.passes.pruning.allocation import keep_sets
from graphopt.passes.pruning.plan import build_plan, weight_rows
from graphopt.passes.pruning.scoring import METHODS, score_groups
from graphopt.passes.pruning.sensitivity import (
    consumer_scores, model_output_scores, output_change_scores, sensitivity_scores,
)
from helpers import restore_logging, run_cli  # noqa: F401 - autouse fixture

MODELS = Path(__file__).resolve().parents[3] / "models"
BERT = MODELS / "bert_tiny_ts.onnx"  # 2 layers, hidden 64, 4 heads of 16, FFN 128


def _setup(proto: onnx.ModelProto, count: int = 4):  # noqa: ANN202
    """(model, plans by name, sites, stats with Grams, calibration) of bert_tiny."""
    model = ir.from_proto(proto)
    calib = CalibrationData.generated(proto, count=count, seed=0)
    plans, sites = build_plan(model, find_groups(model, KINDS), ("heads", "ffn"))
    requests = {sites[n].data: StatRequest(sites[n].data, sites[n].data_axis, gram=True) for p in plans for n in p.rows}
    stats = collect_stats(model, list(requests.values()), calib)
    return model, {p.name: p for p in plans}, sites, stats, calib


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _one_minus_cos(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]]) -> float:
    """1 - (mean over outputs of the mean row cosine, rows along the last axis, over all batches)."""
    per_output = []
    for k in range(len(refs[0])):
        a = np.concatenate([np.asarray(r[k], np.float64).reshape(-1, r[k].shape[-1]) for r in refs])
        b = np.concatenate([np.asarray(o[k], np.float64).reshape(-1, o[k].shape[-1]) for o in outs])
        per_output.append(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    return 1.0 - float(np.mean(per_output))


def test_methods_and_cli_choices_agree():
    from graphopt.cli.main import build_parser

    assert {"sensitivity", "ablation"} <= set(METHODS)
    prune_parser = build_parser()._subparsers._group_actions[0].choices["prune"]
    method = next(a for a in prune_parser._actions if a.dest == "method")
    assert tuple(method.choices) == METHODS


def test_consumer_score_is_the_output_change_of_the_consumer():
    proto = onnx.load(BERT)
    model, plans, sites, stats, calib = _setup(proto)
    for name in ("layer0.ffn", "layer1.attn.heads"):
        plan = plans[name]
        (node, idx), = plan.rows.items()
        site = sites[node]
        x = np.concatenate([np.asarray(out[site.data], np.float64).reshape(-1, site.channels)
                            for out in stream_activations(model, [site.data], calib)])
        w = weight_rows(site.array, site.in_axis)
        brute = np.array([np.sum(np.square(x[:, rows] @ w[rows])) for rows in idx])
        np.testing.assert_allclose(consumer_scores(plan, sites, stats), brute, rtol=1e-9)
        assert plan.size == len(brute) and (brute > 0).all()


def test_model_output_score_of_a_head_is_one_minus_cosine_with_its_rows_zeroed():
    proto = onnx.load(BERT)
    model, plans, sites, _, calib = _setup(proto, count=3)
    plan = plans["layer0.attn.heads"]
    got = model_output_scores(model, [plan], sites, calib)["layer0.attn.heads"]
    (node, idx), = plan.rows.items()
    site = sites[node]
    batches = list(calib)
    refs = [_session(proto).run(None, b) for b in batches]
    want = []
    for h in range(plan.size):
        zeroed = onnx.load(BERT)
        init = next(t for t in zeroed.graph.initializer if t.name == site.weight)
        w = numpy_helper.to_array(init).copy()
        w[idx[h]] = 0.0  # the output projection's rows of head h (MatMul weight [in, out])
        init.CopyFrom(numpy_helper.from_array(w, site.weight))
        sess = _session(zeroed)
        want.append(_one_minus_cos([sess.run(None, b) for b in batches], refs))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert (got > 0).all()


def _cancelling_head(proto: onnx.ModelProto, scale: float = 20.0) -> onnx.ModelProto:
    """Layer 0, head 0: value columns 0 and 1 equal (identical context rows), its output-projection rows
    ``+scale r`` and ``-scale r`` and the other 14 zero: the head adds exactly nothing, with large weights."""
    model = ir.from_proto(proto)
    group = next(g for g in find_groups(model, KINDS).groups if g.name == "layer0.attn.heads")
    value_w = next(s for s in group.slices if s.role == "out" and "value" in s.readers[0]).tensor
    value_b = next(s for s in group.slices if s.role == "param" and "value" in s.readers[0]).tensor
    out_w = next(s for s in group.slices if s.role == "in").tensor
    inits = {t.name: t for t in proto.graph.initializer}
    arrays = {n: numpy_helper.to_array(inits[n]).copy() for n in (value_w, value_b, out_w)}
    arrays[value_w][:, 1] = arrays[value_w][:, 0]
    arrays[value_b][1] = arrays[value_b][0]
    r = np.random.default_rng(0).standard_normal(arrays[out_w].shape[1]).astype(np.float32)
    arrays[out_w][:16] = 0.0
    arrays[out_w][0], arrays[out_w][1] = scale * r, -scale * r
    for n, a in arrays.items():
        inits[n].CopyFrom(numpy_helper.from_array(a, n))
    return proto


def test_sensitivity_drops_a_head_whose_rows_cancel_where_wanda_keeps_it():
    proto = _cancelling_head(onnx.load(BERT))
    model, plans, sites, stats, calib = _setup(proto)
    heads = plans["layer0.attn.heads"]
    consumer = consumer_scores(heads, sites, stats)
    assert int(np.argmin(consumer)) == 0 and consumer[0] < 1e-6 * consumer[1:].min()
    kept = {}
    for method in ("wanda", "sensitivity", "obs", "ablation"):
        score_groups([heads], sites, stats, method, model, calibration=calib)
        kept[method] = keep_sets([heads], {heads.name: 3})[heads.name]
    assert int(np.argmin(heads.scores)) == 0 and heads.scores[0] < 1e-6  # ablation: the outputs do not change
    assert kept["sensitivity"] == kept["ablation"] == kept["obs"] == [1, 2, 3]
    assert 0 in kept["wanda"]  # Wanda's |W| * ||X|| sees large weights and norms, not that the rows cancel


def test_which_groups_are_measured_at_the_model_output():
    proto = onnx.load(BERT)
    model, plans, sites, stats, calib = _setup(proto, count=2)
    ordered = list(plans.values())
    block = sensitivity_scores(ordered, sites, stats, model, calib)
    assert {name: level for name, (_, level) in block.items()} == dict.fromkeys(plans, "consumer")
    ablation = sensitivity_scores(ordered, sites, stats, model, calib, model_output=True)
    assert {name: level for name, (_, level) in ablation.items()} == {
        "layer0.attn.heads": "model-output", "layer0.ffn": "consumer",
        "layer1.attn.heads": "model-output", "layer1.ffn": "consumer"}  # FFN: 128 units > MAX_UNITS (64)
    np.testing.assert_array_equal(ablation["layer0.ffn"][0], block["layer0.ffn"][0])
    capped = sensitivity_scores(ordered, sites, stats, model, calib, model_output=True, max_masks=4)
    assert [capped[n][1] for n in ("layer0.attn.heads", "layer1.attn.heads")] == ["model-output", "consumer"]
    without_data = sensitivity_scores(ordered, sites, stats, model, None, model_output=True)
    assert {level for _, level in without_data.values()} == {"consumer"}
    with pytest.raises(InputError, match="at least one calibration batch"):
        sensitivity_scores(ordered, sites, stats, model, [], model_output=True)


def test_output_change_scores_closed_form_and_bad_shapes():
    x = np.array([[1.0, 1.0, 2.0], [2.0, 2.0, -1.0]])  # channels 0 and 1 equal
    w = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    units = np.array([[0, 1], [2, 2]])
    got = output_change_scores(w, x.T @ x, units)
    np.testing.assert_allclose(got, [0.0, np.sum(np.square(2 * x[:, [2]] @ w[[2]]))])
    np.testing.assert_allclose(output_change_scores(w, np.sum(x * x, 0), units[:1]), [10.0])  # the diagonal
    with pytest.raises(InputError, match="Gram has shape"):
        output_change_scores(w, np.eye(2), units)
    with pytest.raises(InputError, match="out of range"):
        output_change_scores(w, x.T @ x, np.array([[3]]))


@pytest.mark.parametrize("method", ["sensitivity", "ablation"])
def test_cli_prune_method(tmp_path, capsys, method):
    out = tmp_path / "p.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", BERT, "-o", out, "--calib", "generate", "--calib-limit", "4",
                                   "--ratio", "0.6", "--method", method, "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["options"]["method"] == method and doc["pruned"] == 4
    assert {(g["name"], g["kept"]) for g in doc["groups"]} == {("layer0.attn.heads", 2), ("layer1.attn.heads", 2),
                                                               ("layer0.ffn", 80), ("layer1.ffn", 80)}
    assert 0 < doc["accuracy"]["cosine"] <= 1
    onnx.checker.check_model(onnx.load(out))

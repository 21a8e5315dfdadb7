"""Coupled groups on the committed models, raw exports and after O1/O2:
golden group lists, and pruning that keeps the model valid and exact where
the removed units contribute nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from graphopt import ir
from graphopt.analysis.groups import apply_pruning, describe
from tests.analysis.groups_helpers import (
    GOLDEN, expected_shapes, feed_for, groups_of, load, random_plan, run, signature, zero_removed_inputs,
)

MODELS = ("bert_tiny_ts", "bert_tiny_dynamo", "bert_tiny_sdpa_ts", "bert_tiny_sdpa_dynamo", "gpt2_tiny_ts",
          "gpt2_tiny_dynamo", "llama_gqa_tiny_ts", "llama_gqa_tiny_dynamo", "llama_gqa_tiny_sdpa_ts",
          "llama_gqa_tiny_sdpa_dynamo", "vit_tiny_ts", "vit_tiny_dynamo", "paddleocr_cls", "paddleocr_det")
CASES = [(m, p) for m in MODELS for p in ("", "O1")] + [("bert_tiny_ts", "O2"), ("vit_tiny_ts", "O2"),
                                                         ("llama_gqa_tiny_ts", "O2"), ("llama_gqa_tiny_dynamo", "O2")]
IDS = [f"{m}{'-' + p if p else ''}" for m, p in CASES]


@pytest.mark.parametrize(("name", "pipeline"), CASES, ids=IDS)
def test_golden_groups(name: str, pipeline: str, request: pytest.FixtureRequest) -> None:
    text = describe(groups_of(load(name, pipeline)))
    path = GOLDEN / f"{name}{'.' + pipeline if pipeline else ''}.txt"
    if request.config.getoption("--update-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            request.config._golden_updated.append(str(path))  # type: ignore[attr-defined]
        return
    assert path.exists(), f"no golden {path}: run pytest --update-golden and review it"
    expected = path.read_text()
    if text != expected:
        import difflib
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "actual"))
        pytest.fail(f"groups differ from {path}:\n{diff}")


@pytest.mark.parametrize(("name", "pipeline"), CASES, ids=IDS)
def test_prune_exact_when_removed_units_are_silent(name: str, pipeline: str) -> None:
    """Zero the consumers' rows of the removed units, prune them: outputs equal
    within 1e-5, onnx.checker passes, the signature is the same, and every
    sliced constant has the expected dims (as its reader sees it: shared
    constants are copied per reader)."""
    model = load(name, pipeline)
    analysis = groups_of(model)
    keep = random_plan(analysis, seed=1, layers=False)
    zero_removed_inputs(model, analysis, keep)
    before = ir.to_proto(model)
    shapes = expected_shapes(model, analysis, keep)
    feed = feed_for(before)
    expected = run(before, feed)
    apply_pruning(model, keep, analysis)
    after = ir.to_proto(model)
    if pipeline != "O2":  # O2's contrib ops are unknown to onnx.checker
        onnx.checker.check_model(after, full_check=True)
    assert signature(after) == signature(before)
    actual = run(after, feed)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    nodes = {n.name: n for n in model.graph}
    for (reader, index), dims in shapes.items():
        assert list(ir.const_tensor(nodes[reader].inputs[index]).shape) == dims, (reader, index)


@pytest.mark.parametrize(("name", "pipeline"), [c for c in CASES if c[1] != "O2"],
                         ids=[i for c, i in zip(CASES, IDS) if c[1] != "O2"])
def test_prune_random_plan_with_layers_runs(name: str, pipeline: str) -> None:
    model = load(name, pipeline)
    analysis = groups_of(model)
    before = ir.to_proto(model)
    apply_pruning(model, random_plan(analysis, seed=2), analysis)
    after = ir.to_proto(model)
    onnx.checker.check_model(after, full_check=True)
    assert signature(after) == signature(before)
    feed = feed_for(before)
    outputs = run(after, feed)
    reference = run(before, feed)
    for key, value in reference.items():
        assert outputs[key].shape == value.shape and outputs[key].dtype == value.dtype


@pytest.mark.parametrize(("name", "pipeline"), [("bert_tiny_ts", "O1"), ("paddleocr_cls", "O1"),
                                                ("llama_gqa_tiny_ts", ""), ("llama_gqa_tiny_dynamo", "O1")])
def test_keep_all_is_identity(name: str, pipeline: str) -> None:
    model = load(name, pipeline)
    analysis = groups_of(model)
    text = ir.to_text(model)
    apply_pruning(model, {g.name: list(range(g.size)) for g in analysis.groups}, analysis)
    assert ir.to_text(model) == text


def test_pruned_initializer_shapes_bert_o1() -> None:
    """Heads (packed QKV after O1, shared Split sizes copied per layer) and FFN neurons."""
    model = load("bert_tiny_ts", "O1")
    analysis = groups_of(model)
    heads, ffn = analysis.group("layer0.attn.heads"), analysis.group("layer0.ffn")
    assert (heads.size, ffn.size) == (4, 128)
    apply_pruning(model, {"layer0.attn.heads": [0, 2], "layer0.ffn": list(range(0, 128, 2))}, analysis)
    nodes = {n.name: n for n in model.graph}
    qkv = nodes[heads.producers[0]]
    assert tuple(qkv.inputs[1].const_value.shape) == (64, 96)
    out_proj = nodes[heads.consumers[0]]
    assert tuple(out_proj.inputs[1].const_value.shape) == (32, 64)
    split = next(u.node for u in qkv.outputs[0].uses()[0].node.outputs[0].uses())
    assert split.op_type == "Split"
    assert ir.const_array(split.inputs[1]).tolist() == [32, 32, 32]
    other = [n for n in model.graph if n.op_type == "Split" and n is not split][0]
    assert ir.const_array(other.inputs[1]).tolist() == [64, 64, 64]
    up = nodes[ffn.producers[0]]
    assert tuple(up.inputs[1].const_value.shape) == (64, 64)
    assert tuple(nodes[ffn.consumers[0]].inputs[1].const_value.shape) == (64, 64)

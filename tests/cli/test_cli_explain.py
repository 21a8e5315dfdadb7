"""``graphopt explain RULE IN``: every candidate site with its verdict, after the
O2 passes before the rule's own; bad rule names exit 2."""

from __future__ import annotations

import json
import os

from conftest import MODELS, sha256
from graphopt.cli.main import main


def explain_json(capsys, *args: str) -> dict:
    assert main(["explain", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_attention_fires_at_each_layer_after_the_o2_prefix(capsys):
    path = MODELS / "bert_tiny_dynamo.onnx"
    digest = sha256(path)
    doc = explain_json(capsys, "attention", str(path))
    assert sha256(path) == digest
    assert doc["pass"] == "fuse-attention" and doc["target"] == "ort"
    assert doc["pipeline"].startswith("topological-sort,fixpoint{max-iters=8}(inline,")  # O1, expanded
    assert doc["pipeline"].endswith("canonicalize-fusion,dce),fuse-norm")
    assert doc["fires"] == 2
    refused = [s for s in doc["sites"] if not s["fires"]]
    assert all(s["reason"] for s in refused)
    assert any("the pattern needs [0, 2, 1, 3]" in s["reason"] for s in refused)  # the key's Transpose


def test_raw_model_with_no_prefix(capsys):
    doc = explain_json(capsys, "rmsnorm", str(MODELS / "llama_gqa_tiny_dynamo.onnx"), "-p", "none")
    assert doc["pipeline"] == ""
    assert doc["fires"] == 5  # 2 per layer and the final norm


def test_rule_that_does_not_apply_to_the_target_says_so(capsys):
    doc = explain_json(capsys, "skip-layernorm", str(MODELS / "bert_tiny_ts.onnx"), "--target", "onnx")
    assert doc["inapplicable"] == "rule 'skip-layernorm' does not apply to target onnx (targets: ort)"
    assert doc["fires"] == 0


def test_provider_decides_between_skip_layernorm_and_residual_sum(capsys):
    path = str(MODELS / "bert_tiny_ts.onnx")
    cpu = explain_json(capsys, "skip-layernorm", path)
    assert cpu["fires"] == 0 and len(cpu["sites"]) == 5
    assert all(s["reason"].startswith("for-provider=cpu: onnxruntime's CPU SkipLayerNormalization is slower")
               for s in cpu["sites"])
    assert explain_json(capsys, "residual-sum", path)["fires"] == 5
    assert explain_json(capsys, "skip-layernorm", path, "--provider", "cuda")["fires"] == 5
    cuda = explain_json(capsys, "residual-sum", path, "--provider", "cuda")
    assert cuda["fires"] == 0
    assert {s["reason"] for s in cuda["sites"]} == {"for-provider=cuda: rule skip-layernorm fuses the residual Add"}


def test_opset_gate_and_upgrade(capsys):
    model = str(MODELS / "llama_gqa_tiny_dynamo.onnx")
    doc = explain_json(capsys, "rmsnorm", model, "--target", "onnx", "-p", "O1")
    assert doc["fires"] == 0
    assert {s["reason"] for s in doc["sites"] if "opset" in (s["reason"] or "")} == {
        "RMSNormalization needs opset 23 for target onnx; the model has opset 18 "
        "(allow an upgrade with --opset 23 or config opset.upgrade=23)"}
    doc = explain_json(capsys, "rmsnorm", model, "--target", "onnx", "-p", "O1,upgrade-opset", "--opset", "23")
    assert doc["fires"] == 5


def test_unknown_rule_exits_2_with_candidates(capsys):
    code = main(["explain", "atention", str(MODELS / "bert_tiny_ts.onnx")])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown rule 'atention'. Did you mean attention?" in err
    assert "Traceback" not in err


def test_symbolic_shape_inference_writes_nothing_into_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # PaddleOCR's unnamed dims make onnxruntime's inference incomplete: its entry
    # point would save sym_shape_infer_temp.onnx (+ data files) here.
    explain_json(capsys, "skip-layernorm", str(MODELS / "paddleocr_cls.onnx"), "-p", "none")
    explain_json(capsys, "attention", str(MODELS / "paddleocr_det.onnx"), "-p", "none")
    assert os.listdir(tmp_path) == []

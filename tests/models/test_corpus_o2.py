"""`graphopt optimize -p O2` on every committed model: every attention block,
LayerNorm/RMSNorm and GELU of the transformer models is fused (the counts are
exact per model), outputs stay within 1e-4 (scale-relative floor) on inputs
other than the verifier's own, ``--target onnx --opset 23`` emits only
standard-domain operators, and no output grows by more than 1% (``size_rule``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from conftest import MODELS
from graphopt.cli.main import main
from graphopt.passmanager import Pipeline
from graphopt.verify import compare, signature_differences
from size_rule import check_size_kept

LAYERS = 2  # every tiny transformer in models/ has two layers
ORT_FUSED = {  # for onnxruntime's CPU execution provider (fuse-skip-norm's default): LayerNorm's residual as Sum
    "bert": {"Attention": LAYERS, "LayerNormalization": 2 * LAYERS + 1, "Sum": 2 * LAYERS + 1, "BiasGelu": LAYERS},
    "vit": {"Attention": LAYERS, "LayerNormalization": 2 * LAYERS + 1, "Sum": 1, "BiasGelu": LAYERS},
    "gpt2": {"Attention": LAYERS, "LayerNormalization": 2 * LAYERS + 1, "Sum": 1, "FastGelu": LAYERS},
    "llama": {"GroupQueryAttention": LAYERS, "SkipSimplifiedLayerNormalization": 2 * LAYERS,
              "SimplifiedLayerNormalization": 1},
}
ONNX_FUSED = {
    "bert": {"Attention": LAYERS, "LayerNormalization": 2 * LAYERS + 1, "Gelu": LAYERS},
    "vit": {"Attention": LAYERS, "LayerNormalization": 2 * LAYERS + 1, "Gelu": LAYERS},
    "gpt2": {"Attention": LAYERS, "LayerNormalization": 2 * LAYERS + 1, "Gelu": LAYERS},
    "llama": {"Attention": LAYERS, "RMSNormalization": 2 * LAYERS + 1, "RotaryEmbedding": 2 * LAYERS},
}
TRANSFORMERS = sorted(p for p in MODELS.glob("*.onnx") if not p.stem.startswith("paddleocr"))
PADDLE = sorted(MODELS.glob("paddleocr_*.onnx"))


def family(path: Path) -> str:
    return path.stem.split("_")[0]


def dims(path: Path) -> dict[str, int]:
    """Batch 2 x sequence 9: shapes other than the verifier's defaults."""
    return {"batch": 2} if family(path) == "vit" else {"batch": 2, "sequence": 9}


def optimize(path: Path, out: Path, capsys, *extra: str) -> dict:
    code = main(["-q", "optimize", str(path), "-o", str(out), "-p", "O2", "--json", *extra])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["rolled_back"] == []
    check_size_kept(path, out, report)
    return report


def op_counts(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("path", TRANSFORMERS, ids=[p.stem for p in TRANSFORMERS])
def test_o2_ort_fuses_every_block(path: Path, tmp_path: Path, capsys):
    out = tmp_path / "o2.onnx"
    optimize(path, out, capsys, "--target", "ort")
    ops = op_counts(out)
    assert {op: ops[op] for op in ORT_FUSED[family(path)]} == ORT_FUSED[family(path)]
    assert ops["Softmax"] == 0 and ops["ReduceMean"] == 0 and ops["Erf"] == 0 and ops["Tanh"] <= 1
    assert ops["SkipLayerNormalization"] == 0
    assert signature_differences(onnx.load(str(path)), onnx.load(str(out))) == []
    result = compare(path, out, rtol=1e-4, atol=1e-6, atol_scale=1e-4, seed=7, dims=dims(path))
    assert result.ok, result.summary()


def test_o2_ort_for_cuda_fuses_skip_layernorm(tmp_path: Path, capsys):
    """For the CUDA execution provider (``--provider cuda``) every residual Add + LayerNorm becomes
    SkipLayerNormalization; ``fuse-skip-norm{for-provider=cuda}`` in the spec does the same."""
    spec = Pipeline.parse("O2").expanded().to_spec().replace("fuse-skip-norm", "fuse-skip-norm{for-provider=cuda}")
    for i, extra in enumerate((["--provider", "cuda"], ["-p", spec])):  # a later -p replaces optimize()'s O2
        out = tmp_path / f"o2_{i}.onnx"
        optimize(MODELS / "bert_tiny_ts.onnx", out, capsys, "--target", "ort", *extra)
        ops = op_counts(out)
        assert (ops["SkipLayerNormalization"], ops["LayerNormalization"], ops["Sum"]) == (2 * LAYERS + 1, 0, 0)


@pytest.mark.parametrize("path", TRANSFORMERS, ids=[p.stem for p in TRANSFORMERS])
def test_o2_onnx_target_is_standard_ops_only(path: Path, tmp_path: Path, capsys):
    out = tmp_path / "o2.onnx"
    report = optimize(path, out, capsys, "--target", "onnx", "--opset", "23")
    model = onnx.load(str(out))
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert report["after"]["opsets"] == {"ai.onnx": 23}
    ops = op_counts(out)
    assert {op: ops[op] for op in ONNX_FUSED[family(path)]} == ONNX_FUSED[family(path)]
    result = compare(path, out, rtol=1e-4, atol=1e-6, atol_scale=1e-4, seed=7, dims=dims(path))
    assert result.ok, result.summary()


@pytest.mark.parametrize("path", PADDLE, ids=[p.stem for p in PADDLE])
def test_o2_on_trained_paddleocr_models(path: Path, tmp_path: Path, capsys):
    out = tmp_path / "o2.onnx"
    optimize(path, out, capsys, "--target", "ort")
    assert op_counts(out)["FusedConv"] > 0
    result = compare(path, out, rtol=1e-4, atol=1e-6, atol_scale=1e-4, seed=3)
    assert result.ok, result.summary()


def test_o2_without_opset_upgrade_keeps_the_opset_for_target_onnx(tmp_path: Path, capsys):
    out = tmp_path / "o2.onnx"
    report = optimize(MODELS / "llama_gqa_tiny_dynamo.onnx", out, capsys, "--target", "onnx")
    assert report["after"]["opsets"] == {"ai.onnx": 18}
    ops = op_counts(out)
    assert ops["Softmax"] == LAYERS and ops["RMSNormalization"] == 0  # both need opset 23: not fused


PADDED = [p for p in TRANSFORMERS if family(p) in ("bert", "gpt2", "llama")]


@pytest.mark.parametrize("path", PADDED, ids=[p.stem for p in PADDED])
def test_o2_ort_keeps_padding_masks_exact(path: Path, tmp_path: Path, capsys):
    """Masks with zeros: right padding in row 0, left padding in row 1 (with a
    causal mask, row 1's first queries see no key at all). The fused ops get
    the model's additive mask as attention_bias, so every row matches. The
    TorchScript SDPA exports of causal models are the exception the option
    ``finite-masks`` documents: their -inf mask makes fully masked rows zero,
    the fused kernels average them, so that model gets right padding only."""
    import numpy as np

    from graphopt.verify import generate_inputs

    out = tmp_path / "o2.onnx"
    optimize(path, out, capsys, "--target", "ort")
    inputs = generate_inputs(onnx.load(str(path)), dims={"batch": 2, "sequence": 7}, seed=5)
    mask = np.ones((2, 7), dtype=np.int64)
    mask[0, 5:] = 0
    if path.stem.endswith("sdpa_ts") and family(path) != "bert":
        mask[1, 4:] = 0
    else:
        mask[1, :3] = 0
    inputs["attention_mask"] = mask
    result = compare(path, out, inputs=inputs, rtol=1e-4, atol=1e-6, atol_scale=1e-4)
    assert result.ok, result.summary()

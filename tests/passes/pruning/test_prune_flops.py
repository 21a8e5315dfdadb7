"""``prune(flops=F)``: the kept block ratio searched so that the whole model's MatMul/Gemm/Conv FLOPs are at most
F of the original's (exact counts on a constructed MLP with a MatMul outside every group), the unreachable and
bad-option cases, whole layers, and ``graphopt prune --flops`` (JSON, exit 2 with nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.analysis.stats import flops
from graphopt.errors import InputError
from graphopt.passes.pruning import PruneOptions, prune
from helpers import restore_logging, run_cli  # noqa: F401 - autouse fixture

MODELS = Path(__file__).resolve().parents[3] / "models"
D, H, T = 4, 16, 6  # width, hidden neurons, tokens


def mlp_with_head() -> ir.Model:
    """x [batch, T, D] -> MatMul w1 [D, H] -> Relu -> MatMul w2 [H, D] = y (a graph output, so its width stays)
    -> MatMul w3 [D, D] = z. Per token: w1 and w2 2*D*H FLOPs each, w3 2*D*D (outside every group)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (D, H)), ("w2", (H, D)), ("w3", (D, D)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"]), helper.make_node("MatMul", ["y", "w3"], ["z"])]
    graph = helper.make_graph(nodes, "mlp_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", T, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", T, D]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", T, D])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


FULL = T * (2 * D * H * 2 + 2 * D * D)  # 1728 at batch 1


def test_flops_target_counts_the_whole_model():
    model = mlp_with_head()
    assert flops(model, {"batch": 1})[0] == FULL
    report = prune(model, PruneOptions(flops=0.5, align=1, method="magnitude", reconstruction="none",
                                       dims=("batch=1",)))
    # k neurons keep T * (16 k + 32) FLOPs: k = 7 gives exactly 0.5, k = 8 would give 0.556
    assert [(g.name, g.kept, g.size) for g in report.groups] == [("layer0.ffn", 7, 16)]
    f = report.flops
    assert (f["target"], f["kept"], f["flops_before"], f["flops_after"]) == (0.5, 0.5, FULL, FULL // 2)
    assert 7 / 16 <= f["ratio"] < 8 / 16 + 1e-9  # the block ratio is not the model's: w3 stays whole
    assert report.achieved == pytest.approx(7 / 16)
    assert flops(model, {"batch": 1})[0] == FULL // 2
    # align 4: 4 neurons (0.333) is the largest allocation within 0.5; 8 would keep 0.556
    model = mlp_with_head()
    report = prune(model, PruneOptions(flops=0.5, align=4, method="magnitude", reconstruction="none"))
    assert report.groups[0].kept == 4 and report.flops["kept"] == pytest.approx((16 * 4 + 32) / 288)


def test_flops_target_unreachable_and_bad_options():
    model = mlp_with_head()
    before = ir.to_text(model)
    with pytest.raises(InputError, match=r"cannot keep as little as 0.05 .* 0\.167 is left"):
        prune(model, PruneOptions(flops=0.05, align=1, method="magnitude", reconstruction="none"))
    with pytest.raises(InputError, match="flops must be in"):
        prune(model, PruneOptions(flops=1.5, method="magnitude", reconstruction="none"))
    with pytest.raises(InputError, match="give one of a ratio, a FLOPs share"):
        prune(model, PruneOptions(flops=0.5, ratio=0.5, method="magnitude", reconstruction="none"))
    with pytest.raises(InputError, match="--dim expects NAME=SIZE"):
        prune(model, PruneOptions(flops=0.5, dims=("batch",), method="magnitude", reconstruction="none"))
    assert ir.to_text(model) == before


def test_flops_target_whole_layers():
    model = ir.load(MODELS / "bert_tiny_ts.onnx")
    dims = {"batch": 1, "sequence": 16}
    full = flops(model, dims, measure=True)[0]
    from graphopt.calibrate.data import CalibrationData

    calib = CalibrationData.generated(ir.to_proto(model), count=4, seed=0, dims=dims)
    report = prune(model, PruneOptions(kinds=("layers",), flops=0.8, dims=("batch=1", "sequence=16")), calib)
    after = flops(model, dims, measure=True)[0]
    removed = [lay.name for lay in report.whole_layers if lay.removed]
    assert len(removed) == 1 and report.flops["flops_after"] == after and after / full <= 0.8
    assert report.flops["kept"] == pytest.approx(after / full)


def test_cli_flops(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    ir.save(mlp_with_head(), src)
    out = tmp_path / "p.onnx"
    code, stdout, stderr = run_cli(capsys, "prune", src, "-o", out, "--flops", "0.5", "--align", "1", "--method",
                                   "magnitude", "--reconstruct", "none", "--dim", "batch=1", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["flops"]["kept"] == 0.5 and doc["groups"][0]["kept"] == 7
    assert (doc["flops_before"], doc["flops_after"]) == (FULL, FULL // 2)
    for bad, message in ((["--flops", "1.2"], "--flops must be in (0, 1)"),
                         (["--flops", "0.05", "--align", "1"], "raise --flops to at least 0.167")):
        dst = tmp_path / "bad.onnx"
        code, _, stderr = run_cli(capsys, "prune", src, "-o", dst, *bad, "--method", "magnitude", "--reconstruct",
                                  "none")
        assert code == 2 and message in " ".join(stderr.split()) and not dst.exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's mutually exclusive group
        run_cli(capsys, "prune", src, "-o", tmp_path / "x.onnx", "--flops", "0.5", "--ratio", "0.5")
    assert exit_info.value.code == 2 and "not allowed with argument --flops" in capsys.readouterr().err

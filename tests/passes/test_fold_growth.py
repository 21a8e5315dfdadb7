"""fold-constants' growth rule (issue 20, item 3): a fold whose output is
more than ``max-growth`` (default 1) times the bytes of its constant inputs
is skipped and counted (``skipped_growth``) unless the output has at most
``small-elements`` (64) elements; ``max-growth=inf`` allows it. End to end:
a model whose MatMul weights are stored int8 and dequantized in the graph
(Cast -> Mul by scale) keeps its size under ``graphopt optimize -p O2``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.passes.folding.constants import FoldConstants, FoldConstantsOptions, SmallFolder
from graphopt.passmanager import PassContext, Pipeline
from helpers import restore_logging, run_cli  # noqa: F401 - autouse fixture

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def _fold(text: str, **options) -> tuple[ir.Model, dict]:  # noqa: ANN003
    model = ir.from_text(HEAD + text)
    stats = FoldConstants(FoldConstantsOptions(**options)).run(model, PassContext()).stats
    return model, stats


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _int8_weight_text(n: int) -> str:
    values = ", ".join(str((i * 37) % 255 - 127) for i in range(n * n))
    return f"""g (float[2, {n}] x) => (float[2, {n}] y)
    <int8[{n}, {n}] w_q = {{{values}}}, float[{n}] scale = {{{", ".join(["0.01"] * n)}}}>
    {{
      w_f = Cast<to = 1>(w_q)
      w = Mul(w_f, scale)
      y = MatMul(x, w)
    }}"""


def test_int8_weight_cast_is_not_folded_by_default():
    """Cast int8 [16, 16] (256 bytes) -> float (1024 bytes): four times its input, so it stays; the Mul
    after it reads a non-constant and is not a fold candidate."""
    model, stats = _fold(_int8_weight_text(16))
    assert _ops(model) == ["Cast", "Mul", "MatMul"]
    assert (stats["folded"], stats["skipped_growth"], stats["skipped_size"]) == (0, 1, 0)
    assert model.graph.initializers["w_q"].const_value.dtype == ir.DataType.INT8


def test_max_growth_inf_folds_the_weight():
    model, stats = _fold(_int8_weight_text(16), max_growth=math.inf)
    assert _ops(model) == ["MatMul"]
    assert (stats["folded"], stats["skipped_growth"]) == (2, 0)
    w = model.graph.node(0).inputs[1].const_value
    assert (w.dtype, tuple(w.shape.numpy())) == (ir.DataType.FLOAT, (16, 16))
    expected = np.array([(i * 37) % 255 - 127 for i in range(256)], np.float32).reshape(16, 16) * np.float32(0.01)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


def test_max_growth_four_allows_exactly_the_cast():
    """The rule compares output bytes with max-growth x input bytes: 1024 <= 4 x 256 folds the Cast; the Mul
    (1024 bytes from 1024 + 64) does not grow."""
    model, stats = _fold(_int8_weight_text(16), max_growth=4.0)
    assert _ops(model) == ["MatMul"] and stats["skipped_growth"] == 0


def test_small_outputs_fold_whatever_their_growth():
    """An 8 x 8 int8 weight (64 elements) is a small output: folded although it grows 4x."""
    model, stats = _fold(_int8_weight_text(8))
    assert _ops(model) == ["MatMul"]
    assert (stats["folded"], stats["skipped_growth"]) == (2, 0)
    model, stats = _fold(_int8_weight_text(8), small_elements=0)
    assert _ops(model) == ["Cast", "Mul", "MatMul"] and stats["skipped_growth"] == 1


def test_folds_that_do_not_grow_still_fold():
    """Transpose of a weight (same bytes) and a shape computation (Range of 8 from 3 scalars: small)."""
    model, stats = _fold("""g (float[2, 100] x) => (float[2, 3] y, int64[8] r)
    <float[3, 100] w = {""" + ", ".join(["0.5"] * 300) + """}, int64 start = {0}, int64 limit = {8},
     int64 delta = {1}>
    {
      wt = Transpose<perm = [1, 0]>(w)
      y = MatMul(x, wt)
      r = Range(start, limit, delta)
    }""")
    assert _ops(model) == ["MatMul"]
    assert (stats["folded"], stats["skipped_growth"]) == (2, 0)


def test_transpose_of_a_shared_table_is_not_stored_twice():
    """A tied embedding: the [100, 8] table is read by a Gather and by a Transpose (the output projection).
    The Transpose owns half of the table (3200 of 6400 bytes) and would add a 6400-byte copy: skipped.
    Read by the Transpose alone, the table is replaced by its transpose (same bytes): folded."""
    table = ", ".join(f"{0.01 * i:.2f}" for i in range(800))
    shared = f"""g (int64[2] ids, float[2, 8] h) => (float[2, 8] e, float[2, 100] logits)
    <float[100, 8] table = {{{table}}}>
    {{
      e = Gather(table, ids)
      wt = Transpose<perm = [1, 0]>(table)
      logits = MatMul(h, wt)
    }}"""
    model, stats = _fold(shared)
    assert _ops(model) == ["Gather", "Transpose", "MatMul"]
    assert (stats["folded"], stats["skipped_growth"]) == (0, 1)
    alone = shared.replace("(float[2, 8] e, float[2, 100] logits)", "(float[2, 100] logits)").replace(
        "e = Gather(table, ids)", "")
    model, stats = _fold(alone)
    assert _ops(model) == ["MatMul"] and stats["folded"] == 1


def test_growth_is_checked_for_onnxruntime_evaluated_folds():
    """OneHot has no numpy kernel: the batched onnxruntime path checks the declared static output size
    ([8, 100] float = 3200 bytes from 64 + 8 + 8 bytes) before queueing it."""
    text = """g (float[8, 100] x) => (float[8, 100] y)
    <int64[8] idx = {0, 1, 2, 3, 4, 5, 6, 7}, int64 depth = {100}, float[2] values = {0.0, 1.0}>
    {
      hot = OneHot<axis = -1>(idx, depth, values)
      y = Add(x, hot)
    }"""
    def shaped() -> ir.Model:  # OneHot's size is unknown without a static declared shape: never folded then
        model = ir.from_text(HEAD + text)
        model.graph.node(0).outputs[0].shape = ir.Shape([8, 100])
        model.graph.node(0).outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
        return model

    model = shaped()
    stats = FoldConstants().run(model, PassContext()).stats
    assert _ops(model) == ["OneHot", "Add"]
    assert (stats["batched"], stats["skipped_growth"]) == (0, 1)
    model = shaped()
    stats = FoldConstants(FoldConstantsOptions(max_growth=math.inf)).run(model, PassContext()).stats
    assert _ops(model) == ["Add"] and stats["batched"] == 1


def test_small_folder_stays_within_small_outputs():
    """fold-shapes' SmallFolder folds outputs of at most 64 elements (its max_elements = small-elements):
    an Expand to [8, 8] int64 (512 bytes from 24) grows 21x and is still folded; [8, 9] is not tried."""
    def expand(dims: str) -> ir.Model:
        return ir.from_text(HEAD + f"""g (int64[{dims}] x) => (int64[{dims}] y)
        <int64[1] one = {{1}}, int64[2] shape = {{{dims}}}>
        {{
          e = Expand(one, shape)
          y = Add(x, e)
        }}""")

    model = expand("8, 8")
    folder = SmallFolder(model, model.graph)
    assert folder.fold(model.graph.node(0)) is not None
    assert (folder.stats["folded"], folder.stats["skipped_growth"]) == (1, 0)
    model = expand("8, 9")
    assert SmallFolder(model, model.graph).fold(model.graph.node(0)) is None


# -- end to end ---------------------------------------------------------------------------------

LAYERS, WIDTH = 4, 256


def int8_weight_transformer_mlp(path: Path) -> Path:
    """A stack of MatMuls whose [256, 256] weights are stored int8 with a per-column float scale and
    dequantized in the graph (``Cast(to=float) -> Mul(scale)``), as weight-compressed Transformer exports do,
    with Relu between; opset 17, input ``x: float[batch, 256]``."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(LAYERS):
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (WIDTH, WIDTH)).astype(np.int8), f"w{i}_int8"),
                  numpy_helper.from_array((rng.random(WIDTH) * 0.01 + 0.001).astype(np.float32), f"w{i}_scale")]
        nodes += [helper.make_node("Cast", [f"w{i}_int8"], [f"w{i}_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"w{i}_f", f"w{i}_scale"], [f"w{i}"]),
                  helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "int8_weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    ["batch", WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _fold_stats(report: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for record in report["passes"]:
        if record["name"].split("{")[0] == "fold-constants":
            for key, value in (record.get("stats") or {}).items():
                totals[key] = totals.get(key, 0) + value
    return totals


def test_o2_keeps_int8_stored_weights(tmp_path, capsys):
    src = int8_weight_transformer_mlp(tmp_path / "in.onnx")
    out = tmp_path / "o2.onnx"
    code, stdout, stderr = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", "O2", "--target", "ort", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    before, after = src.stat().st_size, out.stat().st_size
    assert before > LAYERS * WIDTH * WIDTH  # 262144 bytes of int8 weights
    assert abs(after - before) <= 0.01 * before, (before, after)
    assert _fold_stats(report)["skipped_growth"] >= LAYERS
    assert _fold_stats(report)["folded"] == 0
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("Cast") == LAYERS and ops.count("MatMul") == LAYERS
    assert {i.name: i.data_type for i in onnx.load(out).graph.initializer}["w0_int8"] == TensorProto.INT8


def test_o2_with_max_growth_inf_folds_the_weights(tmp_path, capsys):
    src = int8_weight_transformer_mlp(tmp_path / "in.onnx")
    out = tmp_path / "o2.onnx"
    spec = Pipeline.parse("O2").expanded().to_spec().replace("fold-constants", "fold-constants{max-growth=inf}")
    code, stdout, stderr = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", spec, "--target", "ort", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert out.stat().st_size > 3.9 * src.stat().st_size  # every weight is float32 now: ~4x
    assert _fold_stats(report)["folded"] == 2 * LAYERS and _fold_stats(report)["skipped_growth"] == 0
    assert [n.op_type for n in onnx.load(out).graph.node] == ["MatMul", "Relu"] * LAYERS

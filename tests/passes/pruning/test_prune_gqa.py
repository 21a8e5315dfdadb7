"""``prune`` on grouped-query attention (models/llama_gqa_tiny_ts.onnx: hidden 64, 4 query heads and 2 KV heads
of 16, n_rep 2, FFN 128, 2 layers): ``heads`` removes a KV head with its query group, ``query-heads`` removes the
same query head of every group (every KV head kept); the two forms of one layer are never mixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphopt import ir
from graphopt.calibrate.data import CalibrationData
from graphopt.errors import InputError
from graphopt.passes.pruning import PruneOptions, prune
from graphopt.passes.pruning.plan import build_plan

LLAMA = Path(__file__).resolve().parents[3] / "models" / "llama_gqa_tiny_ts.onnx"
BERT = Path(__file__).resolve().parents[3] / "models" / "bert_tiny_ts.onnx"
TOKENS = 128


def _calib(path: Path = LLAMA) -> list[dict]:
    return list(CalibrationData.generated(onnx.load(str(path)), count=4, seed=0, dims={"batch": 1, "sequence": 16}))


def _weights(model: ir.Model) -> list[tuple[int, ...]]:
    """The 2-D weight shapes of the attention and MLP projections, in graph order (embedding and LM head
    excluded)."""
    return [tuple(v.const_value.shape.numpy()) for v in model.graph.initializers.values()
            if v.const_value is not None and len(v.const_value.shape) == 2 and 1000 not in v.const_value.shape]


def _run(path_or_model, batches):  # noqa: ANN001, ANN202
    proto = ir.to_proto(path_or_model) if isinstance(path_or_model, ir.Model) else onnx.load(str(path_or_model))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(None, b)[0] for b in batches]


def test_query_heads_unit_flops_count_every_group():
    """A query-heads unit is one query head in each of the 2 KV groups: q columns 2 x 16, o_proj rows 2 x 16 at
    every token, and its QK/AV products over 2 heads; a KV-head unit has the same q/o share plus its k/v columns."""
    from graphopt.analysis.groups import KINDS, find_groups

    model = ir.load(LLAMA)
    analysis = find_groups(model, KINDS)
    plans, _ = build_plan(model, analysis, ("heads", "query-heads"), tokens=TOKENS)
    by_name = {p.name: p for p in plans}
    hidden, head_dim, n_kv, n_rep = 64, 16, 2, 2
    q_and_o = 2 * (hidden * head_dim * n_kv) * 2  # q columns and o_proj rows, 2 FLOPs per multiply-add
    assert by_name["layer0.attn.query-heads"].unit_flops == q_and_o + 4 * TOKENS * head_dim * n_kv
    assert by_name["layer0.attn.query-heads"].step == 1 and by_name["layer0.attn.query-heads"].size == n_rep
    kv = by_name["layer0.attn.kv-heads"]
    assert kv.unit_flops == q_and_o + 2 * 2 * hidden * head_dim + 4 * TOKENS * head_dim * n_rep
    assert kv.size == n_kv


def test_query_heads_prune_every_group_and_keep_the_kv_heads():
    calib = _calib()
    model = ir.load(LLAMA)
    # the MLPs hold half of the block FLOPs: 0.75 of them keeps half of the query heads
    report = prune(model, PruneOptions(ratio=0.75, kinds=("query-heads",), reconstruction="least-squares"), calib)
    kept = {g.name: (g.kept, g.size) for g in report.groups}
    assert kept == {"layer0.attn.query-heads": (1, 2), "layer1.attn.query-heads": (1, 2)}
    # per layer: q_proj 64 -> 32 columns (one head of 16 in each group), k/v 32 each kept, o_proj 64 -> 32 rows;
    # the MLP untouched (kinds left out)
    assert _weights(model) == [(64, 32), (64, 32), (64, 32), (32, 64), (64, 128), (64, 128), (128, 64)] * 2
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    ref, out = _run(LLAMA, calib), _run(model, calib)
    assert all(o.shape == r.shape for o, r in zip(out, ref))
    cos = np.mean([np.dot(o.ravel(), r.ravel()) / np.linalg.norm(o) / np.linalg.norm(r) for o, r in zip(out, ref)])
    assert 0.5 < cos < 1.0


def test_kv_heads_are_the_heads_kind():
    calib = _calib()
    model = ir.load(LLAMA)
    report = prune(model, PruneOptions(ratio=0.5, kinds=("heads",)), calib)
    assert {g.name: (g.kept, g.size) for g in report.groups} == {"layer0.attn.kv-heads": (1, 2),
                                                                 "layer1.attn.kv-heads": (1, 2)}
    # per layer: q 64 -> 32 (the group's 2 heads), k and v 32 -> 16, o_proj 64 -> 32 rows
    assert _weights(model)[:4] == [(64, 32), (64, 16), (64, 16), (32, 64)]


def test_query_heads_errors():
    calib = _calib()
    with pytest.raises(InputError, match="two forms of the same attention; choose one"):
        prune(ir.load(LLAMA), PruneOptions(ratio=0.5, kinds=("heads", "query-heads")), calib)
    with pytest.raises(InputError, match="has no query-heads group"):
        prune(ir.load(BERT), PruneOptions(ratio=0.5, kinds=("query-heads",)), _calib(BERT))

#!/usr/bin/env python3
"""Cut the golden-test inputs of the fusion rules out of the committed models.

Each case names a model in ``models/``, the pipeline that brings it to the
state the rule sees (``O1`` and the passes before the rule's own in ``O2``)
and the rule. The tool runs that pipeline, finds the first site where the
rule fires, and extracts the subgraph around it with
``onnx.utils.Extractor``: from the site's outputs back to its boundary
values, which become graph inputs (declared with their symbolic shapes, so
``batch`` and ``sequence`` stay symbolic):

- attention: the block's projection input and the additive mask (the
  rotary tables and the repeat of K/V stay inside, back to the graph inputs);
- rotary: the rotated heads (the tables stay inside);
- softmax-nan-guard: the scores and the mask's boolean condition (the
  ``Where(cond, 0, -inf)`` stays inside);
- every other rule: the non-constant float values the match binds (shape
  tensors are computed inside, from the graph inputs).

The subgraphs are written to ``tests/golden/fusion/<pass>/<case>.onnx`` (a
few hundred kB each, committed); the ``.golden`` files beside them name them
with ``model:`` and hold the expected canonical text (``pytest
--update-golden`` writes it; review the diff).

Usage::

    python tools/golden_subgraphs.py            # every case
    python tools/golden_subgraphs.py --only attention
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES: list[tuple[str, str, str, str]] = [
    # (case name, model, pipeline before the rule, rule)
    ("layernorm_paddleocr_rec", "paddleocr_rec", "O1", "layernorm"),
    ("layernorm_ts_opset14", "bert_tiny_opset14_ts", "O1", "layernorm"),
    ("rmsnorm_llama_ts", "llama_gqa_tiny_ts", "O1", "rmsnorm"),
    ("rmsnorm_llama_dynamo", "llama_gqa_tiny_dynamo", "O1", "rmsnorm"),
    ("skip_layernorm_bert_ts", "bert_tiny_ts", "O1,fuse-norm", "skip-layernorm"),
    ("skip_layernorm_gpt2_dynamo", "gpt2_tiny_dynamo", "O1,fuse-norm", "skip-layernorm"),
    ("residual_sum_vit_dynamo", "vit_tiny_dynamo", "O1,fuse-norm", "residual-sum"),
    ("residual_sum_bert_ts", "bert_tiny_ts", "O1,fuse-norm", "residual-sum"),
    ("skip_rmsnorm_llama_ts", "llama_gqa_tiny_ts", "O1,fuse-norm", "skip-rmsnorm"),
    ("skip_rmsnorm_llama_dynamo", "llama_gqa_tiny_dynamo", "O1,fuse-norm", "skip-rmsnorm"),
    ("gelu_erf_bert_ts", "bert_tiny_ts", "O1", "gelu-erf"),
    ("gelu_erf_vit_dynamo", "vit_tiny_dynamo", "O1", "gelu-erf"),
    ("gelu_tanh_gpt2_ts", "gpt2_tiny_ts", "O1", "gelu-tanh"),
    ("gelu_tanh_gpt2_dynamo", "gpt2_tiny_dynamo", "O1", "gelu-tanh"),
    ("bias_gelu_bert_ts", "bert_tiny_ts", "O1,fuse-gelu", "bias-gelu"),
    ("bias_gelu_vit_dynamo", "vit_tiny_dynamo", "O1,fuse-gelu", "bias-gelu"),
    ("softmax_nan_guard_sdpa_ts", "bert_tiny_sdpa_ts", "O1", "softmax-nan-guard"),
    ("softmax_nan_guard_sdpa_dynamo", "bert_tiny_sdpa_dynamo", "O1", "softmax-nan-guard"),
    ("scale_after_matmul_sdpa_ts", "bert_tiny_sdpa_ts", "O1", "scale-after-matmul"),
    ("transpose_via_reshape_sdpa_dynamo", "bert_tiny_sdpa_dynamo", "O1", "transpose-via-reshape"),
    ("reshape_to_same_shape_sdpa_ts", "bert_tiny_sdpa_ts", "O1", "reshape-to-same-shape"),
    ("gemm_as_matmul_gpt2_dynamo", "gpt2_tiny_dynamo", "O1", "gemm-as-matmul"),
    ("attention_bert_ts", "bert_tiny_ts", "O1,canonicalize-fusion,dce", "attention"),
    ("attention_bert_dynamo", "bert_tiny_dynamo", "O1,canonicalize-fusion,dce", "attention"),
    ("attention_gpt2_ts", "gpt2_tiny_ts", "O1,canonicalize-fusion,dce", "attention"),
    ("attention_vit_dynamo", "vit_tiny_dynamo", "O1,canonicalize-fusion,dce", "attention"),
    ("attention_gqa_llama_ts", "llama_gqa_tiny_ts", "O1,canonicalize-fusion,dce", "attention"),
    ("attention_gqa_llama_dynamo", "llama_gqa_tiny_dynamo", "O1,canonicalize-fusion,dce", "attention"),
    ("attention_sdpa_bert_dynamo", "bert_tiny_sdpa_dynamo", "O1,fixpoint(canonicalize-fusion,dce)", "attention"),
    ("attention_sdpa_llama_ts", "llama_gqa_tiny_sdpa_ts", "O1,fixpoint(canonicalize-fusion,dce)", "attention"),
    ("attention_packed_paddleocr_rec", "paddleocr_rec", "O1,canonicalize-fusion,dce", "attention"),
    ("rotary_llama_ts", "llama_gqa_tiny_ts", "O1", "rotary"),
    ("rotary_llama_dynamo", "llama_gqa_tiny_dynamo", "O1", "rotary"),
    ("conv_activation_paddleocr_cls", "paddleocr_cls", "O1", "conv-activation"),
]

CACHE_MODELS = {"paddleocr_rec"}

RULE_OPTIONS = {"skip-layernorm": {"for_provider": "cuda"}}
"""Options of the rule's pass where its defaults keep the rule from firing
(``skip-layernorm`` fires for the CUDA execution provider only)."""


def _model_path(name: str) -> Path:
    from corpus.exporters import cache_dir

    local = REPO / "models" / f"{name}.onnx"
    return local if local.exists() or name not in CACHE_MODELS else cache_dir() / f"{name}.onnx"


def boundary(rule_name: str, match, env) -> list:  # noqa: ANN001 - (Match, RuleEnv) -> list[ir.Value]
    """The values the extracted subgraph starts from (module docstring)."""
    from graphopt import ir
    from graphopt.pattern import CheckContext

    if rule_name == "attention":
        plan = match.notes["plan"]
        ctx = CheckContext(match, env)
        from graphopt.passes.fusion.attention import _bsd
        from graphopt.passes.fusion.attention_parts import linear_of

        stops = []
        for side in (plan.q, plan.k, plan.v):
            source = _bsd(side)
            linear = linear_of(ctx, source)
            split = source.producer()
            if linear is None and split is not None and split.op_type == "Split":
                linear = linear_of(ctx, split.inputs[0])
            value = linear.x if linear is not None else source
            if all(value is not s for s in stops):
                stops.append(value)
        if plan.mask is not None:
            stops.append(plan.mask)
        return stops
    if rule_name == "rotary":
        return [match.values["x"]]
    if rule_name == "softmax-nan-guard":  # the mask's Where(cond, 0, -inf) stays inside: its constants matter
        where = match.values["m"].producer()
        return [match.values["x"], where.inputs[0]]
    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    # Shape tensors (int64 Reshape targets) are computed inside, back to the graph inputs.
    return [v for v in match.values.values() if v is not None and not ir.is_constant(v) and v.dtype in floats]


def extract(case: str, model_name: str, prefix: str, rule_name: str, out_dir: Path) -> Path:
    """Write one case's subgraph; returns its path."""
    import onnx
    from onnx.utils import Extractor

    from graphopt import ir
    from graphopt.analysis.shapes import symbolic_shapes
    from graphopt.ir.check import check_model_proto
    from graphopt.passmanager import PassContext, PassManager
    from graphopt.pattern import RuleEnv, find_rule

    from graphopt.passmanager import get_pass

    pass_name, rule = find_rule(rule_name)
    model = ir.load(_model_path(model_name))
    model = PassManager(prefix + ",infer-shapes", PassContext(target="ort")).run(model).model
    pass_cls = get_pass(pass_name)
    options = pass_cls.Options(**RULE_OPTIONS.get(rule_name, {}))
    env = RuleEnv(model, "ort", options, shapes=symbolic_shapes(model))
    for graph in ir.all_graphs(model):
        for node in reversed(list(graph)):
            match, _ = rule.try_match(node, env)
            if match is not None:
                break
        else:
            continue
        break
    else:
        raise SystemExit(f"{case}: rule {rule_name} fires nowhere in {model_name} after {prefix}")
    inputs = boundary(rule_name, match, env)
    # The outputs the model reads beyond the match (the norm, and the residual sum where the next layer reads it).
    outputs = [v for i, v in enumerate(match.outputs) if match.used_outside(i)] or match.outputs[:1]
    proto = ir.to_proto(model)
    declared = {}
    for value in inputs:
        dims = env.shapes.shape(value)
        declared[value.name] = onnx.helper.make_tensor_value_info(
            value.name, int(value.dtype), [d if isinstance(d, (int, str)) else None for d in dims]
            if dims is not None else None)
    extractor = Extractor(proto)
    graph_inputs = {i.name for i in proto.graph.input}
    needed = _reached_inputs(proto, {v.name for v in inputs}, [v.name for v in outputs]) & graph_inputs
    sub = extractor.extract_model([v.name for v in inputs] + sorted(needed), [v.name for v in outputs])
    for i, vi in enumerate(sub.graph.input):
        if vi.name in declared:
            sub.graph.input[i].CopyFrom(declared[vi.name])
    sub.ir_version = 10
    out = out_dir / pass_name / f"{case}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    check_model_proto(sub)
    onnx.save(sub, str(out))
    print(f"[golden] {out.relative_to(REPO)}: {len(sub.graph.node)} nodes, inputs "
          f"{[i.name for i in sub.graph.input]}")
    return out


def _reached_inputs(proto, stops: set[str], outputs: list[str]) -> set[str]:  # noqa: ANN001 - onnx.ModelProto
    """Names read by the nodes between ``stops`` and ``outputs`` (graph inputs among them)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen or name in stops or not name:
            continue
        seen.add(name)
        node = producer.get(name)
        if node is not None:
            stack.extend(node.input)
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", help="only cases whose name contains one of these")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "golden" / "fusion")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO / "tools"))
    for case, model, prefix, rule in CASES:
        if args.only and not any(o in case for o in args.only):
            continue
        extract(case, model, prefix, rule, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

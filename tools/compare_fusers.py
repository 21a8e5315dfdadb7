#!/usr/bin/env python3
"""Compare graphopt's ``O2 --target ort`` with the peer fusers, in one run.

For each model this makes three optimized copies, each in its own process
(peak RSS read with ``os.wait4``):

- ``graphopt``: ``graphopt optimize IN -o OUT -p O2 --target ort --no-verify``
  (numerics are checked here, on the benchmark's inputs);
- ``onnxscript``: ``onnxscript.rewriter.ort_fusions.optimize_for_ort``;
- ``ort-transformers``: ``onnxruntime.transformers.optimizer.optimize_model``
  with the model type of the architecture (``bert`` for BERT, ``gpt2`` for
  GPT-2 and LLaMA, ``vit`` for ViT), its heads and hidden size
  (:data:`HEADS`), ``opt_level=0``: fusions only.

Then it counts the fused operators in each, compares each copy's outputs with
the original's on the same inputs (onnxruntime, ORT_ENABLE_BASIC; the
absolute error relative to the output's scale and elementwise at rtol 1e-4
with a floor of 1e-4 x max|output|), and times the original and the three
copies interleaved in one process with ``graphopt.bench.benchmark``
(ORT_ENABLE_ALL, 2 intra-op threads, spinning off; BENCH.md). Reported per
model: fused-op counts, nodes, median and p90 latency, ratio to the original
and graphopt's ratio to each peer (a ratio within 0.97-1.03 is noise).

Examples::

    python tools/compare_fusers.py ~/.cache/graphopt/corpus/bert_base_ts.onnx --seconds 20
    python tools/compare_fusers.py --corpus --json fusers.json
    python tools/compare_fusers.py models/paddleocr_cls.onnx --shape x=1,3,48,192
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GRAPHOPT_CACHE") or Path.home() / ".cache" / "graphopt" / "corpus")

TOOLS = ("graphopt", "onnxscript", "ort-transformers")
CORPUS = ["bert_base_ts", "bert_base_dynamo", "gpt2_small_ts", "gpt2_small_dynamo", "llama_gqa_600m_ts",
          "llama_gqa_600m_dynamo", "vit_base_ts", "vit_base_dynamo"]
REAL = {"paddleocr_det": "x=1,3,320,320", "paddleocr_cls": "x=1,3,48,192", "paddleocr_rec": "x=1,3,48,320"}
FUSED = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "LayerNormalization",
         "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "Gelu",
         "FastGelu", "BiasGelu", "RotaryEmbedding", "EmbedLayerNormalization", "FusedConv", "FusedGemm",
         "FusedMatMul", "RMSNormalization")


HEADS = {"bert_base": (12, 768), "gpt2_small": (12, 768), "vit_base": (12, 768), "llama_gqa_600m": (12, 1536),
         "llama_gqa_large": (12, 1536), "bert_tiny": (4, 64), "gpt2_tiny": (4, 64), "vit_tiny": (4, 64),
         "llama_gqa_tiny": (4, 64)}
"""(num_heads, hidden_size) by corpus model prefix, for the onnxruntime optimizer (0, 0 = let it detect)."""


def heads_of(name: str) -> tuple[int, int]:
    """The attention heads and hidden size of a corpus model (0, 0 when unknown)."""
    return next((v for k, v in HEADS.items() if name.startswith(k)), (0, 0))


def model_type(name: str) -> str:
    """The onnxruntime transformers optimizer's model type for a corpus model."""
    if name.startswith("bert"):
        return "bert"
    if name.startswith("vit"):
        return "vit"
    return "gpt2"


def worker(tool: str, src: str, dst: str) -> int:
    """Make one optimized copy (runs in a child process)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    big = Path(src + ".data").exists()
    if tool == "graphopt":
        from graphopt.cli.main import main

        return main(["-q", "optimize", src, "-o", dst, "-p", "O2", "--target", "ort", "--no-verify"])
    if tool == "onnxscript":
        import onnx_ir as ir
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        model = ir.load(src)
        result = optimize_for_ort(model)
        model = result[0] if isinstance(result, tuple) else result
        model.ir_version = 10
        ir.save(model, dst, external_data=Path(dst).name + ".data" if big else None)
        return 0
    from onnxruntime.transformers import optimizer

    heads, hidden = heads_of(Path(src).stem)
    optimized = optimizer.optimize_model(src, model_type=model_type(Path(src).stem), num_heads=heads,
                                         hidden_size=hidden, opt_level=0, use_gpu=False)
    optimized.model.ir_version = 10
    optimized.save_model_to_file(dst, use_external_data_format=big)
    return 0


def spawn(tool: str, src: Path, dst: Path, timeout: float) -> dict[str, Any]:
    """Run :func:`worker` in a child process; wall time (s) and peak RSS (MB,
    the child's own ``ru_maxrss`` from ``os.wait4``)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", tool, str(src), str(dst)],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not dst.exists():
        last = (out or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"ok": False, "error": last[0][:300], "seconds": seconds}
    return {"ok": True, "seconds": seconds, "rss_mb": usage.ru_maxrss / 1024}


def fused_counts(path: Path) -> tuple[dict[str, int], int]:
    """Fused-operator counts (by op type) and the node count of a model file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    return {op: ops[op] for op in FUSED if ops[op]}, len(model.graph.node)


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """``["x=1,3,48,192"]`` -> ``{"x": [1, 3, 48, 192]}``."""
    shapes = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        shapes[name] = [int(d) for d in dims.split(",")]
    return shapes


def make_inputs(path: Path, args: argparse.Namespace, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Inputs for every model of one comparison: generated by graphopt's
    verifier at batch/sequence (or the given shapes for image models)."""
    import numpy as np

    from graphopt.ir import load_proto
    from graphopt.verify import generate_inputs

    proto = load_proto(path)
    if shapes:
        rng = np.random.default_rng(0)
        return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    from graphopt.verify.inputs import model_dim_names

    names = set(model_dim_names(proto))
    dims = {k: v for k, v in {"batch": args.batch, "sequence": args.sequence}.items() if k in names}
    return generate_inputs(proto, dims=dims, seed=0)


def numerics(ref: Path, got: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs of ``got`` against ``ref``'s on ``inputs`` (module docstring)."""
    from graphopt.verify import compare

    report = compare(str(ref), str(got), inputs=inputs, rtol=1e-4, atol=1e-6, atol_scale=1e-4)
    worst = max(report.outputs, key=lambda o: o.scale_rel_err, default=None)
    return {"ok": report.ok, "scale_rel_err": worst.scale_rel_err if worst else 0.0,
            "max_abs_err": worst.max_abs_err if worst else 0.0,
            "cosine": min((o.cosine for o in report.outputs if o.cosine is not None), default=None),
            "summary": report.summary() if not report.ok else ""}


def compare_model(path: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Optimize ``path`` with every tool, check, count and time them."""
    from graphopt.bench import benchmark
    from graphopt.errors import GraphoptError

    name = path.stem
    shapes = parse_shapes(args.shape) or parse_shapes([REAL[name]] if name in REAL else None)
    entry: dict[str, Any] = {"model": name, "path": str(path), "tools": {}}
    entry["original"] = dict(zip(("fused", "nodes"), fused_counts(path)))
    inputs = make_inputs(path, args, shapes)
    entry["inputs"] = {k: list(v.shape) for k, v in inputs.items()}
    timed = [path]
    for tool in args.tools:
        dst = workdir / f"{name}.{tool}.onnx"
        result = spawn(tool, path, dst, args.timeout)
        if result["ok"]:
            result["fused"], result["nodes"] = fused_counts(dst)
            try:
                result["numerics"] = numerics(path, dst, inputs)
                timed.append(dst)
            except GraphoptError as e:  # the tool wrote a model onnxruntime cannot run
                result.update(ok=False, error=f"output does not run in onnxruntime: {str(e).splitlines()[0][:240]}")
        entry["tools"][tool] = result
        print(f"[fusers] {name} {tool}: {'ok' if result['ok'] else result.get('error')}", flush=True)
    report = benchmark(timed, inputs=inputs, threads=args.threads, opt_level="all", seconds=args.seconds,
                       warmup=args.warmup)
    entry["load"] = [report.load_before, report.load_after]
    entry["original"].update(median_ms=report.models[0].median_ms, p90_ms=report.models[0].p90_ms)
    by_path = {t.path: t for t in report.models}
    for tool in args.tools:
        result = entry["tools"][tool]
        timing = by_path.get(str(workdir / f"{name}.{tool}.onnx"))
        if timing is not None:
            result.update(median_ms=timing.median_ms, p90_ms=timing.p90_ms, ratio=timing.ratio, runs=timing.runs)
    ours = entry["tools"].get("graphopt", {}).get("median_ms")
    for tool in args.tools:
        peer = entry["tools"][tool].get("median_ms")
        if ours and peer and tool != "graphopt":
            entry["tools"][tool]["graphopt_over_peer"] = ours / peer
    return entry


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of a run."""
    rows = ["| model | variant | fused ops | nodes | median ms | p90 ms | vs original | graphopt / this | "
            "scale rel err | ok |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for e in results:
        o = e["original"]
        rows.append(f"| {e['model']} | original | {_ops(o['fused'])} | {o['nodes']} | {o.get('median_ms', 0):.2f} "
                    f"| {o.get('p90_ms', 0):.2f} | 1.000 | | | |")
        for tool, r in e["tools"].items():
            if not r.get("ok"):
                rows.append(f"| {e['model']} | {tool} | failed: {str(r.get('error'))[:80]} | | | | | | | |")
                continue
            n = r["numerics"]
            rel = f"{r['graphopt_over_peer']:.3f}" if "graphopt_over_peer" in r else ""
            rows.append(f"| {e['model']} | {tool} | {_ops(r['fused'])} | {r['nodes']} | {r['median_ms']:.2f} | "
                        f"{r['p90_ms']:.2f} | {r['ratio']:.3f} | {rel} | {n['scale_rel_err']:.2e} | "
                        f"{'yes' if n['ok'] else 'NO'} |")
    return "\n".join(rows)


def _ops(fused: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in fused.items()) or "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path, help="models to compare")
    p.add_argument("--corpus", action="store_true", help="the full-size corpus in the cache, plus PaddleOCR")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sequence", type=int, default=128)
    p.add_argument("--shape", action="append", metavar="NAME=D,D,...", help="input shape (image models)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model (all variants)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per optimizer run")
    p.add_argument("--workdir", type=Path, help="where optimized copies go (default: a temp dir)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    models = list(args.models)
    if args.corpus:
        models += [CACHE / f"{m}.onnx" for m in CORPUS] + [
            (REPO / "models" if (REPO / "models" / f"{m}.onnx").exists() else CACHE) / f"{m}.onnx" for m in REAL]
    missing = [m for m in models if not m.exists()]
    if not models or missing:
        p.error(f"no models given or missing: {[str(m) for m in missing]}; see tools/make_corpus.py")
    results = []
    with tempfile.TemporaryDirectory(prefix="graphopt-fusers-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for path in models:
            results.append(compare_model(path, args, workdir))
            print(table(results[-1:]), flush=True)
    print("\n" + table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

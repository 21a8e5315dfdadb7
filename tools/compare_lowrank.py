"""Low-rank factorization on all-MiniLM-L6-v2 (both exports): svd, asvd, svd-llm, with and without the
least-squares refit, at parameter ratios 0.9 / 0.8 / 0.7 / 0.6 of the factorizable layers (the Transformer blocks'
constant-weight MatMuls), written to tools/benchmarks/lowrank.md.

Per configuration: parameters and FLOPs (graphopt.analysis.stats.model_stats, batch 1, sequence 128), layers
factorized and skipped for speed, quality on the 512 held-out evaluation sentences (rank fidelity over 1,000
pairs and mean sentence-embedding cosine against the original; calibration: 256 other sentences), factorization
time, and latency ratio vs the original after O2 (graphopt.bench's interleaved runner, ORT_ENABLE_ALL, 2 threads,
sequence 128 built from real sentences, at most the reference plus three variants per run as shared/BENCH.md
says). Each (export, method) runs in its own subprocess, which collects the activation statistics once (shared by
its 8 configurations) and reports its own peak RSS.

``--vit`` instead measures ViT-base (random weights, ``~/.cache/graphopt/corpus/vit_base_ts.onnx``): svd without
refit at parameter ratios 0.8 / 0.6, speed guard at M = 197 tokens (batch 1), structure, parameters, FLOPs and the
latency ratio after O2 only (quality means nothing on random weights), and replaces only the ViT-base section of
the output file.

Usage: python tools/compare_lowrank.py [--work DIR] [--seconds S] [--exports ts,dynamo] [--methods ...] [--vit]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks_common import MODELS, latency_inputs as _latency_inputs  # noqa: E402
from benchmarks_common import o2 as _o2, outputs as _outputs, quality, split_data, stats as _stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATIOS = (0.9, 0.8, 0.7, 0.6)
METHODS = ("svd", "asvd", "svd-llm")
REFITS = ("none", "least-squares")
VIT = Path.home() / ".cache" / "graphopt" / "corpus" / "vit_base_ts.onnx"
VIT_RATIOS = (0.8, 0.6)
VIT_TOKENS = 197  # 14 x 14 patches + the class token, batch 1


def worker(export: str, method: str, work: Path) -> None:
    """One (export, method): statistics once, 8 factorizations, O2 each, quality on the eval sentences."""
    from graphopt import ir
    from graphopt.calibrate.stats import StatsCache
    from graphopt.passes.lowrank import FactorizeOptions, factorize

    src, _, calib, evaluation, ref = split_data(export)
    cache = StatsCache()
    t0 = time.perf_counter()
    # Prime the statistics (one pass over the calibration sentences), timed on their own.
    factorize(ir.load(src), FactorizeOptions(method=method, params=0.99, speed_guard=False), calib, cache=cache)
    stats_s = time.perf_counter() - t0
    rows = []
    for refit in REFITS:
        for ratio in RATIOS:
            model = ir.load(src)
            t = time.perf_counter()
            rep = factorize(model, FactorizeOptions(method=method, refit=refit, params=ratio), calib, cache=cache)
            seconds = time.perf_counter() - t
            name = f"{export}_{method}_{refit}_{ratio}"
            raw, opt = work / f"{name}.onnx", work / f"{name}_o2.onnx"
            ir.save(model, raw)
            _o2(raw, opt)
            q = quality(_outputs(str(opt), evaluation), ref, with_min=True)
            rows.append({"export": export, "method": method, "refit": refit, "ratio": ratio, "path": str(opt),
                         "factorized": rep.factorized, "layers": len(rep.layers),
                         "skipped_for_speed": len(rep.skipped_for_speed),
                         "layer_param_ratio": rep.params_after / rep.params_before,
                         "layer_flop_ratio": rep.flops_after / rep.flops_before,
                         "seconds": seconds, **_stats(raw), **q,
                         "speed_ratios": [r.speed_ratio for r in rep.layers if r.rank]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "speed_ratios"}), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (work / f"{export}_{method}.json").write_text(json.dumps({"rows": rows, "stats_seconds": stats_s,
                                                              "peak_rss_mb": peak}))


def latency(work: Path, rows: list[dict], seconds: float) -> None:
    """Latency ratio vs the original after O2, reference + 3 variants per interleaved run."""
    from graphopt import ir
    from graphopt.bench.runner import benchmark

    for export in sorted({r["export"] for r in rows}):
        base = work / f"{export}_original_o2.onnx"
        if not base.exists():
            _o2(MODELS[export], base)
        inputs = _latency_inputs(ir.load_proto(MODELS[export]))
        mine = [r for r in rows if r["export"] == export]
        for i in range(0, len(mine), 3):
            group = mine[i:i + 3]
            report = benchmark([base, *[r["path"] for r in group]], inputs=inputs, threads=2, opt_level="all",
                               warmup=10, seconds=seconds)
            for r, t in zip(group, report.models[1:]):
                r["latency_ratio"] = t.ratio
                r["base_ms"] = report.models[0].median_ms
            print(export, [round(t.ratio, 3) for t in report.models], flush=True)


def write(rows: list[dict], workers: dict, originals: dict, out: Path, load: tuple, command: str) -> None:
    lines = ["# Low-rank factorization (`graphopt factorize`) on all-MiniLM-L6-v2", "",
             f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
             f"Load average before/after the latency runs: {load[0]:.2f} / {load[1]:.2f} (2 shared cores; other "
             "engineers' jobs were running, so latency ratios carry more than BENCH.md's ±3% noise).", "",
             "Factorizable layers: the 36 constant-weight MatMuls of the 6 Transformer blocks (Q, K, V, output, "
             "FFN up, FFN down); `ratio` is the target parameter ratio of those layers (global greedy allocation "
             "by relative output error added per parameter saved, ranks multiples of 8, a layer factorized only "
             "when r(K+N) <= 0.9 KN and the onnxruntime micro-benchmark at M = 128 tokens measured it faster). "
             "Quality on the 512 held-out evaluation sentences (calibration: 256 other sentences): rank fidelity "
             "(Spearman over 1,000 pairs of the original's vs the factored model's cosine similarities) and the mean "
             "sentence-embedding cosine to the original. Params / FLOPs: whole model (batch 1, sequence 128; "
             "counted before O2, whose contrib ops stop shape inference), relative to the original. Latency: ratio to the original after O2, interleaved "
             "(graphopt.bench, ORT_ENABLE_ALL, 2 threads, sequence 128 of real tokens). `time`: the factorization "
             "of that configuration (the statistics pass is shared, see the per-method table).", ""]
    for export in ("ts", "dynamo"):
        mine = [r for r in rows if r["export"] == export]
        if not mine:
            continue
        o = originals[export]
        lines += [f"## {export} export (original: {o['params'] / 1e6:.2f} M params, {o['flops'] / 1e9:.2f} GFLOP "
                  f"at sequence 128)", "",
                  "| method | refit | ratio | layers factored | layer params | model params | model FLOPs | latency "
                  "| rank fidelity | emb. cosine (mean / min) | time s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            lat = f"{r['latency_ratio']:.3f}" if "latency_ratio" in r else "n/a"
            lines.append(f"| {r['method']} | {r['refit']} | {r['ratio']} | {r['factorized']}/{r['layers']} | "
                         f"{r['layer_param_ratio']:.3f} | {r['params'] / o['params']:.3f} | "
                         f"{r['flops'] / o['flops']:.3f} | {lat} | {r['rank_fidelity']:.4f} | "
                         f"{r['cosine']:.4f} / {r['cosine_min']:.4f} | {r['seconds']:.1f} |")
        lines.append("")
    lines += ["## Per (export, method) subprocess", "", "| export | method | statistics pass s | peak RSS MB |",
              "|---|---|---|---|"]
    for (export, method), w in sorted(workers.items()):
        lines.append(f"| {export} | {method} | {w['stats_seconds']:.1f} | {w['peak_rss_mb']:.0f} |")
    lines.append("")
    out.write_text("\n".join(lines) + "\n")


def vit(work: Path, seconds: float) -> tuple[dict, list[dict], tuple]:
    """ViT-base, random weights: svd (no data), no refit, at :data:`VIT_RATIOS`; O2; one interleaved latency run
    (the original + the variants). Returns (original stats, rows, load averages before / after the latency run)."""
    import numpy as np

    from graphopt import ir
    from graphopt.analysis.stats import model_stats
    from graphopt.bench.runner import benchmark
    from graphopt.passes.lowrank import FactorizeOptions, factorize

    def counts(model) -> dict:  # noqa: ANN001
        st = model_stats(model, with_flops=True, dims={"batch": 1})
        return {"params": st.parameters, "flops": st.flops}

    base = work / "vit_original_o2.onnx"
    _o2(VIT, base)
    original = counts(ir.load(VIT))
    rows = []
    for ratio in VIT_RATIOS:
        model = ir.load(VIT)
        t = time.perf_counter()
        rep = factorize(model, FactorizeOptions(method="svd", refit="none", params=ratio, tokens=VIT_TOKENS))
        took = time.perf_counter() - t
        raw, opt = work / f"vit_svd_{ratio}.onnx", work / f"vit_svd_{ratio}_o2.onnx"
        ir.save(model, raw)
        _o2(raw, opt)
        kinds: dict[str, list[int]] = {}
        for r in rep.layers:
            if r.rank:
                kinds.setdefault(f"{r.k}x{r.n}", []).append(r.rank)
        rows.append({"ratio": ratio, "path": str(opt), "factorized": rep.factorized, "layers": len(rep.layers),
                     "skipped_for_speed": len(rep.skipped_for_speed),
                     "layer_param_ratio": rep.params_after / rep.params_before,
                     "layer_flop_ratio": rep.flops_after / rep.flops_before, "seconds": took,
                     "ranks": {k: sorted(v) for k, v in sorted(kinds.items())},
                     "max_speed_ratio": max((r.speed_ratio for r in rep.layers if r.speed_ratio), default=None),
                     **counts(model)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "ranks"}), flush=True)
    inputs = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    before = os.getloadavg()[0]
    report = benchmark([base, *[r["path"] for r in rows]], inputs=inputs, threads=2, opt_level="all", warmup=5,
                       seconds=seconds)
    after = os.getloadavg()[0]
    for r, t in zip(rows, report.models[1:]):
        r["latency_ratio"] = t.ratio
    original["base_ms"] = report.models[0].median_ms
    print("vit", [round(t.ratio, 3) for t in report.models], flush=True)
    return original, rows, (before, after)


def write_vit(out: Path, original: dict, rows: list[dict], load: tuple, command: str) -> None:
    """Replace (or add, before the hand-written notes) the ViT-base section of ``out``."""
    lines = [f"## ViT-base (random weights; `{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Original: {original['params'] / 1e6:.2f} M params, {original['flops'] / 1e9:.2f} GFLOP at batch 1, "
             f"{original['base_ms']:.1f} ms median after O2. svd without refit (quality is meaningless on random "
             f"weights and not reported), speed guard at M = {VIT_TOKENS} tokens; latency: one interleaved run of "
             f"the original and both variants after O2 (graphopt.bench, ORT_ENABLE_ALL, 2 threads, batch 1), load "
             f"average before/after {load[0]:.2f} / {load[1]:.2f}. Factorizable layers: {rows[0]['layers']} "
             "constant-weight MatMul / Gemm. Random weights have no trained low-rank structure: the ranks chosen "
             "here say nothing about a trained ViT's; `time s` includes the speed micro-benchmarks of shapes not "
             "yet in the cache.", "",
             "| ratio | layers factored | layer params | layer FLOPs | model params | model FLOPs | latency "
             "| max layer speed ratio | ranks (K x N: kept ranks) | time s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['latency_ratio']:.3f}" if "latency_ratio" in r else "n/a"
        speed = f"{r['max_speed_ratio']:.3f}" if r["max_speed_ratio"] is not None else "n/a"
        ranks = "; ".join(f"{k}: {', '.join(map(str, sorted(set(v))))} ({len(v)} layers)"
                          for k, v in r["ranks"].items())
        lines.append(f"| {r['ratio']} | {r['factorized']}/{r['layers']} | {r['layer_param_ratio']:.3f} | "
                     f"{r['layer_flop_ratio']:.3f} | {r['params'] / original['params']:.3f} | "
                     f"{r['flops'] / original['flops']:.3f} | {lat} | {speed} | {ranks} | {r['seconds']:.1f} |")
    section = "\n".join(lines) + "\n\n"
    text = out.read_text() if out.exists() else ""
    start = text.find("## ViT-base")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end + 1 if end >= 0 else len(text):]
    notes = text.find("## Notes")
    text = text[:notes] + section + text[notes:] if notes >= 0 else text + ("\n" if text else "") + section
    out.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "graphopt_lowrank"))
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per latency group")
    p.add_argument("--exports", default="ts,dynamo")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default=str(ROOT / "tools" / "benchmarks" / "lowrank.md"))
    p.add_argument("--worker", nargs=2, metavar=("EXPORT", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--skip-factorize", action="store_true", help="reuse the workers' JSON in --work")
    p.add_argument("--vit", action="store_true", help="only the ViT-base section (random weights)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.vit:
        original, rows, load = vit(work, args.seconds)
        (work / "vit_rows.json").write_text(json.dumps({"original": original, "rows": rows, "load": load}))
        write_vit(Path(args.out), original, rows, load, "python tools/compare_lowrank.py --vit")
        print(f"wrote {args.out}")
        return 0
    if args.worker:
        worker(args.worker[0], args.worker[1], work)
        return 0
    exports, methods = args.exports.split(","), args.methods.split(",")
    workers = {}
    for export in exports:
        for method in methods:
            if not args.skip_factorize:
                # One BLAS thread: on 2 shared cores OpenBLAS's threads made a 384 x 384 SVD 40x slower.
                env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
                subprocess.run([sys.executable, __file__, "--work", str(work), "--worker", export, method], check=True,
                               env=env)
            workers[(export, method)] = json.loads((work / f"{export}_{method}.json").read_text())
    rows = [r for w in workers.values() for r in w["rows"]]
    originals = {}
    for export in exports:
        _o2(MODELS[export], work / f"{export}_original_o2.onnx")
        originals[export] = _stats(MODELS[export])
    before = os.getloadavg()[0]
    latency(work, rows, args.seconds)
    after = os.getloadavg()[0]
    (work / "rows.json").write_text(json.dumps(rows))
    command = "python tools/compare_lowrank.py" + (f" --exports {args.exports}" if args.exports != "ts,dynamo" else "")
    write(rows, workers, originals, Path(args.out), (before, after), command)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

``--ocr`` measures PaddleOCR rec (PP-OCRv4, trained weights; model, rendered lines, CTC decoding, quality and
latency helpers from tools/pruning_ocr.py, input fixed to 48 x 320 as its ``rec48``): svd, asvd, svd-llm without and
with the refit at :data:`RATIOS` (calibration: 64 rendered lines, seed 0; character and exact-line accuracy on 256
other lines, seed 1), every row timed after O2, and each factored layer's speed re-measured at its own M (the
guard measures every layer at one M). ``--llama`` measures LLaMA-GQA 600M (random weights,
``~/.cache/graphopt/corpus/llama_gqa_600m_ts.onnx``): svd at parameter ratios 0.8 / 0.6, structure, parameters,
FLOPs, latency after O2, time and peak RSS; its worker is stopped past 15 minutes or 10 GB. Each replaces only its
own section of the output file (``--skip-factorize`` reuses the worker's JSON in --work and re-times).

Usage: python tools/compare_lowrank.py [--work DIR] [--seconds S] [--exports ts,dynamo] [--methods ...]
       [--vit | --ocr | --llama] [--skip-factorize]
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
    _splice(out, "## ViT-base", "\n".join(lines) + "\n\n")


# --- PaddleOCR rec (--ocr) ------------------------------------------------------------------------------------------

OCR_MODEL = "rec48"  # tools/pruning_ocr.py's rec with the input fixed to 1 x 3 x 48 x 320 (a copy in WORK)
OCR_TOKENS = 40  # the neck's and the CTC head's sequence (320 / 8 columns): the M of the layers without static shapes


def ocr_worker(work: Path) -> None:
    """The rec48 sweep in one process (one statistics cache): 3 methods x 2 refits x :data:`RATIOS`, O2 each, CTC
    quality on the held-out lines, and each factored layer's speed re-measured at its own M; WORK/ocr_lowrank.json."""
    import pruning_ocr as po

    from graphopt import ir
    from graphopt.calibrate.data import CalibrationData
    from graphopt.calibrate.stats import StatsCache
    from graphopt.passes.lowrank import FactorizeOptions, factorize
    from graphopt.passes.lowrank.speed import SpeedGuard

    src = po.source(OCR_MODEL, work)
    calib_dir, evaluation, strings = po.render(OCR_MODEL, work)
    calib = CalibrationData.from_path(calib_dir, ir.load_proto(src))
    chars = po.dictionary(src)
    ref = po.run(src, evaluation)
    original = {**po.stats(OCR_MODEL, src), **po.quality(OCR_MODEL, ref, ref, strings, chars),
                "ctc_steps": int(ref[0].shape[1])}
    print("original", json.dumps(original), flush=True)

    def load():  # noqa: ANN202 - shapes inferred: each Conv's M (batch x height x width) from its output
        model = ir.load(src)
        ir.infer_shapes(model)
        return model

    cache, rows = StatsCache(), []
    t0 = time.perf_counter()
    factorize(load(), FactorizeOptions(method="svd-llm", params=0.99, speed_guard=False), calib, cache=cache)
    stats_s = time.perf_counter() - t0
    for method in METHODS:
        for refit in REFITS:
            for ratio in RATIOS:
                model = load()
                t = time.perf_counter()
                rep = factorize(model, FactorizeOptions(method=method, refit=refit, params=ratio,
                                                        tokens=OCR_TOKENS), calib, cache=cache)
                seconds = time.perf_counter() - t
                name = f"ocr_{OCR_MODEL}_{method}_{refit}_{ratio}"
                raw, opt = work / f"{name}.onnx", work / f"{name}_o2.onnx"
                ir.save(model, raw)
                _o2(raw, opt)
                # the speed guard measured at M = tokens for every layer: re-measure at the layer's own M (fresh
                # guards per row, so that they read what the pass's guards wrote to the cache since)
                own, guards = [], {}
                for r in rep.layers:
                    if r.rank:
                        g = guards.setdefault(r.tokens, SpeedGuard(tokens=r.tokens))
                        own.append({"layer": r.name, "k": r.k, "n": r.n, "rank": r.rank, "m": r.tokens,
                                    "guard": r.speed_ratio, "own": g.ratio(r.k, r.n, r.rank)})
                rows.append({"method": method, "refit": refit, "ratio": ratio, "path": str(opt),
                             "factorized": rep.factorized, "layers": len(rep.layers),
                             "skipped_for_speed": list(rep.skipped_for_speed),
                             "layer_param_ratio": rep.params_after / rep.params_before,
                             "layer_flop_ratio": rep.flops_after / rep.flops_before, "seconds": seconds,
                             "ranks": [r.rank for r in rep.layers], "speed": own,
                             **po.stats(OCR_MODEL, raw),
                             **po.quality(OCR_MODEL, po.run(opt, evaluation), ref, strings, chars)})
                print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("speed", "ranks")}), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (work / "ocr_lowrank.json").write_text(json.dumps({
        "original": original, "rows": rows, "stats_seconds": stats_s, "peak_rss_mb": peak, "calib": len(calib),
        "eval": len(evaluation), "layers": [{"name": r.name, "kind": r.kind, "k": r.k, "n": r.n, "m": r.tokens,
                                             "reason": r.reason} for r in rep.layers]}))


def ocr_latency(work: Path, block: dict, seconds: float) -> tuple[float, float]:
    """Every row's latency after O2 against the original after O2 (pruning_ocr.latency: interleaved, 3 variants
    per run). Returns the load averages before / after."""
    import pruning_ocr as po

    before = os.getloadavg()[0]
    done = po.latency(OCR_MODEL, work, [(r["path"], Path(r["path"])) for r in block["rows"]], seconds)
    after = os.getloadavg()[0]
    for r in block["rows"]:
        r["latency_ratio"] = done[r["path"]]
    return before, after


def _splice(out: Path, heading: str, section: str) -> None:
    """Replace the section starting with ``heading`` in ``out``, or add it before the hand-written notes."""
    text = out.read_text() if out.exists() else ""
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end + 1 if end >= 0 else len(text):]
    notes = text.find("## Notes")
    text = text[:notes] + section + text[notes:] if notes >= 0 else text + ("\n" if text else "") + section
    out.write_text(text)


def write_ocr(out: Path, block: dict, load: tuple, command: str) -> None:
    """The PaddleOCR rec section of ``out`` (replaced in place; the other sections are kept as they are)."""
    o, rows = block["original"], block["rows"]
    kinds: dict[str, int] = {}
    for layer in block["layers"]:
        kinds[layer["kind"]] = kinds.get(layer["kind"], 0) + 1
    ms = sorted({layer["m"] for layer in block["layers"]})
    lines = [f"## PaddleOCR rec (PP-OCRv4, trained weights, input fixed to 48 x 320; `{command}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Original: {o['params'] / 1e6:.2f} M params, {o['flops'] / 1e9:.3f} GFLOPs counted, char acc "
             f"{o['char_acc']:.4f}, line acc {o['line_acc']:.4f}. The model and the data are tools/pruning_ocr.py's "
             f"(`rec48`: rec with its input fixed to 1 x 3 x 48 x 320, as the pruning benchmark does): calibration "
             f"{block['calib']} rendered lines (seed 0), quality on {block['eval']} other rendered lines (seed 1) "
             "against their strings, CTC greedy decoding with the model's own dictionary: `char` = 1 - edit "
             "distance / characters, `line` = exact lines. Factorizable layers: "
             f"{', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))} (1x1 Convs of the PPLCNetV3 backbone "
             "including the squeeze-excite ones, the SVTR neck's MatMuls and the CTC head, 120 x 6625); their M "
             f"(rows multiplied: batch x height x width, neck/head: the {OCR_TOKENS} CTC steps) ranges over "
             f"{', '.join(map(str, ms))}. `ratio`: target parameter ratio of those layers; speed guard at M = "
             f"{OCR_TOKENS} for every layer (the pass's single `tokens`; see the speed check below). Params / "
             "GFLOPs: pruning_ocr.stats (Constant-node weights counted; the neck's MatMuls, whose shapes graphopt "
             "cannot infer, are not in the GFLOPs), relative to the original; `layer FLOPs`: the pass's own count "
             "at each layer's M. Latency: after O2 vs the original after O2, every row timed (pruning_ocr.latency: "
             "interleaved, 3 variants beside the reference per run, CPU, 2 threads, ORT_ENABLE_ALL, one rendered "
             f"line); load average before/after {load[0]:.2f} / {load[1]:.2f}. Rows with and without the refit "
             "have the same ranks, hence the same structure: their latency difference is noise. `time s`: the "
             f"factorization (the statistics pass, {block['stats_seconds']:.1f} s, is shared); peak RSS of the "
             f"sweep's process (24 factorizations, O2, evaluation): {block['peak_rss_mb']:.0f} MB.", "",
             "| method | refit | ratio | layers factored | layer params | layer FLOPs | params | GFLOPs | latency "
             "| char | line | time s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['latency_ratio']:.3f}" if "latency_ratio" in r else "n/a"
        lines.append(f"| {r['method']} | {r['refit']} | {r['ratio']} | {r['factorized']}/{r['layers']} | "
                     f"{r['layer_param_ratio']:.3f} | {r['layer_flop_ratio']:.3f} | {r['params'] / o['params']:.3f} | "
                     f"{r['flops'] / o['flops']:.3f} | {lat} | {r['char_acc']:.4f} | {r['line_acc']:.4f} | "
                     f"{r['seconds']:.1f} |")
    skipped = sorted({name for r in rows for name in r["skipped_for_speed"]})
    slow = {}
    for r in rows:
        for s in r["speed"]:
            if s["own"] >= 1.0:
                slow.setdefault((s["layer"], s["k"], s["n"], s["m"]), []).append(
                    (f"{r['method']}/{r['refit']}/{r['ratio']}", s["rank"], s["guard"], s["own"]))
    factored = sum(len(r["speed"]) for r in rows)
    worst_guard = max((s["guard"] for r in rows for s in r["speed"] if s["guard"] is not None), default=None)
    lines += ["", "Speed (the guard, passes/lowrank/speed.py, decides per layer at the layer's own M where its "
              f"output shape gives it, else M = {OCR_TOKENS}): skipped for "
              f"speed in at least one row: {', '.join(skipped) or 'none'}; largest guard ratio among the factored "
              f"layers: {worst_guard if worst_guard is not None else 'n/a'}. Each factored layer re-measured at its "
              f"own M (the same micro-benchmark, speed.SpeedGuard(tokens=M)): {factored} factored layer-instances, "
              f"{sum(len(v) for v in slow.values())} of them slower than the layer they replaced"
              + (":" if slow else "."), ""]
    if slow:
        lines += ["| layer | K x N | own M | rows (rank, guard ratio at M = 40, ratio at own M) |", "|---|---|---|---|"]
        for (name, k, n, m), hits in sorted(slow.items()):
            lines.append(f"| {name} | {k} x {n} | {m} | "
                         + "; ".join(f"{row} (r {rank}, {g:.3f}, {own:.3f})" for row, rank, g, own in hits) + " |")
        lines.append("")
    _splice(out, "## PaddleOCR rec", "\n".join(lines) + "\n\n")



# --- LLaMA-GQA 600M (--llama) ---------------------------------------------------------------------------------------

LLAMA = Path.home() / ".cache" / "graphopt" / "corpus" / "llama_gqa_600m_ts.onnx"
LLAMA_RATIOS = (0.8, 0.6)
LLAMA_DIMS = {"batch": 1, "sequence": 128}
LLAMA_LIMITS = (15 * 60, 10 * 1024)  # the factorization worker is stopped past 15 minutes or 10 GB peak RSS


def llama_worker(work: Path) -> None:
    """svd without refit at :data:`LLAMA_RATIOS`: the layers planned once (spectra and speed guard, the expensive
    part), each ratio's ranks applied to its own copy of the model (``plan_layers`` / ``apply_plan``, what
    ``factorize`` does in one call), saved and put through O2. Progress is written to WORK/llama_lowrank.json after
    each step, so a stopped run leaves what it had."""
    from graphopt import ir
    from graphopt.analysis.stats import model_stats
    from graphopt.calibrate.reconstruct import blas_threads
    from graphopt.passes.lowrank.factorize import FactorizeOptions, apply_plan, choose_ranks, plan_layers

    out = work / "llama_lowrank.json"
    doc: dict = {"rows": [], "steps": []}

    def step(name: str, seconds: float) -> None:
        doc["steps"].append({"step": name, "seconds": seconds,
                             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        out.write_text(json.dumps(doc))
        print(json.dumps(doc["steps"][-1]), flush=True)

    def counts(model) -> dict:  # noqa: ANN001
        st = model_stats(model, with_flops=True, dims=LLAMA_DIMS)
        return {"params": st.parameters, "flops": st.flops}

    t = time.perf_counter()
    planned = ir.load(LLAMA)
    doc["original"] = counts(planned)
    step("load + count the original", time.perf_counter() - t)
    t = time.perf_counter()
    _o2(LLAMA, work / "llama_original_o2.onnx")
    step("O2 of the original", time.perf_counter() - t)
    opts = FactorizeOptions(method="svd", refit="none", params=LLAMA_RATIOS[0], tokens=LLAMA_DIMS["sequence"])
    t = time.perf_counter()
    with blas_threads(opts.blas_threads):
        plan = plan_layers(planned, opts)
    doc["plan_seconds"] = time.perf_counter() - t
    step("plan: spectra of every layer + speed guard", doc["plan_seconds"])
    for i, ratio in enumerate(LLAMA_RATIOS):
        # apply_plan matches layers by node position: every ratio but the last gets a fresh copy; the last the
        # planned model itself (unmodified until then)
        model = planned if i == len(LLAMA_RATIOS) - 1 else ir.load(LLAMA)
        t = time.perf_counter()
        rep = apply_plan(model, plan, choose_ranks(plan, opts, params=ratio), opts)
        took = time.perf_counter() - t
        kinds: dict[str, list[int]] = {}
        for r in rep.layers:
            if r.rank:
                kinds.setdefault(f"{r.k}x{r.n}", []).append(r.rank)
        raw, opt = work / f"llama_svd_{ratio}.onnx", work / f"llama_svd_{ratio}_o2.onnx"
        row = {"ratio": ratio, "path": str(opt), "factorized": rep.factorized, "layers": len(rep.layers),
               "skipped_for_speed": list(rep.skipped_for_speed),
               "layer_param_ratio": rep.params_after / rep.params_before,
               "layer_flop_ratio": rep.flops_after / rep.flops_before, "apply_seconds": took,
               "ranks": {k: sorted(v) for k, v in sorted(kinds.items())},
               "speed_ratios": [r.speed_ratio for r in rep.layers if r.rank],
               "whole": {r.reason: 0 for r in rep.layers if not r.rank}, **counts(model)}
        for r in rep.layers:
            if not r.rank:
                row["whole"][r.reason] += 1
        ir.save(model, raw)
        del model
        if i == len(LLAMA_RATIOS) - 1:
            del planned
        doc["rows"].append(row)
        step(f"apply + count + save, ratio {ratio}", time.perf_counter() - t)
        t = time.perf_counter()
        _o2(raw, opt)
        row["o2_seconds"] = time.perf_counter() - t
        step(f"O2, ratio {ratio}", row["o2_seconds"])
    doc["done"] = True
    step("done", 0.0)


def _watch(cmd: list[str], env: dict, limits: tuple[int, int]) -> tuple[int, float, float, str]:
    """Run ``cmd``, stopping it past ``limits`` (seconds, MB of peak RSS, /proc's VmHWM). Returns (exit code, seconds,
    peak RSS MB, why it was stopped or '')."""
    proc = subprocess.Popen(cmd, env=env)
    start, peak, why = time.perf_counter(), 0.0, ""
    while proc.poll() is None:
        time.sleep(1.0)
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        elapsed = time.perf_counter() - start
        if elapsed > limits[0] or peak > limits[1]:
            why = (f"stopped after {elapsed:.0f} s" if elapsed > limits[0] else
                   f"stopped at {peak:.0f} MB peak RSS")
            proc.terminate()
            proc.wait()
            break
    return proc.returncode, time.perf_counter() - start, peak, why


def llama(work: Path, args: argparse.Namespace, env: dict) -> int:
    """``--llama``: the worker under :func:`_watch`, the latency of what it finished, the section."""
    import numpy as np

    from graphopt.bench.runner import benchmark

    if not args.skip_factorize:
        rc, seconds, peak, why = _watch([sys.executable, __file__, "--work", str(work), "--llama-worker"], env,
                                        LLAMA_LIMITS)
        doc = json.loads((work / "llama_lowrank.json").read_text()) if (work / "llama_lowrank.json").exists() else {}
        doc.update({"rc": rc, "wall_seconds": seconds, "peak_rss_mb": peak, "stopped": why})
        (work / "llama_lowrank.json").write_text(json.dumps(doc))
    doc = json.loads((work / "llama_lowrank.json").read_text())
    rows = [r for r in doc.get("rows", []) if Path(r["path"]).exists()]
    load = (os.getloadavg()[0], os.getloadavg()[0])
    base = work / "llama_original_o2.onnx"
    if rows and base.exists():
        ids = np.random.default_rng(0).integers(0, 32000, size=(1, LLAMA_DIMS["sequence"]), dtype=np.int64)
        before = os.getloadavg()[0]
        report = benchmark([base, *[r["path"] for r in rows]], inputs={"input_ids": ids,
                           "attention_mask": np.ones_like(ids)}, threads=2, opt_level="all", warmup=3,
                           seconds=args.seconds)
        load = (before, os.getloadavg()[0])
        for r, t in zip(rows, report.models[1:]):
            r["latency_ratio"] = t.ratio
        doc["base_ms"] = report.models[0].median_ms
        print("llama", [round(t.ratio, 3) for t in report.models], flush=True)
    doc["load"] = load
    (work / "llama_lowrank_rows.json").write_text(json.dumps(doc))
    write_llama(Path(args.out), doc, "python tools/compare_lowrank.py --llama"
                + (f" --seconds {args.seconds:g}" if args.seconds != 6.0 else ""))
    print(f"wrote {args.out}")
    return 0


def write_llama(out: Path, doc: dict, command: str) -> None:
    """The LLaMA-GQA 600M section of ``out`` (replaced in place)."""
    o, rows = doc.get("original"), doc.get("rows", [])
    load = doc.get("load", (float("nan"), float("nan")))
    head = (f"## LLaMA-GQA 600M (random weights; `{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    lines = [head, ""]
    if o:
        lines.append(
            f"Original (`llama_gqa_600m_ts.onnx`, external data; 20 layers, hidden 1536, GQA 12/4 heads, FFN 4096, "
            f"vocab 32000): {o['params'] / 1e6:.1f} M params, {o['flops'] / 1e9:.1f} GFLOP at batch 1, sequence "
            f"128" + (f", {doc['base_ms']:.0f} ms median after O2" if "base_ms" in doc else "") + ". svd without "
            "refit, speed guard at M = 128 tokens (batch 1 x sequence 128: every layer's own M here); the layers "
            f"planned once ({doc.get('plan_seconds', float('nan')):.0f} s: the SVD of every layer with one BLAS "
            "thread, and the speed micro-benchmarks of shapes not yet in the cache) and each ratio applied to its own "
            "copy (`plan_layers` / `apply_plan`, what `factorize` does in one call). Params / FLOPs counted before "
            "O2, relative to the original. Latency: one interleaved run of the original and the variants after O2 "
            f"(graphopt.bench, ORT_ENABLE_ALL, 2 threads, 128 random token ids), load average before/after "
            f"{load[0]:.2f} / {load[1]:.2f}. Random weights have flat spectra: the ranks say nothing about a trained "
            "model's, and quality is not reported.")
    lines.append("")
    lines += ["| ratio | layers factored | layer params | layer FLOPs | model params | model FLOPs | latency "
              "| max layer speed ratio | ranks (K x N: kept ranks) | apply s | O2 s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['latency_ratio']:.3f}" if "latency_ratio" in r else "n/a"
        speeds = [s for s in r["speed_ratios"] if s is not None]
        ranks = "; ".join(f"{k}: {', '.join(map(str, sorted(set(v))))} ({len(v)} layers)"
                          for k, v in r["ranks"].items())
        lines.append(f"| {r['ratio']} | {r['factorized']}/{r['layers']} | {r['layer_param_ratio']:.3f} | "
                     f"{r['layer_flop_ratio']:.3f} | {r['params'] / o['params']:.3f} | {r['flops'] / o['flops']:.3f} | "
                     f"{lat} | {max(speeds):.3f} | {ranks} | {r['apply_seconds']:.0f} | "
                     f"{r.get('o2_seconds', float('nan')):.0f} |")
    skipped = sorted({n for r in rows for n in r["skipped_for_speed"]})
    lines += ["", f"Speed guard: skipped for speed: {', '.join(skipped) if skipped else 'none'}; left whole: "
              + "; ".join(f"ratio {r['ratio']}: " + ", ".join(f"{v} ({k})" for k, v in r["whole"].items())
                          for r in rows) + ".",
              f"Worker: {doc.get('wall_seconds', float('nan')):.0f} s wall, peak RSS {doc.get('peak_rss_mb', 0):.0f} MB"
              + (f"; {doc['stopped']}" if doc.get("stopped") else "") + ". Steps (seconds, peak RSS MB so far): "
              + "; ".join(f"{s['step']}: {s['seconds']:.0f} s, {s['peak_rss_mb']:.0f} MB" for s in doc.get("steps", []))
              + ".", ""]
    _splice(out, "## LLaMA-GQA 600M", "\n".join(lines) + "\n\n")


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
    p.add_argument("--ocr", action="store_true", help="only the PaddleOCR rec section (trained weights)")
    p.add_argument("--ocr-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--llama", action="store_true", help="only the LLaMA-GQA 600M section (random weights)")
    p.add_argument("--llama-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # One BLAS thread in the workers: on 2 shared cores OpenBLAS's threads made a 384 x 384 SVD 40x slower.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if args.ocr_worker:
        ocr_worker(work)
        return 0
    if args.ocr:
        if not args.skip_factorize:
            subprocess.run([sys.executable, __file__, "--work", str(work), "--ocr-worker"], check=True, env=env)
        block = json.loads((work / "ocr_lowrank.json").read_text())
        load = ocr_latency(work, block, args.seconds)
        (work / "ocr_lowrank_rows.json").write_text(json.dumps({**block, "load": load}))
        write_ocr(Path(args.out), block, load, "python tools/compare_lowrank.py --ocr")
        print(f"wrote {args.out}")
        return 0
    if args.llama_worker:
        llama_worker(work)
        return 0
    if args.llama:
        return llama(work, args, env)
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

#!/usr/bin/env python
"""``graphopt compress`` on trained models against INT8 alone, and ``--speedup 2`` on the full-size corpus:
writes ``tools/benchmarks/compress.md`` and the reports' screenshots beside it.

Sections (``--sections``, each merged into WORK/compress.json so one can be rerun alone):

- ``minilm``: all-MiniLM-L6-v2 (tools/make_corpus.py --trained), sentences padded to 128 tokens
  (tools/text_inputs.py --pad): calibration 256, search ("tune") 128, held-out ("eval") 512, batches of 16.
  ``compress --budget rank-fidelity=0.97`` against ``quantize`` (INT8 alone, the int8 pipeline), quality on the
  held-out split, latency of original / INT8 alone / compressed in one interleaved run (batch 1, 128 real
  tokens, 2 threads, ORT_ENABLE_ALL).
- ``ocr``: PaddleOCR rec (PP-OCRv4, input fixed to 1x3x48x320) on rendered lines with known strings: calibration
  64, search 128, held-out 128 lines; ``compress --metric tools/ocr_metric.py:char_accuracy --max-drop 0.01
  --int8-method percentile`` against INT8 alone; ground-truth character and line accuracy on the held-out lines.
- ``ocr-tight``: the same with ``--max-drop`` 0.005 (``--tight-max-drop``): the 128 held-out lines are few
  enough that a model chosen 1 point below the original on the search lines can land under INT8 alone's accuracy
  on them; the tighter budget shows the trade-off.
- ``full``: random-init BERT-base, ViT-base, GPT-2 small and LLaMA-GQA 600M, both exporters
  (tools/make_corpus.py --full), ``--speedup 2 --time-limit M`` on generated inputs: whether it ends within the
  limit and what it reached (``--full-models`` picks some; the others' rows are kept).

Usage::

    python tools/compare_compress.py [--work DIR] [--sections minilm,ocr,ocr-tight,full] [--time-limit 5]
                                     [--seconds 20] [--full-models NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
OUT = ROOT / "tools" / "benchmarks" / "compress.md"
CACHE = Path.home() / ".cache" / "graphopt"
FULL = tuple(f"{m}_{e}" for e in ("ts", "dynamo") for m in ("bert_base", "vit_base", "gpt2_small", "llama_gqa_600m"))


def graphopt(*args: object) -> tuple[int, float, float, str, str]:
    """Run the graphopt CLI in a child process: (exit code, wall seconds, the child's own peak RSS in MB, stderr
    tail, stdout)."""
    import threading

    exe = shutil.which("graphopt", path=str(Path(sys.executable).parent)) or "graphopt"
    t = time.perf_counter()
    proc = subprocess.Popen([exe, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    streams: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: streams.__setitem__(k, f.read()))
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage, not the maximum over every child so far
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024, streams["err"][-3000:],
            streams["out"])


def compress_json(stdout: str) -> dict:
    """The ``--json`` document a compress run printed ({} when it printed none: exit 1 or 2)."""
    try:
        return json.loads(stdout)
    except ValueError:
        return {}


def interleaved(models: list[Path], inputs: dict, seconds: float) -> tuple[list[float], list[float], list[float]]:
    """(ratios to the first, medians in ms, load before) of ``models``, one interleaved run (graphopt.bench, 2
    threads, ORT_ENABLE_ALL)."""
    from graphopt.bench.runner import benchmark

    report = benchmark(models, inputs=inputs, threads=2, opt_level="all", warmup=10, seconds=seconds)
    return [t.ratio for t in report.models], [t.median_ms for t in report.models], list(report.load_before)


def screenshot(html: Path, name: str) -> str:
    """A PNG of the report beside compress.md (empty string when chromium is missing)."""
    from screenshot_report import find_chromium, screenshot as shot

    if not html.exists() or find_chromium() is None:
        return ""
    png = OUT.parent / f"compress_{name}.png"
    shot(html, png, width=1280, height=2600)
    return png.name


def minilm(work: Path, seconds: float) -> dict:
    from benchmarks_common import latency_inputs, quality

    from graphopt import ir
    from graphopt.calibrate.data import CalibrationData
    from graphopt.calibrate.evaluate import run_outputs

    text = CACHE / "text_minilm_pad"
    if not (text / "eval").is_dir():
        subprocess.run([sys.executable, str(ROOT / "tools" / "text_inputs.py"), str(text), "--pad"], check=True)
    src = CACHE / "corpus" / "minilm_l6_ts.onnx"
    chosen, int8, html = work / "minilm_compressed.onnx", work / "minilm_int8.onnx", work / "minilm.html"
    code, wall, peak, err, out = graphopt("compress", src, "-o", chosen, "--calib", text / "calib", "--eval",
                                          text / "tune",
                                     "--test", text / "eval", "--batch-size", 16, "--budget", "rank-fidelity=0.97",
                                     "--dim", "batch=1", "--dim", "sequence=128", "--json", "--report", html)
    doc = compress_json(out)
    print("minilm compress", code, round(wall), err[-600:] if code else "", flush=True)
    q = graphopt("quantize", src, "-o", int8, "--calib", text / "calib", "--batch-size", 16)
    print("minilm int8", q[0], flush=True)
    # INT8 alone with the fusion variant compress measured fastest, so that the comparison separates the
    # pruning's gain from the fusion choice's
    fused = work / "minilm_int8_fusion.onnx"
    fused.unlink(missing_ok=True)
    variant = next((f["fusion"] for f in doc.get("int8_fusions") or [] if f.get("chosen")), "default")
    if variant != "default":
        from graphopt.passmanager.pipeline import INT8_FUSION_VARIANTS

        q = graphopt("quantize", src, "-o", fused, "--calib", text / "calib", "--batch-size", 16, "-p",
                     INT8_FUSION_VARIANTS[variant] + ",qdq")
        print("minilm int8", variant, q[0], flush=True)
    proto = ir.load_proto(src)
    held = list(CalibrationData.from_path(text / "eval", proto, batch_size=16))
    ref = run_outputs(str(src), held)
    rows = {"original": {"rank_fidelity": 1.0, "cosine": 1.0}}
    for label, path in (("int8 alone", int8), (f"int8 alone, fusion {variant}", fused), ("compressed", chosen)):
        if path.exists():
            rows[label] = quality(run_outputs(str(path), held), ref)
    paths = [src] + [p for p in (int8, fused, chosen) if p.exists()]
    ratios, ms, load = interleaved(paths, latency_inputs(proto), seconds)
    for label, r, m in zip(rows, ratios, ms):
        rows[label].update(latency_ratio=r, median_ms=m)
    return {"code": code, "wall": wall, "peak_mb": peak, "doc": doc, "rows": rows, "load": load,
            "png": screenshot(html, "minilm")}


def ocr(work: Path, seconds: float, max_drop: float = 0.01) -> dict:
    import pruning_ocr as po

    src = po.source("rec48", work)
    calib, evaluation, strings = po.render("rec48", work)
    chars = po.dictionary(src)
    index = {c: i for i, c in enumerate(chars)}
    half = len(evaluation) // 2
    folders = {}
    for name, part, truth in (("search", evaluation[:half], strings[:half]), ("test", evaluation[half:],
                                                                              strings[half:])):
        folder = work / f"ocr_{name}"
        folder.mkdir(exist_ok=True)
        for i, x in enumerate(part):
            np.savez(folder / f"sample_{i:04d}.npz", x=x)
        # ground truth for the metric: each line's class indices in the model's dictionary
        (folder / "labels.json").write_text(json.dumps([[index[c] for c in t if c in index] for t in truth]))
        folders[name] = folder
    search_ref = po.run(src, evaluation[:half])
    original_search = po.quality("rec", search_ref, search_ref, strings[:half], chars)["char_acc"]
    # within 1 point of the original's own accuracy on each split (the search's and the held-out lines')
    tag = "rec" if max_drop == 0.01 else f"rec_drop{max_drop:g}"
    chosen, html = work / f"{tag}_compressed.onnx", work / f"{tag}.html"
    code, wall, peak, err, out = graphopt("compress", src, "-o", chosen, "--calib", calib, "--eval", folders["search"],
                                          "--test", folders["test"], "--metric",
                                          ROOT / "tools" / "ocr_metric.py:char_accuracy", "--max-drop", max_drop,
                                          "--int8-method", "percentile", "--json", "--report", html)
    doc = compress_json(out)
    budget = doc.get("budget")
    print("rec compress", code, round(wall), err[-600:] if code else "", flush=True)
    int8s = {}
    for method in ("minmax", "percentile"):
        int8s[method] = work / f"rec_int8_{method}.onnx"
        q = graphopt("quantize", src, "-o", int8s[method], "--calib", calib, "--method", method)
        print("rec int8", method, q[0], flush=True)
    test, truth = evaluation[half:], strings[half:]
    ref = po.run(src, test)
    rows = {"original": po.quality("rec", ref, ref, truth, chars)}
    labelled = [(f"int8 alone ({m})", p) for m, p in int8s.items()] + [("compressed", chosen)]
    for label, path in labelled:
        if path.exists():
            rows[label] = po.quality("rec", po.run(path, test), ref, truth, chars)
    paths = [src] + [p for _, p in labelled if p.exists()]
    ratios, ms, load = interleaved(paths, {"x": evaluation[0]}, seconds)
    for label, r, m in zip(rows, ratios, ms):
        rows[label].update(latency_ratio=r, median_ms=m)
    return {"code": code, "wall": wall, "peak_mb": peak, "doc": doc, "rows": rows, "load": load,
            "budget": budget, "original_search": original_search, "png": screenshot(html, tag)}


def full(work: Path, minutes: float, models: tuple[str, ...] = FULL, rows: dict | None = None) -> dict:
    from graphopt import ir
    from graphopt.calibrate.data import CalibrationData

    rows = dict(rows or {})
    for name in models:
        src = CACHE / "corpus" / f"{name}.onnx"
        if not src.exists():
            rows[name] = {"missing": True}
            continue
        proto = ir.load_proto(src)
        names = {d.dim_param for i in proto.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
        dims = {k: v for k, v in {"batch": 1, "batch_size": 1, "sequence": 128, "sequence_length": 128}.items()
                if k in names}
        folders = {}
        for split, seed, count in (("calib", 0, 8), ("eval", 100, 8)):
            folder = work / f"{name}_{split}"
            folder.mkdir(exist_ok=True)
            for i, sample in enumerate(CalibrationData.generated(proto, count=count, seed=seed, dims=dims)):
                np.savez(folder / f"sample_{i:04d}.npz", **sample)
            folders[split] = folder
        code, wall, peak, err, out = graphopt("compress", src, "-o", work / f"{name}_compressed.onnx", "--calib",
                                         folders["calib"], "--eval", folders["eval"], "--speedup", 2,
                                         "--time-limit", minutes, "--json")
        doc = compress_json(out)
        if not doc:  # exit 1 prints the frontier on stderr, not the JSON document
            doc = {"stderr": err[-1500:]}
        rows[name] = {"code": code, "wall": wall, "limit_s": minutes * 60, "peak_mb": peak, "doc": doc}
        print(name, code, round(wall), flush=True)
    return rows


def relatency(work: Path, section: str, results: dict, seconds: float) -> None:
    """The final latency run of a section again, on the models its last run left in WORK."""
    from benchmarks_common import latency_inputs

    from graphopt import ir

    if section not in ("minilm", "ocr") or section not in results:
        return
    if section == "minilm":
        src = CACHE / "corpus" / "minilm_l6_ts.onnx"
        paths = [src, work / "minilm_int8.onnx", work / "minilm_int8_fusion.onnx", work / "minilm_compressed.onnx"]
        inputs = latency_inputs(ir.load_proto(src))
    else:
        import pruning_ocr as po

        src = po.source("rec48", work)
        _, evaluation, _ = po.render("rec48", work)
        paths = [src, work / "rec_int8_minmax.onnx", work / "rec_int8_percentile.onnx", work / "rec_compressed.onnx"]
        inputs = {"x": evaluation[0]}
    paths = [p for p in paths if p.exists()]
    ratios, ms, load = interleaved(paths, inputs, seconds)
    for label, r, m in zip(results[section]["rows"], ratios, ms):
        results[section]["rows"][label].update(latency_ratio=r, median_ms=m)
    results[section]["load"] = load


def _best_reached(stderr: str) -> dict:
    """The fastest point of the frontier an exit-1 run printed (``label: latency ratio R, METRIC Q`` lines after
    "best points reached"), as ``{"label", "latency_ratio", "quality"}``; {} when it printed none."""
    import re

    points = [{"label": m[0] + " (best reached)", "latency_ratio": float(m[1]), "quality": float(m[2])}
              for m in re.findall(r"^\s+(.+): latency ratio ([\d.]+), \S+ ([\d.]+)$", stderr, re.M)]
    return min(points, key=lambda p: p["latency_ratio"]) if points else {}


def _f(v: float | None, d: int = 4) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def markdown(results: dict, command: str) -> str:
    lines = ["# graphopt compress: pruning, low-rank and INT8 under one accuracy budget", "",
             f"Written by `{command}` (onnxruntime CPU, 2 threads, ORT_ENABLE_ALL; latency ratios from one "
             "interleaved run per model, graphopt.bench). The machine has 2 cores shared with other jobs: the load "
             "average at the start of each latency run is given; ratios move by a few percent between runs.", ""]
    ocr_title = ("PaddleOCR rec (PP-OCRv4), `--metric tools/ocr_metric.py:char_accuracy` with ground-truth labels, "
                 "`--max-drop {d:g}` ({p:g} point below the original's accuracy on each split), `--int8-method "
                 "percentile`")
    tight = results.get("ocr_tight", {}).get("doc", {}).get("max_drop") or 0.005
    for key, title, metric in (("minilm", "all-MiniLM-L6-v2 (trained), `--budget rank-fidelity=0.97`",
                                "rank_fidelity"),
                               ("ocr", ocr_title.format(d=0.01, p=1), "char_acc"),
                               ("ocr_tight", ocr_title.format(d=tight, p=tight * 100), "char_acc")):
        r = results.get(key)
        if not r:
            continue
        doc = r["doc"]
        lines += [f"## {title}", ""]
        if r.get("png"):
            lines += [f"![compress report]({r['png']})", ""]
        lines += [f"compress exit code {r['code']}, {r['wall']:.0f} s wall, peak RSS {r['peak_mb']:.0f} MB; "
                  f"{doc.get('points_measured', '-')} points measured, stopped: {doc.get('stopped', '-')}; chosen "
                  f"`{doc.get('pipeline', '-')}`; load {', '.join(f'{x:.1f}' for x in r['load'])}.", ""]
        if doc.get("int8_fusions"):
            lines += ["INT8 fusion variants built and timed at the first INT8 point (latency ratio during the search; "
                      "the one used for every INT8 candidate in bold): " + ", ".join(
                          (f"**{f['fusion']} {f['latency_ratio']:.3f}**" if f.get("chosen") else
                           f"{f['fusion']} {f['latency_ratio']:.3f}" if "error" not in f else
                           f"{f['fusion']} failed") for f in doc["int8_fusions"]) + ".", ""]
        if r.get("budget") is not None and doc.get("max_drop") is not None:
            lines += [f"Budget (`--max-drop {doc['max_drop']:g}`): ground-truth character accuracy at most "
                      f"{doc['max_drop']:g} below the original's own on the same lines: >= {r['budget']:.4f} on the "
                      f"128 search lines (the original reads {r['original_search']:.4f} of their characters), >= "
                      f"{doc['held_out_budget']:.4f} on the 128 held-out lines (the original: "
                      f"{doc['original_held_out']:.4f}); the table's accuracies are on the held-out lines.", ""]
        elif r.get("budget") is not None:
            lines += [f"Budget: ground-truth character accuracy >= {r['budget']} on the 128 search lines (the "
                      f"original reads {r['original_search']:.4f} of their characters); the table's accuracies are "
                      "on the 128 held-out lines.", ""]
        cols = ["rank_fidelity", "cosine"] if key == "minilm" else ["char_acc", "line_acc"]
        lines += ["| model | latency ratio | median ms | " + " | ".join(cols) + " |",
                  "|---|---:|---:|" + "---:|" * len(cols)]
        for label, row in r["rows"].items():
            lines.append(f"| {label} | {_f(row.get('latency_ratio'), 3)} | {_f(row.get('median_ms'), 2)} | "
                         + " | ".join(_f(row.get(c)) for c in cols) + " |")
        points = doc.get("frontier", {}).get("points", [])
        if points:
            lines += ["", "Every point the search measured (latency against the warm original during the search, "
                      f"{metric.replace('_', ' ')} on the search split; * = Pareto frontier, ** = chosen):", "",
                      "| point | latency ratio | quality | INT8 layers kept float | build+measure s |",
                      "|---|---:|---:|---:|---:|"]
            chosen = doc["frontier"].get("chosen")
            for i, p in enumerate(points):
                mark = " **" if i == chosen else (" *" if p.get("frontier") else "")
                lines.append(f"| {p['label']}{mark} | {_f(p['latency_ratio'], 3)} | {_f(p['quality'])} | "
                             f"{p.get('kept_float', '-') if p.get('int8') else '-'} | {p.get('seconds', '-')} |")
        lines.append("")
    rows = results.get("full")
    if rows:
        minutes = next((r["limit_s"] / 60 for r in rows.values() if "limit_s" in r), 0)
        lines += [f"## Full-size random-init corpus, `--speedup 2 --time-limit {minutes:g}`", "",
                  "Random weights: quality means nothing here (cosine to the original on 4 of 8 generated inputs, the "
                  "other 4 held out); this shows that the search ends within its limit and what it reached. "
                  "Calibration: 8 generated inputs (sequence 128).", "",
                  "| model | exit | wall s | limit s | peak RSS MB | points | stopped | chosen / best reached | "
                  "latency ratio | cosine |",
                  "|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
        for name, row in rows.items():
            if row.get("missing"):
                lines.append(f"| {name} | missing | | | | | | | | |")
                continue
            doc = row["doc"]
            c = doc.get("chosen") or _best_reached(doc.get("stderr", ""))
            lines.append(f"| {name} | {row['code']} | {row['wall']:.0f} | {row['limit_s']:.0f} | "
                         f"{row['peak_mb']:.0f} | "
                         f"{doc.get('points_measured', '-')} | {doc.get('stopped', '-')} | {c.get('label', '-')} | "
                         f"{_f(c.get('latency_ratio'), 3)} | {_f(c.get('quality'))} |")
        lines += ["", "Peak RSS is the compress process's own: it holds the O1 model, the pruned and factored models "
                  "it is building, the float64 activation statistics (Gram matrices of every consumer input) and the "
                  "onnxruntime sessions of the original and the candidate at once; it is not reduced yet."]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "graphopt_compress"))
    p.add_argument("--sections", default="minilm,ocr,ocr-tight,full")
    p.add_argument("--time-limit", type=float, default=5.0, help="minutes per full-size model (--speedup 2)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds of each final latency run")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--tight-max-drop", type=float, default=0.005, help="the ocr-tight section's --max-drop "
                   "(default 0.005; the ocr section's is 0.01)")
    p.add_argument("--full-models", help=f"models of the full section (default {','.join(FULL)}); others kept")
    p.add_argument("--latency-only", action="store_true", help="rerun only the final interleaved latency runs of "
                   "minilm and ocr on the models already in WORK (e.g. on a quieter machine)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "compress.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    for section in args.sections.split(","):
        if args.latency_only:
            relatency(work, section, results, args.seconds)
        elif section == "minilm":
            results["minilm"] = minilm(work, args.seconds)
        elif section == "ocr":
            results["ocr"] = ocr(work, args.seconds)
        elif section == "ocr-tight":
            results["ocr_tight"] = ocr(work, args.seconds, args.tight_max_drop)
        elif section == "full":
            models = tuple(args.full_models.split(",")) if args.full_models else FULL
            results["full"] = full(work, args.time_limit, models, results.get("full"))
        store.write_text(json.dumps(results, default=str))
    command = "python tools/compare_compress.py" + (
        f" --time-limit {args.time_limit:g}" if args.time_limit != 5 else "")
    Path(args.out).write_text(markdown(results, command))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

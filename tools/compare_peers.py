#!/usr/bin/env python3
"""graphopt against the peer optimizers, side by side, on a corpus of models.

Usage::

    python tools/compare_peers.py CORPUS_DIR OUT_DIR [--also MODEL ...] [--tools a,b,...]
        [--seconds 6] [--warmup 2] [--min-runs 5] [--max-gb 2.5] [--previous OLD/report.json]

For every ``.onnx`` in CORPUS_DIR (plus each ``--also`` model; models larger
than ``--max-gb`` with their external data are listed as skipped):

1. **Optimize** with each tool of :data:`DEFAULT_TOOLS` (``tools/peer_tools.py``
   says what each runs: graphopt ``O1`` and ``O2`` for each target; onnxslim,
   onnxsim, onnxoptimizer, onnxscript's ``optimizer.optimize`` and
   ``ort_fusions.optimize_for_ort``, the onnxruntime transformers optimizer,
   Polygraphy's constant folding), each in its own process: wall time (process
   spawn to exit, imports included), ``work`` time (load + optimize + save,
   measured inside) and peak RSS (the child's own ``ru_maxrss``). A tool that
   is not installed, fails, times out or is killed gets its error in the table.
2. **Check** each output: ``onnx.checker`` (full check), onnxruntime load and
   run on the inputs ``tools/compare_fusers.make_inputs`` makes (batch 1,
   sequence 128; fixed image shapes for the PaddleOCR models), the error
   against the original's outputs (``scale rel err`` = max|a-b| / max|a| over
   the outputs; the exact passes are held to 1e-5, fusions to 1e-4), cosine,
   output signature, node count and fused-operator counts.
3. **Benchmark** every output that runs, in onnxruntime (CPU, 2 intra-op
   threads, spinning off) with ``graphopt.bench.benchmark``: interleaved run
   by run, in groups of the original plus at most three variants (BENCH.md:
   more live sessions slow every run), at ORT_ENABLE_ALL and at
   ORT_DISABLE_ALL. The original is the reference of every group, so the
   ratios of all groups are to the same model.
4. **Roofline**: the machine's fp32 GEMM throughput (``graphopt.bench.gemm_peak``)
   and each output's achieved GFLOP/s (the original's MatMul/Gemm/Conv FLOPs
   at the benchmark's input shapes over the median latency at ORT_ENABLE_ALL).

Writes ``OUT_DIR/report.md`` (one table per model), ``OUT_DIR/report.json``
and ``OUT_DIR/latency.png`` (ratios at ORT_ENABLE_ALL); the optimized models
stay under ``OUT_DIR/outputs/`` with ``--keep``. ``--previous`` adds the spread of
the latency ratios against an earlier run's ``report.json``.

Peers are optional, not graphopt dependencies:
``pip install 'graphopt[bench]'`` installs them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_fusers import REAL, fused_counts, make_inputs, parse_shapes  # noqa: E402
from peer_report import chart, report_markdown, spread  # noqa: E402
from peer_spawn import spawn  # noqa: E402
from peer_tools import MODULE, RUNNERS, worker  # noqa: E402
from simplifier_checks import _short, check_output, count_nodes, json_safe  # noqa: E402

#: In the order they are timed, three to a group with the original: the
#: fusers together, then the simplifiers, so that the ratios compared with
#: each other come from the same interleaved run.
DEFAULT_TOOLS = ("graphopt-O2-ort", "onnxscript-ort", "ort-transformers", "graphopt", "onnxslim", "onnxsim",
                 "graphopt-O2-onnx", "graphopt-O2-tensorrt", "onnxscript", "onnxoptimizer", "polygraphy")
PIP = {"onnxslim": "onnxslim", "onnxsim": "onnxsim", "onnxoptimizer": "onnxoptimizer", "onnxscript": "onnxscript",
       "polygraphy": "polygraphy"}
GROUP = 3
PROTOBUF_LIMIT = 2**31 - 1


def model_bytes(path: Path) -> int:
    """The model file plus its external data files (bytes)."""
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model: the tools will say so
        return path.stat().st_size
    locations = {entry.value for t in external_data_helper._get_all_tensors(proto)  # noqa: SLF001
                 if external_data_helper.uses_external_data(t) for entry in t.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations
                                     if (path.parent / loc).is_file())


def model_flops(path: Path, inputs: dict[str, Any]) -> int | None:
    """MatMul/Gemm/Conv FLOPs of ``path`` at the shapes of ``inputs``
    (``graphopt.analysis.stats.flops``; dims bound by name from the inputs)."""
    import graphopt
    from graphopt.analysis.stats import flops

    model = graphopt.load(str(path))
    dims: dict[str, int] = {}
    for value in model.graph.inputs:
        array = inputs.get(value.name)
        if array is None or value.shape is None:
            continue
        for dim, size in zip(value.shape, array.shape):
            if isinstance(dim, str) or getattr(dim, "value", None) is not None:
                name = dim if isinstance(dim, str) else dim.value
                if isinstance(name, str):
                    dims[name] = int(size)
    try:
        total, _unknown, _approx = flops(model, dims)
    except Exception:  # noqa: BLE001 - an estimate must not stop the report
        return None
    return total or None


def optimize_all(path: Path, tools: list[str], args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Step 1: every tool on ``path``, each in its own process."""
    size = model_bytes(path)
    big = size > PROTOBUF_LIMIT or size > path.stat().st_size  # over 2 GB, or has external data
    rows: dict[str, dict[str, Any]] = {}
    for tool in tools:
        if importlib.util.find_spec(MODULE[tool]) is None:
            rows[tool] = {"ok": False, "error": f"not installed (pip install {PIP.get(tool, MODULE[tool])})"}
            continue
        folder = work / path.stem / tool
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        dst = folder / f"{path.stem}.onnx"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, str(path), str(dst)] + (
            ["--big"] if big else [])
        row = spawn(cmd, dst, args.timeout, work / path.stem / f"{tool}.log")
        row["output"] = str(dst)
        rows[tool] = row
        status = "ok" if row.get("ok") else f"FAILED {str(row.get('error', ''))[:160]}"
        print(f"  {tool}: wall {row.get('wall_s', 0):.1f} s, peak RSS {row.get('rss_mb') or 0:.0f} MB, {status}",
              flush=True)
    return rows


def check_all(path: Path, rows: dict[str, dict[str, Any]], inputs: dict[str, Any]) -> None:
    """Step 2: validity, numerics, nodes and fused ops of every output."""
    import onnx

    from graphopt.verify.runtime import run_model

    src = onnx.load(str(path), load_external_data=False)
    ref = run_model(path, inputs)
    scale = max((float(abs(v).max()) for v in ref.values() if getattr(v, "size", 0) and v.dtype.kind == "f"),
                default=0.0)
    for row in rows.values():
        if not row.get("ok"):
            continue
        out = Path(row["output"])
        try:
            row.update(check_output(src, out, ref, inputs))
            row["fused"], _ = fused_counts(out)
            if row.get("max_abs_err") is not None and scale > 0:
                row["scale_rel_err"] = row["max_abs_err"] / scale
        except Exception as e:  # noqa: BLE001 - a broken output is a row, not a crash
            row["check_error"] = _short(e)
        row["runs_in_ort"] = row.get("ort_run") == "ok" and not row.get("check_error")


def bench_all(path: Path, rows: dict[str, dict[str, Any]], inputs: dict[str, Any], args: argparse.Namespace,
              entry: dict[str, Any]) -> None:
    """Step 3: interleaved latency, groups of the original + ``GROUP`` variants,
    at both optimization levels."""
    from graphopt.bench import benchmark

    runnable = [t for t, r in rows.items() if r.get("runs_in_ort")]
    groups = [runnable[i:i + GROUP] for i in range(0, len(runnable), GROUP)] or [[]]
    entry["original_ms"] = {}
    for level in args.levels:
        reference = []
        for group in groups:
            paths = [path] + [Path(rows[t]["output"]) for t in group]
            try:
                report = benchmark(paths, inputs=inputs, threads=args.threads, opt_level=level,
                                   seconds=args.seconds, warmup=args.warmup, min_runs=args.min_runs)
            except Exception as e:  # noqa: BLE001
                for t in group:
                    rows[t][f"bench_{level}_error"] = _short(e)
                continue
            reference.append(report.models[0].median_ms)
            entry.setdefault("load", []).append([report.load_before[0], report.load_after[0]])
            for tool, timing in zip(group, report.models[1:]):
                rows[tool][f"median_{level}_ms"] = timing.median_ms
                rows[tool][f"p90_{level}_ms"] = timing.p90_ms
                rows[tool][f"ratio_{level}"] = timing.ratio
        if reference:
            reference.sort()
            entry["original_ms"][level] = reference[len(reference) // 2]
        print(f"  bench {level}: " + ", ".join(f"{t} {rows[t].get(f'ratio_{level}', float('nan')):.3f}"
                                             for t in runnable), flush=True)


def compare_model(path: Path, tools: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """All steps for one model."""
    import onnx

    print(f"\n### {path.name}", flush=True)
    start = time.perf_counter()
    proto = onnx.load(str(path), load_external_data=False)
    entry: dict[str, Any] = {"model": path.stem, "path": str(path), "size_mb": model_bytes(path) / 2**20,
                             "nodes": count_nodes(proto)[0], "fused": fused_counts(path)[0]}
    del proto
    shapes = parse_shapes(args.shape) or parse_shapes([REAL[path.stem]] if path.stem in REAL else None)
    inputs = make_inputs(path, args, shapes)
    entry["inputs"] = {k: list(v.shape) for k, v in inputs.items()}
    entry["flops"] = model_flops(path, inputs)
    rows = optimize_all(path, tools, args, work)
    check_all(path, rows, inputs)
    bench_all(path, rows, inputs, args, entry)
    for row in rows.values():
        median = row.get("median_all_ms")
        if entry["flops"] and median:
            row["gflops"] = entry["flops"] / (median / 1e3) / 1e9
    if entry["flops"] and entry["original_ms"].get("all"):
        entry["gflops"] = entry["flops"] / (entry["original_ms"]["all"] / 1e3) / 1e9
    entry["tools"] = rows
    entry["seconds"] = time.perf_counter() - start
    if not args.keep:
        shutil.rmtree(work / path.stem, ignore_errors=True)
    return entry


def collect(corpus: Path, also: list[Path], max_gb: float) -> tuple[list[Path], list[dict[str, Any]]]:
    """The models to compare and the ones skipped for size."""
    models, skipped = [], []
    for path in sorted(corpus.glob("*.onnx")) + list(also):
        size = model_bytes(path)
        if max_gb and size > max_gb * 2**30:
            skipped.append({"model": path.stem, "size_gb": size / 2**30})
        else:
            models.append(path)
    return models, skipped


def versions() -> dict[str, str]:
    """Versions of graphopt, the peers and the runtime."""
    from importlib import metadata

    out = {}
    for dist in ("graphopt", "onnx", "onnx-ir", "onnxruntime", "onnxslim", "onnxsim", "onnxoptimizer", "onnxscript",
                 "polygraphy", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """What the run was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        w = argparse.ArgumentParser(prog="compare_peers.py --worker")
        w.add_argument("--worker", choices=list(RUNNERS))
        w.add_argument("src")
        w.add_argument("dst")
        w.add_argument("--big", action="store_true")
        a = w.parse_args(argv)
        return worker(a.worker, a.src, a.dst, a.big)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", type=Path, help="folder of .onnx models (external data beside them)")
    p.add_argument("out", type=Path, help="folder for report.md, report.json, latency.png")
    p.add_argument("--also", type=Path, action="append", default=[], help="another model to include")
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help="comma-separated (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sequence", type=int, default=128)
    p.add_argument("--shape", action="append", metavar="NAME=D,D,...", help="input shape for every model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per benchmark group (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per model and group (default 2)")
    p.add_argument("--min-runs", type=int, default=5,
                   help="timed runs per model and group at least, past --seconds (default 5: a 1 s model then "
                        "costs 20 s a group, and the full-size corpus fits in an hour on 2 cores)")
    p.add_argument("--levels", default="all,disable", help="onnxruntime optimization levels timed")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per optimizer run (default 900)")
    p.add_argument("--max-gb", type=float, default=2.5,
                   help="skip models larger than this (GiB) with their data (0: none; default 2.5: the full-size corpus, "
                        "not the >2 GB memory-test LLaMA)")
    p.add_argument("--previous", type=Path, help="an earlier report.json: report the spread of the ratios")
    p.add_argument("--roofline-n", type=int, default=2048, help="size of the GEMM measured for the roofline")
    p.add_argument("--keep", action="store_true", help="keep the optimized models under OUT_DIR/outputs")
    p.add_argument("--publish", action="store_true",
                   help="also write the report to BENCHMARKS.md at the repository root (chart and JSON under "
                        "tools/benchmarks/)")
    args = p.parse_args(argv)
    args.levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in RUNNERS]
    if bad:
        p.error(f"unknown tool(s) {bad}; choose from {list(RUNNERS)}")
    if not args.corpus.is_dir():
        p.error(f"corpus folder '{args.corpus}' does not exist (make it with tools/make_corpus.py)")
    missing = [str(m) for m in args.also if not m.is_file()]
    if missing:
        p.error(f"--also models not found: {missing}")
    previous = None
    if args.previous:
        try:
            previous = json.loads(args.previous.read_text())
        except (OSError, ValueError) as e:
            p.error(f"--previous: cannot read '{args.previous}': {e}")
    models, skipped = collect(args.corpus, args.also, args.max_gb)
    if not models:
        p.error(f"no .onnx models in '{args.corpus}'")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "outputs"
    work.mkdir(exist_ok=True)
    from graphopt.bench import gemm_peak

    start = time.perf_counter()
    peak = gemm_peak(args.roofline_n, args.threads)
    doc: dict[str, Any] = {"machine": machine(), "versions": versions(), "tools": tools,
                           "command": "python tools/compare_peers.py " + " ".join(argv),
                           "settings": {"seconds": args.seconds, "warmup": args.warmup, "min_runs": args.min_runs,
                                        "threads": args.threads,
                                        "levels": args.levels, "batch": args.batch, "sequence": args.sequence},
                           "roofline": {"n": peak.n, "numpy_gflops": peak.numpy_gflops,
                                        "ort_gflops": peak.ort_gflops, "peak_gflops": peak.peak_gflops},
                           "skipped": skipped, "models": [], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(f"GEMM {peak.n}^3 fp32: numpy {peak.numpy_gflops:.0f} GFLOP/s, onnxruntime {peak.ort_gflops:.0f} GFLOP/s",
          flush=True)
    for path in models:
        try:
            doc["models"].append(compare_model(path, tools, args, work))
        except Exception as e:  # noqa: BLE001 - an unreadable model is a line in the report
            doc["models"].append({"model": path.stem, "path": str(path), "error": _short(e), "tools": {}})
        doc["total_s"] = time.perf_counter() - start
        if previous is not None:
            doc["spread"] = spread(doc, previous)
        _write(args.out, doc)  # as we go: a long run leaves partial results
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    chart(doc, args.out / "latency.png")
    _write(args.out, doc)
    if args.publish:
        publish(args.out, doc)
    print(f"\nreport: {args.out / 'report.md'} ({doc['total_s'] / 60:.1f} min)")
    return 0


OTHER_BENCHMARKS = """## Other benchmarks

Each written by one command (run from the repository root; models and data are made into `~/.cache/graphopt` by
`tools/make_corpus.py --full --trained`, `tools/text_inputs.py` and the scripts themselves):

| file | command | what |
|---|---|---|
| `tools/benchmarks/pruning.md` | `python tools/compare_pruning.py` (`--models det,rec` for PaddleOCR) | structured pruning on all-MiniLM-L6-v2 and PaddleOCR |
| `tools/benchmarks/lowrank.md` | `python tools/compare_lowrank.py` (`--vit`, `--ocr`, `--llama` sections) | low-rank factorization |
| `tools/benchmarks/compress.md` | `python tools/compare_compress.py` | `graphopt compress` against INT8 alone; `--speedup 2` on the full-size corpus |
| `tools/benchmarks/backend_sweep.md` | `python tools/sweep_backend.py --workers 2 --timeout 120 --report tools/benchmarks/backend_sweep.md` | O1/O2 on onnx's backend test cases |
| `tools/benchmarks/fuzz.md` | `python tools/fuzz.py --count 1000 --markdown tools/benchmarks/fuzz.md` | generated graphs through O1/O2 |
"""
"""The benchmark index appended to BENCHMARKS.md (kept when the peer report is republished)."""


def publish(out: Path, doc: dict[str, Any]) -> None:
    """Copy the report to ``BENCHMARKS.md`` (the chart and JSON to
    ``tools/benchmarks/``), with how to regenerate it."""
    root = Path(__file__).resolve().parent.parent
    folder = root / "tools" / "benchmarks"
    folder.mkdir(exist_ok=True)
    if (out / "latency.png").is_file():
        shutil.copyfile(out / "latency.png", folder / "latency.png")

    def portable(text: str) -> str:  # no paths of this machine in the repository
        return text.replace(str(out.resolve()), "OUT_DIR").replace(str(out), "OUT_DIR").replace(
            str(Path.home()), "~").replace(str(root) + "/", "")

    (folder / "report.json").write_text(portable(json.dumps(json_safe(doc), indent=1, default=str)))
    text = portable(report_markdown(doc)).replace("](latency.png)", "](tools/benchmarks/latency.png)", 1)
    title, _, rest = text.partition("\n")
    intro = ("\n\nThe latest side-by-side run of graphopt and the peer optimizers on the full-size corpus "
             "(`tools/make_corpus.py --full` makes it in `~/.cache/graphopt/corpus`), written by "
             "`tools/compare_peers.py --publish` (the command below; add `--previous OLD/report.json` to report "
             "the spread against an earlier run). The data: `tools/benchmarks/report.json`.\n")
    tmp = root / ".BENCHMARKS.md.tmp"
    tmp.write_text(title + intro + rest.rstrip("\n") + "\n\n" + OTHER_BENCHMARKS)
    os.replace(tmp, root / "BENCHMARKS.md")


def _write(out: Path, doc: dict[str, Any]) -> None:
    for name, text in (("report.json", json.dumps(json_safe(doc), indent=1, default=str)),
                       ("report.md", report_markdown(doc))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Pruning + low-rank + INT8 against pruning + INT8 and INT8 alone on all-MiniLM-L6-v2 (issue 22's last target),
spliced into tools/benchmarks/lowrank.md as its own section.

Each chain is the CLI run by run, as a user would chain it: ``graphopt prune`` (the error allocation, least
squares, heads + FFN; scores ``--method``, default obs) -> ``graphopt factorize`` (svd-llm with the refit, the
speed guard on) -> ``graphopt optimize -p O2 --target ort`` -> ``graphopt quantize`` (64 calibration sentences),
on the ts export; calibration: the 256 calib sentences of tools/text_inputs.py; quality: rank fidelity and
mean embedding cosine to the fp32 original on the 512 eval sentences (neither calibration nor any search saw
them); latency: every final model against the original after O2 in interleaved runs (graphopt.bench, 2 threads,
ORT_ENABLE_ALL, batch 1, 128 real tokens; benchmarks_common.interleaved_ratios).

Usage::

    .venv/bin/python tools/compare_stacked.py [--work DIR] [--seconds 10] [--method obs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from benchmarks_common import MODELS, TEXT, interleaved_ratios, latency_inputs, o2, outputs, quality, data  # noqa: E402

OUT = ROOT / "tools" / "benchmarks" / "lowrank.md"
CHAINS = (  # (label, prune ratio or None, factorize params or None)
    ("INT8 alone", None, None),
    ("prune 0.85 -> INT8", 0.85, None),
    ("prune 0.85 -> low-rank 0.9 -> INT8", 0.85, 0.9),
    ("prune 0.75 -> INT8", 0.75, None),
    ("prune 0.75 -> low-rank 0.9 -> INT8", 0.75, 0.9),
    ("prune 0.6 -> INT8", 0.6, None),
)


def graphopt(*argv: object) -> None:
    """One CLI run (quiet), failing the study on a non-zero exit."""
    subprocess.run([sys.executable, "-m", "graphopt.cli.main", "-q", *map(str, argv)], check=True)


def build(work: Path, method: str) -> list[dict]:
    """Every chain's INT8 model in ``work``, with its held-out quality."""
    from graphopt import ir

    src = MODELS["ts"]
    calib = TEXT / "calib"
    evaluation = list(data("eval", ir.load_proto(src)))
    ref = outputs(str(src), evaluation)
    rows = []
    for label, ratio, params in CHAINS:
        t = time.perf_counter()
        stem = "orig" if ratio is None else f"p{ratio}" + ("" if params is None else f"_f{params}")
        current = src
        if ratio is not None:
            pruned = work / f"p{ratio}.onnx"
            if not pruned.exists():
                graphopt("prune", current, "-o", pruned, "--calib", calib, "--ratio", ratio, "--method", method,
                         "--allocation", "error", "--kinds", "heads,ffn")
            current = pruned
        if params is not None:
            factored = work / f"{stem}.onnx"
            graphopt("factorize", current, "-o", factored, "--calib", calib, "--params", params,
                     "--method", "svd-llm")
            current = factored
        final = work / f"{stem}_int8.onnx"
        graphopt("quantize", current, "-o", final, "--calib", calib, "--calib-limit", 64)
        rows.append({"label": label, "path": str(final), "seconds": time.perf_counter() - t,
                     **quality(outputs(str(final), evaluation), ref)})
        print(rows[-1], flush=True)
    return rows


def write(out: Path, rows: list[dict], method: str, load: tuple[float, float], command: str) -> None:
    from compare_lowrank import _splice

    lines = ["## Pruning + low-rank + INT8 against pruning + INT8 (all-MiniLM-L6-v2 ts; "
             f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Each chain run through the CLI: `prune --method {method} --allocation error` (heads + FFN, least "
             "squares; the ratio is the kept block FLOPs) -> `factorize --method svd-llm --params P` (refit, speed "
             "guard) -> `quantize` (64 calibration sentences; its int8 pipeline's fusions). Quality on the 512 "
             "held-out sentences "
             "against the fp32 original; latency of the final model against the original after O2, interleaved "
             f"(2 threads, ORT_ENABLE_ALL, batch 1, 128 real tokens); load average before/after {load[0]:.2f} / "
             f"{load[1]:.2f}. `s`: building the chain (factorize, quantize, evaluation; a pruned model already in the work folder is reused).", "",
             "| chain | latency | RF | cos | s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['latency_ratio']:.3f} | {r['rank_fidelity']:.4f} | {r['cosine']:.4f} | "
                     f"{r['seconds']:.0f} |")
    _splice(out, "## Pruning + low-rank + INT8", "\n".join(lines) + "\n\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "graphopt_stacked"))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--method", default="obs", help="prune's scores (graphopt prune --method)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = build(work, args.method)
    from graphopt import ir

    base = work / "original_o2.onnx"
    if not base.exists():
        o2(MODELS["ts"], base)
    load = os.getloadavg()[0]
    ratios = interleaved_ratios(base, [(r["label"], Path(r["path"])) for r in rows],
                                latency_inputs(ir.load_proto(MODELS["ts"])), args.seconds, "stacked")
    for r in rows:
        r["latency_ratio"] = ratios[r["label"]]
    write(Path(args.out), rows, args.method, (load, os.getloadavg()[0]),
          "python tools/compare_stacked.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

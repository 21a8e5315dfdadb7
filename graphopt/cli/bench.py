"""``graphopt bench``: interleaved onnxruntime latency of one or more models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from graphopt.bench import benchmark, profile_model
from graphopt.bench.runner import OPT_LEVELS
from graphopt.cli.common import add_dim_options, console, input_request, stdout
from graphopt.errors import BackendUnavailableError, InputError
from graphopt.report.document import short_paths

__all__ = ["add_parsers"]


def _chart(report: Any, path: Path) -> None:
    """Bar chart of median latency with p90 whiskers (PNG, or HTML by suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise BackendUnavailableError("--chart needs matplotlib: pip install 'graphopt[bench]' (or matplotlib)") from e
    names = [Path(m.path).name for m in report.models]
    medians = [m.median_ms for m in report.models]
    errs = [m.p90_ms - m.median_ms for m in report.models]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names)), 3.5))
    ax.bar(names, medians, yerr=[[0] * len(errs), errs], capsize=4, color="#4c72b0")
    for i, m in enumerate(report.models):
        ax.text(i, m.median_ms, f"{m.ratio:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("median latency (ms), whisker = p90")
    ax.set_title(f"onnxruntime {report.provider}, {report.threads} threads, opt level {report.opt_level}")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    if path.suffix.lower() in (".html", ".htm"):
        import base64
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        path.write_text(f'<html><body><img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'
                        "</body></html>")
    else:
        fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    """Time the models interleaved; print medians, p90, ratios and errors."""
    from graphopt.verify.feed import runnable_inputs

    if args.runs is not None and args.runs < 1:
        raise InputError("--runs must be at least 1")
    if args.report:
        from graphopt.report import check_report_path

        check_report_path(args.report)
    for m in args.models:
        if not Path(m).is_file():
            raise InputError(f"model '{m}' does not exist; check the path")
    # inputs the first model runs on (options checked, free dims grown), or exit 2 before any timing
    inputs = runnable_inputs(args.models[0], input_request(args, args.models[0])).inputs
    report = benchmark(args.models, inputs=inputs, provider=args.provider,
                       threads=args.threads, opt_level=args.opt_level, warmup=args.warmup,
                       min_runs=args.runs or 10, max_runs=args.runs or 1000,
                       seconds=0.0 if args.runs else args.seconds)
    profiles = {}
    if args.profile:
        for m in args.models:
            profiles[m] = profile_model(m, inputs, provider=args.provider, threads=args.threads,
                                        opt_level=args.opt_level, top=args.top)
    if args.chart:
        _chart(report, Path(args.chart))
    if args.json or args.report:  # one document for --json and --report
        doc = report.to_dict(samples=args.samples)
        if profiles:
            doc["profiles"] = {m: [p.__dict__ for p in ops] for m, ops in profiles.items()}
        if args.report:
            from graphopt.report import write_report

            write_report(args.report, doc, kind="bench")
        if args.json:
            stdout.print_json(json.dumps(doc))
            return 0
    table = Table(title=f"onnxruntime {report.provider}, {report.threads} threads, opt level {report.opt_level}, "
                        f"inputs {report.inputs}", show_edge=False)
    labels, folder = short_paths([m.path for m in report.models])
    if folder:
        table.caption = Text(f"models in {folder}")
    for col in ("model", "runs", "median ms", "p90 ms", "ratio", "max abs err", "cosine"):
        table.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    for m, label in zip(report.models, labels):
        table.add_row(Text(label), str(m.runs), f"{m.median_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.ratio:.3f}",
                      "" if m.max_abs_err is None else f"{m.max_abs_err:.3g}",
                      "" if m.cosine is None else f"{m.cosine:.6f}")
    stdout.print(table)
    stdout.print(f"load average {report.load_before[0]:.2f} before, {report.load_after[0]:.2f} after; "
                 "ratios within 0.97-1.03 are noise on a shared machine")
    for m, ops in profiles.items():
        prof = Table(title=Text(f"hot spots: {m}"), show_edge=False)
        for col in ("op", "ms/run", "share", "nodes"):
            prof.add_column(col, justify="left" if col == "op" else "right", overflow="fold")
        for op in ops:
            prof.add_row(op.op, f"{op.ms:.3f}", f"{op.share:.1%}", str(op.nodes))
        stdout.print(prof)
    if args.chart:
        console.print(f"chart written to {args.chart}")
    if args.report:
        console.print(f"report written to {args.report}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``bench``."""
    p = sub.add_parser("bench", help="onnxruntime latency of models, interleaved, with ratios to the first")
    p.add_argument("models", nargs="+", help="models to time; the first is the reference")
    add_dim_options(p)
    p.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--opt-level", choices=list(OPT_LEVELS), default="all", help="onnxruntime graph optimization level")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per model (default 5)")
    p.add_argument("--seconds", type=float, default=10.0, help="time budget of the timed rounds (default 10)")
    p.add_argument("--runs", type=int, help="exact number of timed runs per model (overrides --seconds)")
    p.add_argument("--profile", action="store_true", help="add onnxruntime's per-operator hot spots per model")
    p.add_argument("--top", type=int, default=10, help="operators shown by --profile")
    p.add_argument("--chart", help="write a chart (.png or .html; needs matplotlib)")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report (latency, "
                   "and with --profile the per-operator time of each model)")
    p.add_argument("--samples", action="store_true", help="include every timed run in --json")
    p.set_defaults(func=cmd_bench)

"""``graphopt factorize``: low-rank factorization of MatMul / Gemm / 1x1 Conv weights (svd, asvd, svd-llm), each
rank chosen for accuracy and measured speed, with an accuracy report against the original.

Conventions as ``graphopt quantize``: options and calibration data are checked before anything is written (exit
2 with a message), the output is written atomically after it passes onnx.checker and runs in onnxruntime, and
``--budget`` exits 1 with nothing written when even the mildest factorization misses it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.table import Table

from graphopt import ir
from graphopt.cli.common import add_dim_options, input_request, stdout, want_progress
from graphopt.cli.lossy import calibration_data, evaluation_batches, first_batches, generated_data
from graphopt.errors import InputError, VerificationError

__all__ = ["add_parsers", "parse_budget", "tokens_of"]

REPORT_BATCHES = 64
"""Evaluation (else calibration) batches the accuracy report compares on, at most."""


def parse_budget(text: str | None) -> dict[str, float] | None:
    """``"rank-fidelity=0.98"`` -> ``{"rank-fidelity": 0.98}``; any metric of
    :data:`graphopt.calibrate.metrics.METRICS` (cosine, argmax, rank-fidelity).

    Raises:
        InputError: an unknown metric, or a value outside (0, 1].
    """
    from graphopt.calibrate.metrics import METRICS

    if not text:
        return None
    key, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if key.strip() not in METRICS or not sep or not 0.0 < number <= 1.0:
        raise InputError(f"--budget expects METRIC=VALUE with METRIC one of {', '.join(METRICS)} and 0 < VALUE <= 1 "
                         f"(e.g. --budget cosine=0.99), got {text!r}")
    return {key.strip(): number}


def tokens_of(args: argparse.Namespace) -> int:
    """``M`` of the speed benchmark: ``--tokens``, else the product of the ``--dim`` sizes whose names start with
    batch or seq (e.g. ``--dim batch=1 --dim sequence=128``), else 128."""
    if args.tokens is not None:
        return args.tokens
    dims = getattr(args.request, "dims", None) or {}
    picked = [v for k, v in dims.items() if k.lower().startswith(("batch", "seq"))]
    out = 1
    for v in picked:
        out *= int(v)
    return out if picked else 128


def _check_args(args: argparse.Namespace) -> None:
    if args.params is not None and not 0 < args.params <= 1:
        raise InputError(f"--params must be in (0, 1] (parameters of the factorizable layers after / before), got "
                         f"{args.params}")
    if args.energy is not None and not 0 < args.energy <= 1:
        raise InputError(f"--energy must be in (0, 1], got {args.energy}")
    if args.rank is not None and args.rank < 1:
        raise InputError(f"--rank must be a positive integer, got {args.rank}")
    if args.align < 1:
        raise InputError(f"--align must be a positive integer, got {args.align}")
    if args.tokens is not None and args.tokens < 1:
        raise InputError(f"--tokens must be a positive integer, got {args.tokens}")
    if args.method != "svd" or args.refit != "none" or args.budget:
        if args.calib is None:
            raise InputError(f"--method {args.method} with --refit {args.refit} needs calibration data: --calib PATH "
                             "(an .npz file or a folder of them) or --calib generate; only --method svd --refit none "
                             "runs without")


def cmd_factorize(args: argparse.Namespace) -> int:
    """Load, check options and data, factorize, validate, write atomically, report."""
    from graphopt.passes.lowrank.factorize import FactorizeOptions, factorize

    start = time.perf_counter()
    if args.report:
        from graphopt.report import check_report_path

        check_report_path(args.report)  # before any work: a bad --report path is exit 2 now
    budget = parse_budget(args.budget)
    _check_args(args)
    proto = ir.load_proto(args.input)  # LoadError (exit 2) for a missing or unreadable file
    args.request = input_request(args, proto)
    calibration = calibration_data(args, proto)
    if calibration is not None:
        first_batches(calibration, 1)  # a first sample that does not fit fails now (exit 2), nothing written
    evaluation = evaluation_batches(args, proto, REPORT_BATCHES)
    options = FactorizeOptions(method=args.method, refit=args.refit, params=args.params or 0.0,
                               energy=args.energy or 0.0, rank=args.rank or 0, align=args.align,
                               speed_guard=not args.no_speed_guard, tokens=tokens_of(args), threads=args.threads,
                               speed_cache=args.speed_cache or "", exclude_nodes=tuple(args.exclude_nodes or ()))
    model = ir.load(args.input)
    report = factorize(model, options, calibration, evaluation=evaluation, budget=budget,
                       progress=want_progress(args))
    if report.budget is not None and report.budget["params"] >= 1.0:
        b = report.budget
        raise VerificationError(f"even the mildest factorization misses the budget {b['metric']} >= {b['threshold']} "
                                f"(best {b['score']:.6f}); nothing was written")
    if evaluation is not None:
        batches = evaluation
    elif calibration is not None:
        batches = first_batches(calibration, REPORT_BATCHES)
    else:
        batches = first_batches(generated_data(args, proto, 2, 1000), 2)
    box: dict[str, Any] = {}

    def validated(path: Any) -> None:
        from graphopt.calibrate.report import accuracy_report

        box["accuracy"] = accuracy_report(args.input, path, batches)
        box["rank_fidelity"] = _rank_fidelity(args.input, str(path), batches)

    saved = ir.save(model, args.output, check=True, validate=validated)
    seconds = time.perf_counter() - start
    accuracy = box["accuracy"]
    doc = {"input": args.input, "output": str(saved.path), "seconds": seconds, **report.to_dict(),
           "accuracy": {"data": "evaluation" if evaluation is not None else "calibration", "batches": len(batches),
                        "cosine": accuracy.cosine, "rank_fidelity": box["rank_fidelity"],
                        "outputs": [o.__dict__ for o in accuracy.outputs]}}
    if args.report:
        from graphopt.report import write_report

        write_report(args.report, doc, kind="factorize")
    if args.json:
        stdout.print_json(json.dumps(doc, default=str))
    elif not args.quiet:
        stdout.print(_table(report, doc["accuracy"], seconds))
        stdout.print(f"wrote {saved.path}")
        if args.report:
            stdout.print(f"report written to {args.report}")
    return 0


def _rank_fidelity(reference: str, path: str, batches: list[dict]) -> float | None:
    """Rank fidelity on ``batches`` (None when the model has no sentence-embedding-like output or < 3 sentences)."""
    from graphopt.calibrate.metrics import rank_fidelity
    from graphopt.passes.lowrank.budget import run_outputs

    try:
        return rank_fidelity(run_outputs(path, batches), run_outputs(reference, batches))
    except (ValueError, IndexError):
        return None


def _table(report: Any, accuracy: dict[str, Any], seconds: float) -> Table:
    outer = Table.grid(padding=1)
    layers = Table(title=f"factorize ({report.method}, refit {report.refit})", show_edge=False)
    for col in ("layer", "op", "K x N", "rank", "output error", "params", "speed ratio", "note"):
        layers.add_column(col, justify="left" if col in ("layer", "op", "note") else "right")
    for r in report.layers:
        err = "" if r.error is None else f"{r.error:.4g}"
        speed = "" if r.speed_ratio is None else f"{r.speed_ratio:.3f}"
        layers.add_row(r.name, r.kind, f"{r.k} x {r.n}", f"{r.full_rank} -> {r.rank or r.full_rank}", err,
                       f"{r.params_before} -> {r.params_after}", speed, r.reason)
    outer.add_row(layers)
    ratio = report.params_after / report.params_before if report.params_before else 1.0
    flops = report.flops_after / report.flops_before if report.flops_before else 1.0
    outer.add_row(f"{report.factorized} of {len(report.layers)} layers factorized; parameters {ratio:.3f}x, FLOPs "
                  f"{flops:.3f}x of the factorizable layers")
    if report.skipped_for_speed:
        outer.add_row("skipped for speed: " + ", ".join(report.skipped_for_speed))
    if report.budget:
        b = report.budget
        outer.add_row(f"budget {b['metric']} >= {b['threshold']}: params {b['params']:.2f}, score {b['score']:.6f}")
    rf = accuracy["rank_fidelity"]
    outer.add_row(f"on {accuracy['batches']} {accuracy['data']} batches: output cosine {accuracy['cosine']:.6f}"
                  + (f", rank fidelity {rf:.4f}" if rf is not None else ""))
    outer.add_row(f"done in {seconds:.1f} s")
    return outer


def add_parsers(sub: Any) -> None:
    """Register ``factorize``."""
    p = sub.add_parser("factorize", help="low-rank factorization of MatMul/Gemm/1x1 Conv weights (svd, asvd, "
                       "svd-llm), ranks chosen for accuracy and measured speed")
    p.add_argument("input", help="input .onnx model (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    p.add_argument("--calib", metavar="PATH|generate", help=(
        "calibration data: an .npz file, a folder of .npz files, of input_N.pb tensors or test_data_set_N folders; "
        "'generate' for synthetic inputs (needed by asvd, svd-llm and the refit)"))
    p.add_argument("--calib-count", type=int, default=8, help="samples generated by --calib generate (default 8)")
    p.add_argument("--calib-limit", type=int, help="use at most this many calibration samples")
    p.add_argument("--batch-size", type=int, default=1, help="samples per onnxruntime run (default 1)")
    p.add_argument("--eval", metavar="PATH", help="held-out inputs for the accuracy report and the --budget search")
    rank = p.add_mutually_exclusive_group(required=True)
    rank.add_argument("--params", type=float, metavar="P", help=(
        "global budget: parameters of the factorizable layers after / before (e.g. 0.7), allocated greedily by "
        "output error added per parameter saved"))
    rank.add_argument("--energy", type=float, metavar="E", help=(
        "per layer: keep this share of the spectrum's energy (svd-llm: 1 - relative output error)"))
    rank.add_argument("--rank", type=int, metavar="R", help="one rank for every layer (rounded up to --align)")
    rank.add_argument("--budget", metavar="METRIC=VALUE", help=(
        "the smallest parameter ratio whose METRIC (cosine, argmax, rank-fidelity) on the --eval (else "
        "calibration) data stays >= VALUE; exit 1, nothing written, when even the mildest misses"))
    p.add_argument("--method", choices=("svd", "asvd", "svd-llm"), default="svd-llm",
                   help="svd (weights only), asvd (activation-scaled), svd-llm (whitened; default)")
    p.add_argument("--refit", choices=("least-squares", "none"), default="least-squares",
                   help="refit B given A on the calibration activations (default least-squares)")
    p.add_argument("--align", type=int, default=8, help="ranks are multiples of this (default 8)")
    p.add_argument("--tokens", type=int, help="M of the speed benchmark (default: batch x sequence of --dim, else 128)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the speed benchmark (default 2)")
    p.add_argument("--no-speed-guard", action="store_true", help="factorize without measuring speed")
    p.add_argument("--speed-cache", metavar="PATH", help="the speed measurements' JSON cache "
                   "(default ~/.cache/graphopt/lowrank_speed.json)")
    p.add_argument("--exclude-nodes", nargs="+", metavar="GLOB", help="node-name glob patterns left whole")
    add_dim_options(p, inputs=False)
    p.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report (the --json "
                   "document as tables and figures: full and kept rank per layer, accuracy per output)")
    p.set_defaults(func=cmd_factorize)

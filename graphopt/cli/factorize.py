"""``graphopt factorize``: low-rank factorization of MatMul / Gemm / 1x1 Conv weights (svd, asvd, svd-llm), each
rank chosen for accuracy and measured speed, with an accuracy report against the original.

Conventions as ``graphopt quantize``: options and calibration data are checked before anything is written (exit
2 with a message), the output is written atomically after it passes onnx.checker and runs in onnxruntime, and
``--budget`` exits 1 with nothing written when even the mildest factorization misses it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from graphopt import ir
from graphopt.cli import lossy
from graphopt.cli.common import add_dim_options, want_progress
from graphopt.errors import InputError

__all__ = ["add_parsers", "parse_budget", "tokens_of"]

REPORT_BATCHES = 64
"""Evaluation (else calibration) batches the accuracy report compares on, at most."""


def parse_budget(text: str | None) -> dict[str, float] | None:
    """``"rank-fidelity=0.98"`` -> ``{"rank-fidelity": 0.98}``; any metric of
    :data:`graphopt.calibrate.metrics.METRICS` (see :func:`graphopt.cli.lossy.parse_budget`)."""
    return lossy.parse_budget(text, example="cosine=0.99")


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
    if args.flops is not None and not 0 < args.flops <= 1:
        raise InputError(f"--flops must be in (0, 1] (FLOPs of the factorizable layers after / before), got "
                         f"{args.flops}")
    if args.blas_threads < 0:
        raise InputError(f"--blas-threads must be >= 0, got {args.blas_threads}")
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
    lossy.check_report(args)
    budget = parse_budget(args.budget)
    _check_args(args)
    proto = ir.load_proto(args.input)  # LoadError (exit 2) for a missing or unreadable file
    calibration = lossy.read_calibration(args, proto)
    evaluation = lossy.evaluation_batches(args, proto, REPORT_BATCHES)
    held = lossy.test_batches(args, proto, REPORT_BATCHES)
    options = FactorizeOptions(method=args.method, refit=args.refit, params=args.params or 0.0,
                               flops=args.flops or 0.0, energy=args.energy or 0.0, rank=args.rank or 0,
                               align=args.align,
                               speed_guard=not args.no_speed_guard, tokens=tokens_of(args), threads=args.threads,
                               speed_cache=args.speed_cache or "", exclude_nodes=tuple(args.exclude_nodes or ()),
                               blas_threads=args.blas_threads)
    model = ir.load(args.input)
    if args.flops:  # each layer's tokens M come from its output's static shape (else --tokens / --dim)
        ir.infer_shapes(model)
    report = factorize(model, options, calibration, evaluation=evaluation, budget=budget,
                       progress=want_progress(args))
    lossy.check_budget_met(report.budget, "params", "factorization")
    batches = held or lossy.report_batches(args, proto, calibration, evaluation, REPORT_BATCHES)
    saved, accuracy, rank_fidelity = lossy.save_checked(model, args, batches)
    seconds = time.perf_counter() - start
    doc = {"input": args.input, "output": str(saved.path), "seconds": seconds, **report.to_dict(),
           "accuracy": lossy.accuracy_doc(accuracy, rank_fidelity, evaluation, batches, test=bool(args.test),
                                          searched=budget is not None)}
    lossy.show_result(args, doc, "factorize", lambda: _table(report, doc["accuracy"], seconds), f"wrote {saved.path}")
    return 0


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
    outer.add_row(lossy.accuracy_line(accuracy))
    outer.add_row(f"done in {seconds:.1f} s")
    return outer


def add_parsers(sub: Any) -> None:
    """Register ``factorize``."""
    p = sub.add_parser("factorize", help="low-rank factorization of MatMul/Gemm/1x1 Conv weights (svd, asvd, "
                       "svd-llm), ranks chosen for accuracy and measured speed")
    lossy.add_data_options(p, "needed by asvd, svd-llm and the refit")
    rank = p.add_mutually_exclusive_group(required=True)
    rank.add_argument("--params", type=float, metavar="P", help=(
        "global budget: parameters of the factorizable layers after / before (e.g. 0.7), allocated greedily by "
        "output error added per parameter saved"))
    rank.add_argument("--flops", type=float, metavar="F", help=(
        "global budget: FLOPs of the factorizable layers after / before, each layer's tokens from its output's "
        "static shape (else --tokens / --dim), allocated greedily by output error added per FLOP saved"))
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
    p.add_argument("--blas-threads", type=int, default=1, help="BLAS threads of the statistics, decompositions "
                   "and refits (default 1: fastest measured on a loaded machine; 0: the library's default)")
    p.add_argument("--no-speed-guard", action="store_true", help="factorize without measuring speed")
    p.add_argument("--speed-cache", metavar="PATH", help="the speed measurements' JSON cache "
                   "(default ~/.cache/graphopt/lowrank_speed.json)")
    p.add_argument("--exclude-nodes", nargs="+", metavar="GLOB", help="node-name glob patterns left whole")
    add_dim_options(p, inputs=False)
    lossy.add_output_options(p, "full and kept rank per layer, accuracy per output")
    p.set_defaults(func=cmd_factorize)

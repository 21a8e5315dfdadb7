"""``graphopt build-engine`` and ``graphopt check-trt``; the engine options
that ``graphopt optimize --engine`` shares."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich import filesize
from rich.table import Table

from graphopt.cli.common import stdout
from graphopt.errors import InputError

__all__ = ["add_parsers", "add_engine_options", "build_options", "report_build", "warn_unsupported"]


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The build options of ``build-engine`` and ``optimize --engine``."""
    g = p.add_argument_group("TensorRT engine")
    g.add_argument("--shapes", action="append", metavar="NAME=MIN:OPT:MAX", help=(
        "optimization profile of an input, e.g. input_ids=1x1:1x128:8x512, or NAME=1x128 for min=opt=max "
        "(repeatable or comma-separated); inputs sharing a dim name share its range; default per dim name: "
        "batch 1:1:8, sequence 1:128:512, image height/width 32:224:1024, other dims 1"))
    g.add_argument("--fp16", action="store_true", help="allow FP16 kernels (TensorRT; TensorRT for RTX is strongly "
                                                       "typed: precision follows the model's types)")
    g.add_argument("--bf16", action="store_true", help="allow BF16 kernels (TensorRT only, as --fp16)")
    g.add_argument("--workspace", type=int, metavar="MiB", help="limit of the builder's workspace memory pool")
    g.add_argument("--timing-cache", metavar="FILE", help="timing cache read before the build (if present) and "
                                                          "written after it")
    g.add_argument("--compute-capability", action="append", metavar="SM", help=(
        "TensorRT for RTX target, e.g. SM86 (repeatable or comma-separated; default: 8.0, 8.6, 8.9, 12.0)"))
    g.add_argument("--no-decompose-attention", dest="decompose_attention", action="store_false", help=(
        "fail the build when an Attention has no fused kernel instead of letting TensorRT decompose it"))
    g.add_argument("--flavour", choices=["tensorrt-rtx", "tensorrt"],
                   help="which TensorRT to use (default: the first installed, TensorRT for RTX first)")


def build_options(args: argparse.Namespace) -> Any:
    """The :class:`~graphopt.codegen.tensorrt.BuildOptions` of parsed args
    (``--shapes`` parsed and checked for syntax here; against the model in
    the build)."""
    from graphopt.codegen.tensorrt import BuildOptions, parse_shapes

    caps = [c.strip() for arg in args.compute_capability or [] for c in arg.split(",") if c.strip()]
    return BuildOptions(shapes=parse_shapes(args.shapes), fp16=args.fp16, bf16=args.bf16,
                        workspace_mib=args.workspace,
                        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                        compute_capabilities=caps, decompose_attention=args.decompose_attention,
                        flavour=args.flavour)


def report_build(build: Any) -> Table:
    """A table of what the sidecar records."""
    info = build.info
    table = Table(title=f"engine {build.engine}", show_edge=False, show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("TensorRT", f"{info['flavour']} {info['tensorrt_version']}")
    table.add_row("engine", f"{filesize.decimal(info['engine_bytes'])} ({info['engine_bytes']} bytes)")
    table.add_row("build", f"{info['build_seconds']:.2f} s")
    precision = info["precision"]
    table.add_row("precision", f"{precision['mode']}" + (f", flags {', '.join(precision['flags'])}"
                                                         if precision["flags"] else "")
                  + f"; model types {', '.join(precision['types']) or '-'}"
                  + (f"; Q/DQ {', '.join(precision['quantized'])}" if precision["quantized"] else ""))
    for name, r in info["profiles"][0].items():
        table.add_row(f"  {name}", f"min {r['min']}  opt {r['opt']}  max {r['max']}  ({r['origin']})")
    cache = info.get("timing_cache")
    if cache:
        table.add_row("timing cache", f"{cache['path']}: read {cache['loaded_bytes']} B, wrote "
                                      f"{cache.get('written_bytes', 0)} B" + ("" if cache["effective"] else
                                                                              " (no-op in TensorRT for RTX)"))
    table.add_row("sidecar", str(build.sidecar))
    return table


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Check, build, write the engine and its sidecar."""
    from graphopt.codegen.tensorrt import build_engine

    build = build_engine(args.input, args.output, build_options(args))
    if args.json:
        stdout.print_json(json.dumps({"engine": str(build.engine), "sidecar": str(build.sidecar), **build.info}))
    elif not args.quiet:
        stdout.print(report_build(build))
    return 0


def cmd_check_trt(args: argparse.Namespace) -> int:
    """Report every node TensorRT will reject; exit 1 when there is one."""
    from graphopt.codegen.tensorrt import check

    if not Path(args.input).is_file():
        raise InputError(f"model {args.input} does not exist")
    report = check(args.input, backend=None if args.table_only else "auto")
    if args.json:
        stdout.print_json(json.dumps({"input": args.input, **report.to_dict()}))
    elif report.ok:
        stdout.print(f"{args.input}: TensorRT will import every node (checked by {report.checker})")
    else:
        stdout.print(f"{args.input}: {len(report.issues)} problem(s) for TensorRT (checked by {report.checker})")
        for issue in report.issues:
            stdout.print(f"  {issue.describe()}", markup=False)
    return 0 if report.ok else 1


def warn_unsupported(path: str | Path) -> None:
    """Log a warning per node of ``path`` that TensorRT's operator table
    rejects (``optimize --target tensorrt`` on its output)."""
    import logging

    from graphopt.codegen.tensorrt import check_model

    for issue in check_model(path):
        logging.getLogger("graphopt.codegen.tensorrt").warning("TensorRT will reject %s", issue.describe())


def add_parsers(sub: Any) -> None:
    """Register ``build-engine`` and ``check-trt``."""
    p = sub.add_parser("build-engine", help="build a TensorRT engine (+ JSON sidecar) from an ONNX model")
    p.add_argument("input", help="input .onnx model (never modified)")
    p.add_argument("-o", "--output", required=True, help="engine path, e.g. model.engine (written atomically; "
                                                         "the sidecar goes to OUTPUT.json)")
    add_engine_options(p)
    p.add_argument("--json", action="store_true", help="print the sidecar's content on stdout")
    p.set_defaults(func=cmd_build_engine)
    c = sub.add_parser("check-trt", help="which nodes TensorRT's ONNX parser will reject, and why")
    c.add_argument("input", help="input .onnx model")
    c.add_argument("--table-only", action="store_true", help=(
        "use onnx-tensorrt's operator table even when TensorRT is installed (default: the installed parser)"))
    c.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    c.set_defaults(func=cmd_check_trt)

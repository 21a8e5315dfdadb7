"""``graphopt prune``: structured pruning of attention heads, FFN neurons and conv channels (magnitude, Wanda, FLAP,
output sensitivity; uniform, global, error- or output-driven allocation), least-squares reconstruction, with an accuracy
report against the original; or whole layers (``--kinds layers``, ``--layers N`` or ``--ratio``) lowest ShortGPT
Block Influence first.

Conventions as ``graphopt quantize``: options and calibration data are checked before anything is written (exit
2 with a message), the output is written atomically after it passes onnx.checker and runs in onnxruntime, and
``--budget`` exits 1 with nothing written when even the mildest pruning misses it. A model with nothing to prune
is written unchanged (exit 0) and the report says so.
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

__all__ = ["add_parsers", "parse_budget"]

REPORT_BATCHES = 512
"""Evaluation (else calibration) batches the accuracy report compares on, at most."""


def parse_budget(text: str | None) -> dict[str, float] | None:
    """``"rank-fidelity=0.98"`` -> ``{"rank-fidelity": 0.98}``; any metric of
    :data:`graphopt.calibrate.metrics.METRICS` (see :func:`graphopt.cli.lossy.parse_budget`)."""
    return lossy.parse_budget(text, example="rank-fidelity=0.98")


def _check_args(args: argparse.Namespace) -> None:
    if args.flops is not None and not 0 < args.flops < 1:
        raise InputError(f"--flops must be in (0, 1) (the share of the model's MatMul/Gemm/Conv FLOPs kept, e.g. "
                         f"0.6), got {args.flops}")
    if args.ratio is not None and not 0 < args.ratio < 1:
        raise InputError(f"--ratio must be in (0, 1) (the share of the prunable blocks' MatMul/Conv FLOPs kept, e.g. "
                         f"0.6), got {args.ratio}")
    if args.align < 1:
        raise InputError(f"--align must be a positive integer, got {args.align}")
    if args.ridge < 0:
        raise InputError(f"--ridge must be >= 0, got {args.ridge}")
    if args.layers is not None and args.layers < 1:
        raise InputError(f"--layers must be a positive integer (whole layers to remove), got {args.layers}")
    kinds = {k.strip() for k in (args.kinds or "").split(",")}
    if args.layers is not None or kinds & {"layer", "layers"}:
        if args.calib is None:
            raise InputError("whole-layer removal ranks layers by Block Influence on calibration data: --calib PATH "
                             "(an .npz file or a folder of them) or --calib generate")
        return
    needs = args.method != "magnitude" or args.reconstruct != "none" or args.budget or \
        args.allocation in ("error", "relative", "output")
    if needs and args.calib is None:
        raise InputError(f"--method {args.method} with --reconstruct {args.reconstruct} needs calibration data: "
                         "--calib PATH (an .npz file or a folder of them) or --calib generate; only --method "
                         "magnitude --reconstruct none runs without")


def _flops(model: Any, dims: dict[str, int] | None, shapes: dict[str, tuple[int, ...]] | None = None
           ) -> tuple[int, int]:
    """(parameters, MatMul/Gemm/Conv FLOPs) of a model or path at ``dims``/``shapes`` (shapes inference leaves
    unknown measured in onnxruntime)."""
    from graphopt.analysis.stats import model_stats

    m = ir.load(model) if isinstance(model, str) else model
    st = model_stats(m, with_flops=True, dims=dims, shapes=shapes, measure=True)
    return int(st.parameters), int(st.flops or 0)


def cmd_prune(args: argparse.Namespace) -> int:
    """Load, check options and data, prune, validate, write atomically, report."""
    from graphopt.passes.pruning.prune import PruneOptions, prune

    start = time.perf_counter()
    lossy.check_report(args)
    budget = parse_budget(args.budget)
    _check_args(args)
    kinds = tuple(k for k in (args.kinds or "").split(",") if k.strip())
    options = PruneOptions(ratio=args.ratio or 0.0, kinds=kinds, method=args.method, allocation=args.allocation,
                           align=args.align, reconstruction=args.reconstruct, ridge=args.ridge,
                           tokens=args.tokens, mask=args.mask or "", layers=args.layers or 0, flops=args.flops or 0.0,
                           dims=tuple(args.dim or ()), shapes=tuple(args.shape or ()))
    proto = ir.load_proto(args.input)  # LoadError (exit 2) for a missing or unreadable file
    calibration = lossy.read_calibration(args, proto)
    evaluation = lossy.evaluation_batches(args, proto, REPORT_BATCHES)
    held = lossy.test_batches(args, proto, 64)
    model = ir.load(args.input)
    dims = getattr(args.request, "bound", None) or getattr(args.request, "dims", None) or None
    shapes = getattr(args.request, "shapes", None) or None
    params0, flops0 = _flops(model, dims, shapes)
    report = prune(model, options, calibration, evaluation=evaluation, budget=budget, progress=want_progress(args))
    lossy.check_budget_met(report.budget, "ratio", "pruning")
    batches = held or lossy.report_batches(args, proto, calibration, evaluation, 64)
    saved, accuracy, rank_fidelity = lossy.save_checked(model, args, batches)
    params1, flops1 = _flops(model, dims, shapes)
    seconds = time.perf_counter() - start
    doc = {"input": args.input, "output": str(saved.path), "seconds": seconds, **report.to_dict(),
           "params_before": params0, "params_after": params1, "flops_before": flops0, "flops_after": flops1,
           "accuracy": lossy.accuracy_doc(accuracy, rank_fidelity, evaluation, batches, test=held is not None,
                                          searched=budget is not None)}
    if report.whole_layers:
        doc["layer_tables"] = [_layers_table(doc["whole_layers"])]
    lossy.show_result(args, doc, "prune", lambda: _table(report, doc),
                      f"wrote {saved.path}" + (" (unchanged)" if report.nothing else ""))
    return 0


def _layers_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole layers as a ``layer_tables`` entry of the HTML report (:mod:`graphopt.report.document`)."""
    return {"id": "pruning-whole-layers", "title": "Whole layers by Block Influence (lowest first)",
            "columns": [["layer", "name", ""], ["block influence", "influence", ""], ["FLOPs", "flops", ""],
                        ["removed", "removed", ""]],
            "rows": rows, "note": "ShortGPT's Block Influence, 1 - mean cos(block input, block output) over the "
                                  "calibration tokens, measured on the original model; no reconstruction applies "
                                  "to a removed layer"}


def _table(report: Any, doc: dict[str, Any]) -> Table:
    outer = Table.grid(padding=1)
    o = report.options
    if report.nothing:
        outer.add_row(f"nothing pruned: {report.nothing}; the model is written unchanged")
    if report.whole_layers:
        layers = Table(title="prune whole layers (ShortGPT Block Influence on the calibration data, lowest first)",
                       show_edge=False)
        for col in ("layer", "branches", "block influence", "FLOPs share", "removed"):
            layers.add_column(col, justify="left" if col in ("layer", "branches") else "right")
        total = report.block_flops_before or 1.0
        for lay in report.whole_layers:
            layers.add_row(lay.name, ", ".join(lay.branches), f"{lay.influence:.6f}", f"{lay.flops / total:.3f}",
                           "removed" if lay.removed else "kept")
        outer.add_row(layers)
        asked = f"asked {o['layers']} layer(s)" if o.get("layers") else f"asked {report.ratio:.3f}"
        outer.add_row(f"block FLOPs kept {report.achieved:.3f} ({asked}); {report.pruned} of "
                      f"{len(report.whole_layers)} layers removed; no reconstruction applies to a removed layer")
    if report.groups:
        groups = Table(title=f"prune ({o['method']}, {o['allocation']} allocation, reconstruction "
                       f"{o['reconstruction']})", show_edge=False)
        for col in ("group", "kind", "kept / total", "kept share"):
            groups.add_column(col, justify="left" if col in ("group", "kind") else "right")
        for g in report.groups:
            unit = {"heads": "heads", "ffn": "neurons", "channels": "channels"}.get(g.kind, "units")
            groups.add_row(g.name, g.kind, f"{g.kept} / {g.size} {unit}", f"{g.kept / g.size:.3f}")
        outer.add_row(groups)
    if report.refused:
        outer.add_row("not pruned:\n" + "\n".join(f"  {r['site']} ({r['kind']}): {r['reason']}"
                                                  for r in report.refused))
    if report.groups:
        outer.add_row(f"block FLOPs kept {report.achieved:.3f} (asked {report.ratio:.3f}); "
                      f"{report.pruned} of {len(report.groups)} groups pruned")
    outer.add_row(f"parameters {doc['params_before']:,} -> {doc['params_after']:,}; MatMul/Conv FLOPs "
                  f"{doc['flops_before']:,} -> {doc['flops_after']:,}")
    if report.flops:
        f = report.flops
        outer.add_row(f"--flops {f['target']:g}: block ratio {f['ratio']:.3f} keeps {f['kept']:.3f} of the MatMul/"
                      f"Gemm/Conv FLOPs ({f['trials']} allocations counted)")
    if report.budget:
        b = report.budget
        outer.add_row(f"budget {b['metric']} >= {b['threshold']}: ratio {b['ratio']:.2f}, score {b['score']:.6f} "
                      f"({len(b['trials'])} trials)")
    outer.add_row(lossy.accuracy_line(doc["accuracy"]))
    outer.add_row(f"done in {doc['seconds']:.1f} s")
    return outer


def add_parsers(sub: Any) -> None:
    """Register ``prune``."""
    p = sub.add_parser("prune", help="structured pruning of attention heads, FFN neurons and conv channels, "
                       "with least-squares reconstruction, or of whole layers by Block Influence")
    lossy.add_data_options(p, "scores from random inputs mean little")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, metavar="R", help=(
        "share of the prunable blocks' MatMul/Conv FLOPs kept, in (0, 1) (e.g. 0.6); with --kinds layers, the "
        "lowest Block Influence layers are removed until the layers' FLOPs kept are at most R"))
    how.add_argument("--flops", type=float, metavar="F", help=(
        "share of the whole model's MatMul/Gemm/Conv FLOPs kept, in (0, 1): the largest block ratio whose pruned "
        "model keeps at most F of the original's FLOPs, counted at the --dim/--shape input sizes (default: "
        "graphopt verify's, sequence 16; give the sizes you run at)"))
    how.add_argument("--layers", type=int, metavar="N", help=(
        "remove N whole layers (Transformer blocks, residual blocks), lowest ShortGPT Block Influence "
        "(1 - cos(block input, block output), measured on --calib) first; implies --kinds layers"))
    how.add_argument("--budget", metavar="METRIC=VALUE", help=(
        "the smallest ratio whose METRIC (cosine, argmax, rank-fidelity) on the --eval (else calibration) data "
        "stays >= VALUE; exit 1, nothing written, when even the mildest misses"))
    p.add_argument("--method", default="wanda",
                   choices=("magnitude", "wanda", "flap", "sensitivity", "ablation", "obs"),
                   help=("unit importance (default wanda); sensitivity: the block output's change with the unit "
                         "removed, ||X_u W_u||^2 from the consumer input's Gram; ablation: the model outputs' "
                         "change (1 - cos) with each head masked, one run per head on the first 16 calibration "
                         "batches (FFN neurons as sensitivity); obs: structured Optimal Brain Surgeon, units "
                         "removed greedily by the error left after least squares compensates with the rest"))
    p.add_argument("--kinds", metavar="K[,K]", help="group kinds to prune: heads, ffn, channels (default: all the "
                   "model has; GQA heads: a KV head with its query group), query-heads (GQA's query heads within "
                   "their groups, instead of heads), or layers alone (whole layers; not mixed with the others: "
                   "prune twice)")
    # the literal names of graphopt.passes.pruning.allocation.ALLOCATIONS (importing it here would load every pass
    # at each CLI start)
    p.add_argument("--allocation", choices=("uniform", "global", "error", "relative", "output"), default="uniform",
                   help=(
        "kept units per group: uniform, global (FLAP's standardized scores), error (least consumer output error "
        "per FLOP saved: Transformers, whose consumers all write into one residual stream), relative (that error "
        "relative to each consumer's output energy: CNNs, whose feature maps differ in scale) or output (the walk "
        "with each group's error scaled by its measured gain to the model output's change); default uniform"))
    p.add_argument("--reconstruct", choices=("least-squares", "bias", "none"), default="least-squares",
                   help="refit the consumers (default least-squares)")
    p.add_argument("--ridge", type=float, default=1e-4, help="relative ridge of the least squares (default 1e-4)")
    p.add_argument("--align", type=int, default=8, help="kept neurons/channels are multiples of this (default 8)")
    p.add_argument("--tokens", type=int, default=128, help="sequence length assumed for attention FLOPs (default 128)")
    p.add_argument("--mask", metavar="INPUT", help="graph input whose zeros drop padded rows from the statistics "
                   "(e.g. attention_mask, for padded calibration data)")
    add_dim_options(p, inputs=False)
    lossy.add_output_options(p, "kept/total heads, neurons and channels per group, accuracy per "
                             "output")
    p.set_defaults(func=cmd_prune)

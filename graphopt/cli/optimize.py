"""``graphopt optimize`` and ``graphopt bisect``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich import filesize
from rich.table import Table
from rich.text import Text

from graphopt import ir
from graphopt.analysis import model_stats
from graphopt.cli.common import Progress, add_dim_options, make_runner, stdout, want_progress
from graphopt.cli.engine import add_engine_options, build_options, report_build, warn_unsupported
from graphopt.errors import InputError, VerificationError
from graphopt.passmanager import (
    PROVIDERS, TARGETS, Bisect, DumpIR, ModelRunner, PassContext, PassManager, Pipeline, Reproducer, VerifyEach,
    get_pass,
)

__all__ = ["add_parsers"]


def _pipeline(args: argparse.Namespace) -> Pipeline:
    if args.pipeline_file and args.pipeline:
        raise InputError("give either -p/--pipeline or --pipeline-file, not both")
    if args.pipeline_file:
        return Pipeline.from_yaml(Path(args.pipeline_file))
    return Pipeline.parse(args.pipeline or "O1")


def _runner(args: argparse.Namespace) -> ModelRunner:
    """The runner of ``--dim``/``--shape``/``--value``/``--inputs``, checked
    against the input model before any pass runs."""
    return make_runner(args, args.input)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.rtol is not None:
        config["verify.rtol"] = args.rtol
    if args.opset is not None:
        config["opset.upgrade"] = args.opset
    if args.provider is not None:
        config["ort.provider"] = args.provider
    if getattr(args, "keep_initializer_inputs", False):
        config["ir.keep_initializer_inputs"] = True
    return config


def verify_tolerance(args: argparse.Namespace, ctx: PassContext, records: list[Any]) -> tuple[float, float]:
    """``(rtol, atol_scale)`` of the final comparison: the largest
    ``tolerance`` declared by a pass that changed the model (1e-4 for
    fusions, 0 for exact passes) is the scale-relative absolute floor (see
    :mod:`graphopt.verify.compare`) and raises the context's ``verify.rtol``;
    ``--rtol`` given explicitly wins for rtol."""
    declared = max([get_pass(r.name).tolerance or 0.0 for r in records if r.modified], default=0.0)
    rtol = args.rtol if args.rtol is not None else max(ctx.get("verify.rtol"), declared)
    return rtol, declared


def model_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model: its file plus every external-data file
    its tensors name (read without loading the data)."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in onnx.external_data_helper._get_all_tensors(proto)
                 if t.data_location == onnx.TensorProto.EXTERNAL for e in t.external_data if e.key == "location"}
    for location in locations:
        data = path.parent / location
        if data.is_file():
            total += data.stat().st_size
    return total


def size_change(before: int, after: int) -> str:
    """``"22.9 MB -> 90.3 MB (+294.3%)"``-style text for the size row."""
    pct = f" ({(after - before) / before:+.1%})" if before else ""
    return f"{filesize.decimal(after)}{pct}"


def verify_text(verify: Any) -> str:
    """The optimize report's verification line: the test that was checked
    (elementwise ``|a-b| <= atol + rtol*|a|``, :mod:`graphopt.verify.compare`)
    with the worst output's tolerances and the share of them it used (passes
    at <= 1), the largest error relative to an output's scale, and the
    lowest cosine. Not ``max_rel_err``: relative to near-zero elements
    (probabilities) it is large for outputs that pass."""
    worst = verify.worst_output
    if worst is None:
        return "verified: the model has no outputs to compare"
    cosines = [o.cosine for o in verify.outputs if o.cosine is not None]
    cosine = f", cosine >= {min(cosines):.6f}" if cosines else ""
    return (f"verified {'ok' if verify.ok else 'FAILED'} on {len(verify.outputs)} outputs: |a-b| <= atol + rtol*|a| "
            f"(worst {worst.name}: rtol {worst.rtol:g}, atol {worst.atol:.3g}, error/tolerance "
            f"{worst.tol_ratio:.3g}); scale-relative error max|a-b|/max|a| <= "
            f"{max(o.scale_rel_err for o in verify.outputs):.3g}{cosine}")


def _report_table(before: Any, after: Any, result: Any, verify: Any, seconds: float,
                  sizes: tuple[int, int] | None = None) -> Table:
    table = Table(title="graphopt optimize", show_edge=False)
    table.add_column("", overflow="fold")
    table.add_column("before", justify="right", overflow="fold")
    table.add_column("after", justify="right", overflow="fold")
    table.add_row("nodes", str(before.nodes), str(after.nodes))
    table.add_row("initializers", str(before.initializers), str(after.initializers))
    table.add_row("weights", filesize.decimal(before.bytes), filesize.decimal(after.bytes))
    if sizes is not None:
        table.add_row("file size", filesize.decimal(sizes[0]), size_change(*sizes))
    for op in sorted(set(before.ops) | set(after.ops)):
        b, a = before.ops.get(op, 0), after.ops.get(op, 0)
        if a != b:
            table.add_row(f"  {op}", str(b), str(a))
    passes = Table(title="passes", show_edge=False)
    passes.add_column("#", justify="right")
    passes.add_column("pass", overflow="fold")
    passes.add_column("ms", justify="right")
    passes.add_column("nodes", justify="right")
    passes.add_column("stats", overflow="fold")
    for r in result.report.records:
        if not r.modified and not r.rolled_back:
            continue
        stats = ", ".join(f"{k}={v}" for k, v in r.stats.items() if v)
        flag = " (rolled back)" if r.rolled_back else " (auto)" if r.auto else ""
        passes.add_row(str(r.index), Text(r.spec + flag), f"{r.seconds * 1e3:.1f}",
                       f"{r.nodes_before}->{r.nodes_after}", Text(stats))
    outer = Table.grid(padding=1)
    outer.add_row(table)
    if verify is not None:
        outer.add_row(Text(verify_text(verify)))
    outer.add_row(passes)
    outer.add_row(f"{len(result.report.records)} passes ran in {seconds:.2f} s "
                  f"({sum(1 for r in result.report.records if r.modified)} changed the model)")
    return outer


def cmd_optimize(args: argparse.Namespace) -> int:
    """Load, run the pipeline, save atomically (checked), verify, report."""
    start = time.perf_counter()
    if args.report:
        from graphopt.report import check_report_path

        check_report_path(args.report)  # before any work: a bad --report path is exit 2 now
    pipeline = _pipeline(args)
    engine_options = _engine_options(args)  # before the pipeline: a missing TensorRT fails fast
    model = ir.load(args.input)  # the loader's checks first: they say best what is wrong with a file
    runner = _runner(args)  # --dim/--shape/--value/--inputs checked against the model before any pass runs
    before = model_stats(model)
    feed = None
    if args.verify or args.verify_each:
        feed = runner.prepare(args.input)  # inputs the original runs on (and its outputs), or exit 2 now
    instruments: list[Any] = [Reproducer(args.reproducer_dir)]
    verify_each = None
    if args.verify_each:
        verify_each = VerifyEach(runner)
        instruments.append(verify_each)
    if args.dump_dir:
        instruments.append(DumpIR(args.dump_dir))
    if want_progress(args):
        instruments.append(Progress())
    ctx = PassContext(target=args.target, config=_config(args), instruments=instruments)
    result = PassManager(pipeline, ctx).run(model)
    after = model_stats(result.model)
    report_box: dict[str, Any] = {}

    def verify_output(path: Path) -> None:
        if not args.verify:
            return
        from graphopt.verify import compare

        rtol, atol_scale = verify_tolerance(args, ctx, result.report.records)
        report = compare(args.input, str(path), inputs=runner.inputs, dims=runner.dims,
                         rtol=rtol, atol=ctx.get("verify.atol"), atol_scale=atol_scale,
                         reference=None if feed is None else feed.outputs)  # the original ran once, in prepare
        report_box["verify"] = report
        if not report.ok:
            raise VerificationError(
                f"the optimized model's outputs differ from the input's: {report.summary()}; "
                "no output was written. Run `graphopt bisect` with the same pipeline to find the pass, "
                "or --no-verify to write it anyway"
            )

    saved = ir.save(result.model, args.output, check=True, validate=verify_output)
    build = None
    if engine_options is not None:
        from graphopt.codegen.tensorrt import build_engine

        build = build_engine(saved.path, args.engine, engine_options)
    elif args.target == "tensorrt":
        warn_unsupported(saved.path)
    seconds = time.perf_counter() - start
    verify = report_box.get("verify")
    if args.json or args.report:  # one document for --json and --report
        doc = {
            "input": args.input, "output": str(saved.path), "pipeline": pipeline.to_spec(),
            "target": args.target, "seconds": seconds, "before": before.to_dict(), "after": after.to_dict(),
            "file_bytes": {"before": model_bytes(args.input), "after": model_bytes(saved.path)},
            "passes": result.report.to_dict()["passes"],
            "rolled_back": [r.name for r in result.report.rolled_back],
            "verify": verify.to_dict() if verify is not None else None,
            "engine": None if build is None else {"path": str(build.engine), "sidecar": str(build.sidecar),
                                                  **build.info},
        }
        if args.report:
            from graphopt.report import write_report

            write_report(args.report, doc, kind="optimize")
        if args.json:
            stdout.print_json(json.dumps(doc, default=str))
    if not args.json and not args.quiet:
        sizes = (model_bytes(args.input), model_bytes(saved.path))
        stdout.print(_report_table(before, after, result, verify, seconds, sizes))
        stdout.print(f"wrote {saved.path}" + (f" (+ {saved.data_path.name})" if saved.data_path else ""))
        if build is not None:
            stdout.print(report_build(build))
        if args.report:
            stdout.print(f"report written to {args.report}")
    return 0


def _engine_options(args: argparse.Namespace) -> Any:
    """The engine's build options when ``--engine`` is given (TensorRT
    imported and ``--shapes`` parsed now), else None; engine options without
    ``--engine`` are refused."""
    if args.engine is None:
        given = [f for f, v in (("--shapes", args.shapes), ("--fp16", args.fp16), ("--bf16", args.bf16),
                                ("--workspace", args.workspace), ("--timing-cache", args.timing_cache),
                                ("--compute-capability", args.compute_capability), ("--flavour", args.flavour),
                                ("--no-decompose-attention", not args.decompose_attention)) if v]
        if given:
            shape_hint = " (to size the inputs verification runs on, use --shape INPUT=AxB)" if args.shapes else ""
            raise InputError(f"{', '.join(given)} configure a TensorRT engine; add --engine OUT.engine{shape_hint}")
        return None
    if args.target != "tensorrt":
        raise InputError(f"--engine needs --target tensorrt (the {args.target} target may emit operators TensorRT "
                         "cannot import)")
    if Path(args.engine).resolve() in (Path(args.input).resolve(), Path(args.output).resolve()):
        raise InputError(f"--engine {args.engine} is the input or the ONNX output; give the engine its own path")
    from graphopt.codegen.tensorrt import load_backend

    options = build_options(args)
    load_backend(options.flavour)
    return options


def cmd_bisect(args: argparse.Namespace) -> int:
    """Run the pipeline comparing after each pass; report the first divergence.
    Exit 1 when a pass diverges, 0 when none does."""
    pipeline = _pipeline(args)
    model = ir.load(args.input)
    bisect = Bisect(_runner(args))
    ctx = PassContext(target=args.target, config=_config(args), instruments=[bisect])
    result = PassManager(pipeline, ctx).run(model)
    culprit = bisect.culprit
    if args.json:
        stdout.print_json(json.dumps({
            "pipeline": pipeline.to_spec(), "checked": bisect.checked,
            "culprit": None if culprit is None else {"index": culprit.index, "pass": culprit.name,
                                                     "spec": culprit.spec, "reason": bisect.reason},
        }))
    elif culprit is None:
        stdout.print(f"no divergence: {len(result.report.records)} passes ran, {bisect.checked} changed the "
                     "model, and every result matched the input's outputs")
    else:
        stdout.print(f"first diverging pass: #{culprit.index} [bold]{culprit.spec}[/]\n  {bisect.reason}")
    return 0 if culprit is None else 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input .onnx model (never modified)")
    p.add_argument("-p", "--pipeline", help="pipeline text spec (default: O1), e.g. 'O1' or 'dce,eliminate-identity'")
    p.add_argument("--pipeline-file", help="YAML pipeline file")
    p.add_argument("--target", choices=sorted(TARGETS), default="ort", help="what the output may use (default: ort)")
    p.add_argument("--rtol", type=float, help=(
        "relative tolerance of verification (default 1e-5, or the largest tolerance a pass that changed the model "
        "declares: 1e-4 for fusions, which also floors the absolute tolerance at 1e-4 x the output's scale)"))
    p.add_argument("--opset", type=int, metavar="N", help=(
        "allow upgrading the model's default-domain opset to N (e.g. 23) so fusions for --target onnx/tensorrt "
        "can use Gelu (20), RMSNormalization, Attention, RotaryEmbedding (23); default: keep the model's opset"))
    add_dim_options(p)
    p.add_argument("--provider", choices=PROVIDERS, help=(
        "the onnxruntime execution provider the model is for (default cpu): cuda fuses SkipLayerNormalization, "
        "whose CPU kernel is slower than Add + LayerNormalization"))
    p.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")


def add_parsers(sub: Any) -> None:
    """Register ``optimize`` and ``bisect``."""
    p = sub.add_parser("optimize", help="run a pass pipeline and write the optimized model")
    _common(p)
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    p.add_argument("--verify", dest="verify", action="store_true", default=True,
                   help="compare outputs with onnxruntime before writing (default)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the final comparison")
    p.add_argument("--verify-each", action="store_true",
                   help="check after every pass; roll back a pass that breaks numerics")
    p.add_argument("--dump-dir", help="write the model after each pass as NNN_<pass>.onnx/.txt here")
    p.add_argument("--keep-initializer-inputs", action="store_true", help="IR-3 models: keep the initializers listed among the graph inputs there (overridable, but neither graphopt nor onnxruntime folds them); by default they are dropped and the model is written as IR 4")
    p.add_argument("--reproducer-dir", help="where to write a reproducer if a pass crashes (default: temp dir)")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report (the --json "
                   "document as tables and figures)")
    p.add_argument("--engine", metavar="OUT.engine", help=(
        "also build a TensorRT engine from the written model (needs --target tensorrt and TensorRT for RTX or "
        "TensorRT; sidecar OUT.engine.json)"))
    add_engine_options(p)
    p.set_defaults(func=cmd_optimize)
    b = sub.add_parser("bisect", help="find the first pass whose output diverges from the input model")
    _common(b)
    b.set_defaults(func=cmd_bisect)

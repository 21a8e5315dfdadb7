"""``graphopt quantize``: INT8 (calibrated QDQ), INT4 weight-only, or FP16/BF16,
with an accuracy report against the float model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import onnx
from rich import filesize
from rich.table import Table

from graphopt import ir
from graphopt.analysis import model_stats
from graphopt.cli import lossy
from graphopt.cli.common import Progress, add_dim_options, stdout, want_progress
from graphopt.cli.lossy import evaluation_batches, first_batches, generated_data, test_batches
from graphopt.errors import InputError, PassError, SaveError, VerificationError
from graphopt.passmanager import PROVIDERS, TARGETS, PassContext, PassManager, Pipeline, Reproducer
from graphopt.passmanager.pipeline import INT8_FUSION

__all__ = ["add_parsers", "build_spec", "parse_budget"]

REPORT_BATCHES = 8
"""Calibration batches the accuracy report compares on, at most."""


def parse_budget(text: str | None) -> dict[str, float] | None:
    """``"cosine=0.99"`` -> ``{"cosine": 0.99}``; ``argmax=VALUE`` is the top-1
    agreement of class outputs (last axis).

    Raises:
        InputError: another metric, or a value outside (0, 1].
    """
    return lossy.parse_budget(text, example="cosine=0.99", metrics=("cosine", "argmax"),
                              hint="; for a task metric use the Python API "
                                   "(accuracy_budget={'metric': fn, 'threshold': value})")


def _budget_score(report: Any, metric: str) -> float:
    if metric == "cosine":
        return report.cosine
    agree = [o.argmax_agreement for o in report.outputs if o.argmax_agreement is not None]
    return min(agree, default=1.0)


def _opts(items: dict[str, Any]) -> str:
    given = {k: v for k, v in items.items() if v not in (None, (), "")}
    if not given:
        return ""
    text = ",".join(f"{k}={'|'.join(v) if isinstance(v, (list, tuple)) else str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in given.items())
    return "{" + text + "}"


def build_spec(args: argparse.Namespace) -> str:
    """The pipeline text spec of the requested mode (or ``-p`` as given)."""
    if args.pipeline:
        return args.pipeline
    if args.weights_only:
        opts = {"block-size": args.block_size, "method": "gptq" if args.gptq else None,
                "symmetric": True if args.symmetric else None, "exclude": tuple(args.exclude_nodes or ())}
        return "O2,quantize-weights-int4" + _opts(opts)
    if args.float:
        opts = {"dtype": "bfloat16" if args.float == "bf16" else "float16",
                "block-ops": tuple(args.exclude_ops or ()), "block-nodes": tuple(args.exclude_nodes or ())}
        return "O2,convert-float16" + _opts(opts)
    opts = {"method": args.method, "activation-type": args.activation_type,
            "per-channel": False if args.per_tensor else None,
            "exclude-ops": tuple(args.exclude_ops or ()), "exclude-nodes": tuple(args.exclude_nodes or ())}
    if args.method == "percentile" and args.percentile is not None:
        opts["percentile"] = args.percentile
    return f"{INT8_FUSION},qdq" + _opts(opts)


def _needs_calibration(spec: str) -> bool:
    """True when the spec runs ``qdq`` (itself or in the ``int8`` pipeline) or GPTQ."""
    names = {part.split("{")[0].strip("() ") for part in spec.replace("(", ",").split(",")}
    return bool(names & {"qdq", "int8"}) or "method=gptq" in spec


def cmd_quantize(args: argparse.Namespace) -> int:
    """Load, calibrate, run the quantization pipeline, save atomically after the
    output passes onnx.checker, loads and runs in onnxruntime, and the accuracy
    check; exit 1 when the result misses ``--budget``, exit 3 (with a reproducer
    folder) when the output fails onnx.checker or onnxruntime refuses it."""
    from graphopt.calibrate.report import accuracy_report

    start = time.perf_counter()
    lossy.check_report(args)  # before any work: a bad --report path is exit 2 now
    budget = parse_budget(args.budget)
    spec = build_spec(args)
    pipeline = Pipeline.parse(spec)
    if _needs_calibration(spec) and args.calib is None:
        raise InputError("INT8 (and GPTQ) quantization needs calibration data: --calib PATH (an .npz file, a folder of "
                         ".npz files or of input_N.pb tensors / test_data_set_N folders) or --calib generate "
                         "(synthetic inputs, as graphopt verify makes them: ranges fit real data less well)")
    proto = ir.load_proto(args.input)  # a LoadError (exit 2) for a missing, unreadable or non-ONNX file
    # --dim/--shape/--value and a first calibration sample checked before the pipeline runs
    calibration = lossy.read_calibration(args, proto)
    model = ir.load(args.input)
    before = model_stats(model)
    instruments: list[Any] = [Reproducer(args.reproducer_dir)]
    if want_progress(args):
        instruments.append(Progress())
    config = {"quantize.progress": want_progress(args)}
    # QDQ with per-channel axes needs opset 13: raise older models that far (upgrade-opset in the pipeline).
    config["opset.upgrade"] = args.opset if args.opset is not None else 13
    if args.provider is not None:
        config["ort.provider"] = args.provider
    evaluation = evaluation_batches(args, proto, REPORT_BATCHES) if budget else None
    held = test_batches(args, proto, REPORT_BATCHES)
    ctx = PassContext(target=args.target, config=config, calibration=calibration, accuracy_budget=budget,
                      evaluation=evaluation, instruments=instruments)
    result = PassManager(pipeline, ctx).run(model)
    box: dict[str, Any] = {}
    record = json.loads(result.model.metadata_props.get("graphopt.quantization", "{}"))

    def check(path: Path) -> None:
        batches = _report_batches(calibration, proto, args)
        report = accuracy_report(args.input, path, held or batches)
        report.sqnr_db = {k: float(v) for k, v in record.get("sqnr_db", {}).items()}
        box["report"] = report
        if not budget:
            return
        metric, threshold = next(iter(budget.items()))
        # The budget holds on the data it was searched on (--eval, else the calibration batches), now with the
        # integer kernels of the model as written; with --test the report's figures are the held-out ones.
        score = _budget_score(report if held is None else accuracy_report(args.input, path, batches), metric)
        box["budget"] = {"metric": metric, "threshold": threshold, "data": "evaluation" if args.eval else "calibration",
                         "score": score}
        if score < threshold:
            raise VerificationError(f"output {metric} {score:.6f} is below the budget {threshold} on "
                                    f"{report.batches} {'evaluation' if args.eval else 'calibration'} batches with "
                                    "onnxruntime's integer kernels; nothing was written. Exclude sensitive nodes "
                                    "(--exclude-nodes) or try --method entropy")

    def validated(path: Path) -> None:
        # The output must load (and run) in onnxruntime like any other output before it is moved into place; a
        # model that does not is graphopt's defect (exit 3), never the user's input (exit 2).
        first = _report_batches(calibration, proto, args)[:1]  # bad --eval data stays the user's error (exit 2)
        try:
            _load_and_run(path, first)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; LoadError wraps them
            raise _defect("onnxruntime refuses the quantized model", e, args, spec, path) from e
        check(path)

    try:
        saved = ir.save(result.model, args.output, check=True, validate=validated)
    except SaveError as e:
        if not isinstance(e.__cause__, (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)):
            raise
        raise _defect("the quantized model fails onnx.checker", e.__cause__, args, spec, None,
                      result.model) from e
    report = box["report"]
    kept = record.get("kept_float", [])
    seconds = time.perf_counter() - start
    passes = result.report.to_dict()["passes"]
    not_quantized = _not_quantized(passes)
    doc = {"input": args.input, "output": str(saved.path), "pipeline": spec, "target": args.target, "seconds": seconds,
           "kept_float": kept, "not_quantized": not_quantized, "budget": box.get("budget"), "passes": passes,
           "before": before.to_dict(), "after": model_stats(result.model).to_dict(), **report.to_dict(),
           "report_data": "held-out" if held is not None else "evaluation" if args.eval else "calibration"}
    if args.report:
        from graphopt.report import write_report

        write_report(args.report, doc, kind="quantize")
    if args.json:
        stdout.print_json(json.dumps(doc, default=str))
    elif not args.quiet:
        stdout.print(_table(report, kept, seconds, not_quantized))
        stdout.print(f"wrote {saved.path}" + (f" (+ {saved.data_path.name})" if saved.data_path else ""))
        if args.report:
            stdout.print(f"report written to {args.report}")
    return 0


def _load_and_run(path: Path, batches: list[dict]) -> None:
    """Load the written (temporary) output in onnxruntime with every graph optimization on, as a user's session
    would (fused integer kernels are built at load), and run it on ``batches`` (one, from the report's data).

    Raises:
        LoadError: onnxruntime refuses the model. Exceptions of onnxruntime's own when a kernel fails to run.
    """
    from graphopt.verify.runtime import make_session, resolve_model

    session = make_session(resolve_model(str(path)), optimization_level="all")
    feeds = {i.name for i in session.get_inputs()}
    for inputs in batches:
        session.run(None, {k: v for k, v in inputs.items() if k in feeds})


def _defect(what: str, error: BaseException, args: argparse.Namespace, spec: str, path: Path | None,
            model: ir.Model | None = None) -> PassError:
    """The exit-3 error for an output graphopt made that does not load: a reproducer folder (the rejected model
    as ``rejected.onnx``, ``pipeline.txt``, ``README.txt`` with the command) under ``--reproducer-dir`` (default:
    the temp folder), and a message that names it. Nothing is written at ``-o``."""
    import shlex
    import shutil
    import tempfile

    base = Path(args.reproducer_dir) if args.reproducer_dir else Path(tempfile.gettempdir())
    folder: Path | None = None
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="graphopt-quantize-", dir=base))
        if path is not None and path.exists():
            shutil.copyfile(path, folder / "rejected.onnx")
            data = [p for p in path.parent.iterdir() if p != path]
            for extra in data:  # its external-data file, when there is one
                shutil.copyfile(extra, folder / extra.name)
        elif model is not None:
            ir.save(model, folder / "rejected.onnx")
        (folder / "pipeline.txt").write_text(spec + "\n")
        command = (f"graphopt quantize {shlex.quote(str(Path(args.input).resolve()))} -o {shlex.quote(str(folder / 'out.onnx'))} "
                   f"-p {shlex.quote(spec)} --target {args.target} --calib {shlex.quote(str(args.calib))}")
        (folder / "README.txt").write_text(f"{what}: {type(error).__name__}: {error}\n\nreproduce with:\n  {command}\n")
    except Exception:  # noqa: BLE001 - the reproducer must never hide the defect
        folder = None
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return PassError(f"{what} ({first}); this is a graphopt defect, nothing was written; please report it"
                     + (f" with the reproducer in {folder}" if folder else ""),
                     pass_name="quantize", reproducer=str(folder) if folder else None, exit_code=3)


def _report_batches(calibration: Any, proto: onnx.ModelProto, args: argparse.Namespace) -> list[dict]:
    """The batches the accuracy report compares on: --eval, else the calibration data, else two generated."""
    if args.eval:
        return evaluation_batches(args, proto, REPORT_BATCHES)
    data = calibration if calibration is not None else generated_data(args, proto, 2, 1000)
    return first_batches(data, REPORT_BATCHES)


_ATTENTION_SKIP = "Attention with past, attention bias, packed sizes or rotary"


def _not_quantized(passes: list[dict[str, Any]]) -> dict[str, int]:
    """``{reason: count}`` of the candidate nodes the ``qdq`` pass left float (its ``skipped ...`` statistics)."""
    out: dict[str, int] = {}
    for p in passes:
        if p.get("name") != "qdq":
            continue
        for key, count in (p.get("stats") or {}).items():
            if key.startswith("skipped ") and count:
                out[key[len("skipped "):]] = out.get(key[len("skipped "):], 0) + int(count)
    return out


def _table(report: Any, kept: list[str], seconds: float, not_quantized: dict[str, int] | None = None) -> Table:
    outer = Table.grid(padding=1)
    outputs = Table(title=f"accuracy vs the float model ({report.batches} batches)", show_edge=False)
    for col in ("output", "max abs error", "cosine", "argmax agreement"):
        outputs.add_column(col, justify="left" if col == "output" else "right")
    for o in report.outputs:
        agree = "" if o.argmax_agreement is None else f"{o.argmax_agreement:.4f}"
        outputs.add_row(o.name, f"{o.max_abs:.4g}", f"{o.cosine:.6f}", agree)
    outer.add_row(outputs)
    ratio = report.bytes_after / report.bytes_before if report.bytes_before else 0.0
    outer.add_row(f"size {filesize.decimal(report.bytes_before)} -> {filesize.decimal(report.bytes_after)} "
                  f"({ratio:.3f}x); {len(report.sqnr_db)} quantized layers"
                  + (f", kept float: {', '.join(kept)}" if kept else ""))
    if not_quantized:
        outer.add_row("not quantized (left float): " + ", ".join(f"{n} {why}" for why, n in not_quantized.items()))
        if _ATTENTION_SKIP in not_quantized:
            outer.add_row("a fused Attention that reads its mask as an attention bias has no quantized kernel "
                          "(QAttention): quantize the model before `optimize -p O2`; quantize's int8 pipeline runs "
                          "the fusions that keep attention's MatMuls quantizable")
    if report.sqnr_db:
        worst = sorted(report.sqnr_db.items(), key=lambda kv: kv[1])[:5]
        outer.add_row("lowest SQNR: " + ", ".join(f"{name} {db:.1f} dB" for name, db in worst))
    outer.add_row(f"done in {seconds:.1f} s")
    return outer


def add_parsers(sub: Any) -> None:
    """Register ``quantize``."""
    p = sub.add_parser("quantize", help="quantize a model (INT8 QDQ, INT4 weight-only, FP16/BF16) and report accuracy")
    p.add_argument("input", help="input float .onnx model (never modified)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path (written atomically)")
    p.add_argument("--target", choices=sorted(TARGETS), default="ort", help="QDQ placement and ops (default: ort)")
    p.add_argument("--provider", choices=PROVIDERS, help=(
        "the onnxruntime execution provider the model is for (default cpu; --float: cpu keeps compute in float32)"))
    p.add_argument("--calib", metavar="PATH|generate", help=(
        "calibration data: an .npz file, a folder of .npz files, of input_N.pb tensors or of test_data_set_N "
        "folders; 'generate' for synthetic inputs"))
    p.add_argument("--calib-count", type=int, default=8, help="samples generated by --calib generate (default 8)")
    p.add_argument("--calib-limit", type=int, help="use at most this many calibration samples")
    p.add_argument("--batch-size", type=int, default=1, help="calibration samples per onnxruntime run (default 1)")
    p.add_argument("--eval", metavar="PATH", help=(
        "held-out inputs for the accuracy report and for the --budget search (default: calibration data)"))
    p.add_argument("--test", metavar="PATH", help=(
        "held-out inputs no search sees: the accuracy report's figures (default: the --eval inputs, else the "
        "calibration data); --budget is still checked on --eval"))
    p.add_argument("--method", choices=("minmax", "percentile", "entropy", "mse"), default="minmax",
                   help="activation range calibration (default minmax)")
    p.add_argument("--percentile", type=float, help="percentile kept by --method percentile (default 99.999)")
    p.add_argument("--activation-type", choices=("uint8", "int8"), help="INT8 activations (default uint8; "
                   "tensorrt: symmetric int8)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights instead of per-channel")
    p.add_argument("--budget", metavar="METRIC=VALUE", help=(
        "keep the most sensitive layers float until the outputs on the --eval (else calibration) data reach VALUE: "
        "cosine=0.99 "
        "(worst output cosine) or argmax=0.99 (top-1 agreement along the last axis); exit 1 (nothing written) "
        "when the final model misses it on the evaluation inputs"))
    p.add_argument("--exclude-ops", nargs="+", metavar="OP", help="op types kept float")
    p.add_argument("--exclude-nodes", nargs="+", metavar="GLOB", help="node-name glob patterns kept float")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--weights-only", choices=("int4",), help="block-wise INT4 weight-only MatMuls instead of INT8")
    mode.add_argument("--float", choices=("fp16", "bf16"), help="convert to float16 / bfloat16 instead of INT8")
    p.add_argument("--block-size", type=int, choices=(32, 64, 128), help="INT4 block size")
    p.add_argument("--symmetric", action="store_true", help="INT4 without zero points (default: a uint4 zero "
                   "point per block)")
    p.add_argument("--gptq", action="store_true", help="INT4 with GPTQ error compensation (needs --calib)")
    p.add_argument("-p", "--pipeline", help="a full pipeline spec instead of the mode's (e.g. 'int8')")
    p.add_argument("--opset", type=int, metavar="N", help="upgrade the default-domain opset to N (default 13, the "
                   "least per-channel QDQ needs; models at a higher opset keep theirs)")
    p.add_argument("--reproducer-dir", help="where to write a reproducer if a pass crashes")
    add_dim_options(p, inputs=False)  # --dim, --shape, --value of generated (--calib generate) inputs
    p.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")
    p.add_argument("--report", metavar="FILE.html", help="also write a self-contained HTML report (the --json "
                   "document as tables and figures: per-layer SQNR, layers kept float, op histogram)")
    p.set_defaults(func=cmd_quantize)

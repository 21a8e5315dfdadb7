"""``graphopt compress``: the fastest model whose metric holds on held-out inputs (``--budget``), or the most
accurate one at least X times faster (``--speedup``), searched over structured pruning, low-rank factorization
and INT8 together (pipeline ``O3``), latency measured on this machine against the original.

Data: ``--calib`` (statistics, reconstruction, INT8 ranges), ``--eval`` (what the search scores candidates on)
and ``--test`` (held-out: the reported figure; without it the second half of ``--eval`` is held out and the
search sees the first half). Conventions as ``graphopt prune``: everything is checked before work starts (exit
2), nothing is written when no point meets the goal (exit 1, the best points reached printed), the output is
written atomically after onnx.checker and an onnxruntime run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import tempfile
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from graphopt import ir
from graphopt.cli import lossy
from graphopt.cli.common import add_dim_options, console, want_progress
from graphopt.errors import InputError, VerificationError

__all__ = ["add_parsers", "load_metric", "parse_goal", "read_labels", "with_labels"]

log = logging.getLogger(__name__)

MAX_BATCHES = 512
"""Evaluation batches read at most (search and held-out together)."""


def load_metric(spec: str) -> Callable[..., float]:
    """``module:function`` or ``path/to/file.py:function`` -> the function, a metric
    ``metric(outputs, reference) -> float`` (higher is better; each argument a list of per-batch
    ``{output name: array}``, the compressed model's and the original's).

    Raises:
        InputError: no ``:``, a module or file that cannot be imported, or no callable of that name.
    """
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name:
        raise InputError(f"--metric expects MODULE:FUNCTION or FILE.py:FUNCTION (e.g. --metric "
                         f"tools/ocr_metric.py:char_accuracy), got {spec!r}")
    try:
        if module.endswith(".py"):
            path = Path(module)
            if not path.is_file():
                raise InputError(f"--metric file '{module}' does not exist")
            loaded = importlib.util.spec_from_file_location(f"graphopt_user_metric_{path.stem}", path)
            mod = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any import failure of the user's module is the user's input error
        raise InputError(f"--metric: cannot import '{module}': {type(e).__name__}: {e}") from e
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise InputError(f"--metric: '{module}' has no function '{name}'")
    return fn


def parse_goal(args: argparse.Namespace) -> tuple[str, Callable[..., float], float | None, float | None]:
    """``(metric name, metric, threshold or None, speedup or None)`` of ``--budget``/``--speedup``/``--metric``.

    ``--budget`` is ``METRIC=VALUE`` with a built-in metric (cosine, argmax, rank-fidelity); with ``--metric``
    it is ``VALUE`` or ``NAME=VALUE`` (NAME the function's name). ``--speedup X`` maximizes the metric (default
    cosine) at least X times faster.

    Raises:
        InputError: a malformed budget, an unknown metric, both or neither goal, a speedup <= 1.
    """
    from graphopt.calibrate.metrics import METRICS

    user = load_metric(args.metric) if args.metric else None
    if user is not None:
        name = getattr(user, "__name__", "metric")
        threshold = None
        if args.budget is not None:
            key, sep, value = args.budget.rpartition("=")
            try:
                threshold = float(value)
            except ValueError:
                threshold = None
            if threshold is None or (sep and key.strip() not in (name, "metric")):
                raise InputError(f"with --metric, --budget expects VALUE or {name}=VALUE (e.g. --budget "
                                 f"{name}=0.99), got {args.budget!r}")
        return name, user, threshold, args.speedup
    if args.budget is not None:
        budget = lossy.parse_budget(args.budget, example="rank-fidelity=0.97")
        name, threshold = next(iter(budget.items()))
        return name, METRICS[name], threshold, args.speedup
    return "cosine", METRICS["cosine"], None, args.speedup


def read_labels(folder: str | None, proto: Any) -> list | None:
    """The ground-truth labels of an evaluation folder: ``labels.json`` beside its samples, a JSON list with one
    entry per sample in file order (None when the folder has none).

    Raises:
        InputError: ``labels.json`` is not a JSON list, or its length is not the number of samples.
    """
    import json

    from graphopt.calibrate.data import CalibrationData

    if not folder or not (Path(folder) / "labels.json").is_file():
        return None
    path = Path(folder) / "labels.json"
    try:
        labels = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"'{path}' is not JSON: {e}") from e
    count = len(CalibrationData.from_path(folder, proto))
    if not isinstance(labels, list) or len(labels) != count:
        raise InputError(f"'{path}' must be a JSON list with one label per sample ({count} samples in "
                         f"'{folder}'), got {len(labels) if isinstance(labels, list) else type(labels).__name__}")
    return labels


def with_labels(metric: Callable[..., float], labels: list | None) -> Callable[..., float]:
    """``metric`` as a two-argument budget metric: a user metric taking a third argument ``labels`` gets the
    labels of the samples it scores (the first ones of ``labels``, as many as the outputs' batch rows); with
    ``labels`` None a third argument with a default is left out.

    Raises:
        InputError: the metric needs labels (a third argument without default) and the data has none.
    """
    import inspect

    try:
        params = list(inspect.signature(metric).parameters.values())
    except (TypeError, ValueError):
        params = []
    if len(params) < 3:
        return metric
    if labels is None:
        if params[2].default is not inspect.Parameter.empty:
            return metric  # labels are optional: scored against the original's outputs
        raise InputError(f"--metric {getattr(metric, '__name__', 'metric')} takes labels: put a labels.json (a JSON "
                         "list, one label per sample in file order) beside the --eval (and --test) samples")

    def labelled(outputs: Any, reference: Any) -> float:
        rows = sum(int(next(iter(r.values())).shape[0]) for r in reference)
        return metric(outputs, reference, labels[:rows])

    labelled.__name__ = getattr(metric, "__name__", "metric")
    return labelled


def _latency_inputs(args: argparse.Namespace, proto: Any, first: dict) -> dict:
    """The inputs latency is timed on: generated at ``--dim``/``--shape``/``--value`` when given, else the first
    evaluation batch."""
    request = args.request
    if not (request.dims or request.shapes or request.values):
        return dict(first)
    from graphopt.verify.feed import runnable_inputs

    return runnable_inputs(args.input, request, seed=0).sample(0)


def cmd_compress(args: argparse.Namespace) -> int:
    """Check options and data, search, check the chosen point on held-out data, write it atomically, report."""
    from graphopt.compress import CompressOptions, compress
    from graphopt.compress.run import frontier_doc

    start = time.perf_counter()
    lossy.check_report(args)
    name, metric, threshold, speedup = parse_goal(args)
    techniques = tuple(t.strip() for t in args.techniques.split(","))
    options = CompressOptions(techniques=techniques, target=args.target, threshold=threshold, speedup=speedup,
                              max_drop=args.max_drop,
                              time_limit=args.time_limit * 60 if args.time_limit is not None else None,
                              latency_seconds=args.latency_seconds, threads=args.threads, mask=args.mask or "",
                              int8_method=args.int8_method)
    from graphopt.compress.run import check_options

    check_options(options)  # exit 2 before any data is read
    if args.calib is None or not args.eval:
        raise InputError("compress needs --calib PATH (calibration data, or 'generate') and --eval PATH (held-out "
                         "inputs the search scores candidates on)")
    proto = ir.load_proto(args.input)
    calibration = lossy.read_calibration(args, proto)
    if not args.mask:
        from graphopt.calibrate.metrics import MASK_NAMES

        options.mask = next((i.name for i in proto.graph.input if i.name in MASK_NAMES), "")
    evaluation = lossy.evaluation_batches(args, proto, MAX_BATCHES)
    if args.test:
        held = lossy.test_batches(args, proto, MAX_BATCHES)
        searched = evaluation
    else:
        if len(evaluation) < 2:
            raise InputError("--eval holds fewer than 2 batches: give more evaluation inputs, or a held-out set with "
                             "--test PATH")
        half = len(evaluation) // 2
        searched, held = evaluation[:half], evaluation[half:]
    labels = read_labels(args.eval, proto)
    if args.test:
        search_metric, held_metric = with_labels(metric, labels), with_labels(metric, read_labels(args.test, proto))
    else:
        rows = sum(int(next(iter(b.values())).shape[0]) for b in searched)
        search_metric = with_labels(metric, labels)
        held_metric = with_labels(metric, labels[rows:] if labels is not None else None)
    calib = lossy.first_batches(calibration, args.calib_limit or 10 ** 9)
    inputs = _latency_inputs(args, proto, searched[0])
    if options.time_limit is not None:  # the limit is the command's: reading the data counted against it
        options.time_limit = max(1.0, options.time_limit - (time.perf_counter() - start))
    with tempfile.TemporaryDirectory(prefix="graphopt-compress-") as work, _progress(args) as status:
        result = compress(args.input, Path(work), calib, searched, search_metric, options, held_out=held,
                          latency_inputs=inputs, progress=status, held_out_metric=held_metric)
        threshold = result.threshold
        doc = _document(args, result, name, threshold, speedup, searched, held, start)
        doc["frontier"] = frontier_doc(result, name, threshold)
        if result.built is None:
            _print_best(doc, result)
            goal = (f"a {speedup:g}x speedup" if threshold is None else f"{name} >= {threshold:.6g}" + (
                f" (the original's {threshold + args.max_drop:.6g} - {args.max_drop:g})" if args.max_drop is not None
                else ""))
            raise VerificationError(f"no point of the search meets {goal} ({result.search.stopped}); nothing was "
                                    "written")
        model = ir.load(result.built.path)
        batches = held
        saved, accuracy, rank_fidelity = lossy.save_checked(model, args, batches)
    doc["output"] = str(saved.path)
    doc["file_bytes"] = {"before": _file_bytes(args.input), "after": saved.bytes_written}
    if args.time_limit is None or time.perf_counter() - start < args.time_limit * 60:
        doc["profiles"] = _profiles([args.input, str(saved.path)], inputs, args.threads)
    else:
        doc["profiles_skipped"] = "the time limit had passed: no per-operator profiles"
    doc["accuracy"] = lossy.accuracy_doc(accuracy, rank_fidelity, batches, batches)
    doc["accuracy"]["data"] = "held-out"
    if name != "rank-fidelity":  # the generic sentence-embedding figure means nothing for other models
        doc["accuracy"]["rank_fidelity"] = None
    doc["seconds"] = time.perf_counter() - start
    lossy.show_result(args, doc, "compress", lambda: _table(doc), f"wrote {saved.path}")
    return 0


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[Callable[[str], None] | None]:
    """A spinner whose line is the search's status (points measured, the last, the best so far) on a terminal;
    a log line per point under --verbose; None otherwise."""
    if not want_progress(args):
        yield (lambda line: log.info("compress: %s", line)) if getattr(args, "verbose", False) else None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("compress: measuring the fp32 point", total=None)
        yield lambda line: bar.update(task, description=f"compress: {line}")


def _file_bytes(path: str) -> int:
    """Bytes of a model file and the external-data files it names."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    folder = Path(path).parent
    files = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    return Path(path).stat().st_size + sum((folder / f).stat().st_size for f in files if (folder / f).is_file())


def _profiles(paths: list[str], inputs: dict, threads: int) -> dict[str, list[dict[str, Any]]]:
    """The per-operator latency profile (graphopt.bench.profile_model, 10 runs) of the original and the output."""
    from dataclasses import asdict

    from graphopt.bench import profile_model

    return {p: [asdict(t) for t in profile_model(p, inputs, threads=threads, runs=10)] for p in paths}


def _document(args: argparse.Namespace, result: Any, name: str, threshold: float | None, speedup: float | None,
              searched: list, held: list, start: float) -> dict[str, Any]:
    from graphopt.analysis.stats import model_stats

    chosen = result.points[result.chosen] if result.chosen is not None else None
    doc: dict[str, Any] = {
        "input": args.input, "target": args.target, "metric": name, "budget": threshold, "speedup": speedup,
        "max_drop": args.max_drop, "held_out_budget": result.held_threshold,
        "techniques": args.techniques, "stopped": result.search.stopped, "points_measured": len(result.points),
        "search_batches": len(searched), "held_out_batches": len(held), "chosen": chosen,
        "held_out": result.held_out, "original_held_out": result.original_held_out,
        "stepped_back": [result.points[i]["label"] for i in result.stepped_back],
        "original_ms": result.original_ms, "seconds": time.perf_counter() - start,
        "int8_fusions": result.int8_fusions,
    }
    if result.int8_fusions:
        doc["layer_tables"] = [{
            "id": "int8-fusions", "title": "INT8 fusion variants (built and timed at the first INT8 point)",
            "columns": [["fusion", "fusion", ""], ["latency ratio", "latency_ratio", ""],
                        ["latency (ms)", "latency_ms", "ms"], [name, "quality", ""], ["seconds", "seconds", "s"]],
            "rows": result.int8_fusions, "highlight": "chosen",
            "note": "highlighted: the variant every INT8 candidate used (the fastest within "
                    "FUSION_TOLERANCE of the default's quality)"}]
    if result.built is not None:
        docs = result.built.docs
        doc["pipeline"] = docs.get("spec")
        for key in ("prune", "factorize", "quantize"):
            if docs.get(key):
                doc[key] = docs[key]
        # the sites the steps left whole, with their reasons, in the report's "Left whole" notes
        doc["refused"] = list((docs.get("prune") or {}).get("refused") or [])
        doc["not_factorizable"] = dict((docs.get("factorize") or {}).get("not_factorizable") or {})
        dims = getattr(args.request, "dims", None) or None
        before = model_stats(ir.load(args.input), with_flops=True, dims=dims)
        after = model_stats(ir.load(result.built.path), with_flops=True, dims=dims)
        doc["before"], doc["after"] = before.to_dict(), after.to_dict()
        if result.built.float_path is not None:  # INT8 MatMuls are not counted as MatMul: the float model's FLOPs
            doc["after"]["flops"] = model_stats(ir.load(result.built.float_path), with_flops=True, dims=dims).flops
        doc["latency_ms"] = {"before": result.original_ms, "after": chosen.get("latency_ms")}
        doc["quality"] = {name: {"before": result.original_held_out, "after": result.held_out}}
    return doc


def _print_best(doc: dict[str, Any], result: Any) -> None:
    points = [p for p in doc["frontier"]["points"] if p.get("frontier")]
    if not points:
        console.print("no candidate could be measured")
        return
    console.print("best points reached (the Pareto frontier of the search):")
    for p in points:
        console.print(f"  {p['label']}: latency ratio {p['latency_ratio']:.3f}, {doc['metric']} {p['quality']:.4f}")


def _table(doc: dict[str, Any]) -> Table:
    outer = Table.grid(padding=1)
    front = Table(title=f"compress: {doc['points_measured']} points measured ({doc['stopped']})", show_edge=False)
    for col in ("point", "latency ratio", doc["metric"], "frontier"):
        front.add_column(col, justify="left" if col == "point" else "right")
    chosen = doc["frontier"]["chosen"]
    for i, p in enumerate(doc["frontier"]["points"]):
        mark = "chosen" if i == chosen else ("yes" if p.get("frontier") else "")
        front.add_row(p["label"], f"{p['latency_ratio']:.3f}", f"{p['quality']:.4f}", mark)
    outer.add_row(front)
    c = doc["chosen"]
    outer.add_row(f"chosen: {c['label']} ({doc.get('pipeline')}): latency ratio {c['latency_ratio']:.3f} "
                  f"({c['latency_ms']:.2f} ms against {doc['original_ms']:.2f} ms), {doc['metric']} "
                  f"{c['quality']:.4f} on the search split, {doc['held_out']:.4f} held out")
    if doc.get("int8_fusions"):
        outer.add_row("INT8 fusions measured: " + ", ".join(
            f"{f['fusion']} {f['latency_ratio']:.3f}{' (used)' if f['chosen'] else ''}" if "error" not in f else
            f"{f['fusion']} failed ({f['error']})" for f in doc["int8_fusions"]))
    if doc["stepped_back"]:
        outer.add_row(f"passed over (missed the budget on the held-out split): {', '.join(doc['stepped_back'])}")
    outer.add_row(lossy.accuracy_line(doc["accuracy"]))
    outer.add_row(f"done in {doc['seconds']:.1f} s")
    return outer


def add_parsers(sub: Any) -> None:
    """Register ``compress``."""
    from graphopt.compress import TECHNIQUES
    from graphopt.passmanager import TARGETS

    p = sub.add_parser("compress", help="pruning, low-rank and INT8 searched together under one accuracy budget "
                       "(pipeline O3), latency measured on this machine")
    lossy.add_data_options(p, "scores from random inputs mean little", test_note=(
        "held-out inputs for the reported figure (default: the second half of --eval; the search then sees the "
        "first half)"))
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--budget", metavar="METRIC=VALUE", help=(
        "the fastest model whose METRIC (cosine, argmax, rank-fidelity; or VALUE with --metric) holds on the "
        "evaluation inputs"))
    goal.add_argument("--speedup", type=float, metavar="X", help="the most accurate model at least X times faster")
    goal.add_argument("--max-drop", type=float, metavar="D", help=(
        "the fastest model whose metric is at most D below the original's own score on the same inputs (the "
        "search split while searching, the held-out split for the reported figure); for a task metric with labels, "
        "e.g. --max-drop 0.01 for one point of accuracy"))
    p.add_argument("--metric", metavar="MODULE:FUNCTION", help=(
        "a task metric: metric(outputs, reference) -> float, higher is better (FILE.py:FUNCTION works too); "
        "metric(outputs, reference, labels) gets ground truth from labels.json beside the --eval/--test samples"))
    p.add_argument("--target", choices=tuple(TARGETS), default="ort", help="fusions and INT8 placement for this "
                   "runtime (default ort)")
    p.add_argument("--techniques", default=",".join(TECHNIQUES), help=f"searched techniques (default "
                   f"{','.join(TECHNIQUES)})")
    p.add_argument("--time-limit", type=float, metavar="MIN", help="minutes for the command, reading the data "
                   "and the search (a candidate still running when it passes fails; default: no limit)")
    p.add_argument("--int8-method", choices=("minmax", "percentile", "entropy", "mse"), default="minmax",
                   help="INT8 activation range calibration, as graphopt quantize --method (default minmax)")
    p.add_argument("--latency-seconds", type=float, default=2.0, help="timed seconds per candidate (default 2)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads for the latency (default 2)")
    p.add_argument("--mask", metavar="INPUT", help="graph input whose zeros drop padded rows from the statistics "
                   "(default: attention_mask when the model has it)")
    add_dim_options(p, inputs=False)
    lossy.add_output_options(p, "the latency vs quality frontier, kept heads/neurons, ranks, INT8 SQNR")
    p.set_defaults(func=cmd_compress)

#!/usr/bin/env python3
"""Run graphopt pipelines over the ONNX backend test data and classify each case.

Usage::

    python tools/sweep_backend.py [--pipelines O1:ort,O2:ort,O2:onnx,O2:tensorrt]
        [--folders node,simple,...] [--filter REGEX] [--limit N] [--workers 1]
        [--timeout 120] [--json out.json] [--report tools/benchmarks/backend_sweep.md]
        [--before earlier.json --before-label TEXT] [--rows-from out.json] [--via api|cli]

The full table of ``tools/benchmarks/backend_sweep.md`` comes from
``--workers 2 --json rows.json --report tools/benchmarks/backend_sweep.md``
(about 10 minutes on 2 cores for the 4 pipelines); ``--rows-from rows.json``
rewrites the report from a saved run.

Cases come from the onnx wheel: the ``node`` cases are regenerated from
``onnx.backend.test.case.node`` (the wheel ships the code, not the data) with
numpy seeded 0, written like ``onnx.backend.test.cmd_tools generate-data`` does,
into ``~/.cache/graphopt/backend_node`` when absent (``--cache``); the
``light`` models get the inputs onnx's backend runner gives them
(``Runner.generate_dummy_data``, ``random=False``) in the same cache;
``simple``, ``pytorch-operator`` and ``pytorch-converted`` are read from the
wheel. ``real`` holds only download URLs and is listed as skipped.

Each (case, pipeline) runs in a worker process (``--workers``, recycled after
``--max-tasks`` tasks, killed after ``--timeout`` seconds) and gets one class:

- ``onnxruntime-unsupported``: the original does not load or run in
  onnxruntime on its ``test_data_set_0`` inputs (excluded from the acceptance);
- ``ok``: graphopt optimized, wrote and verified the model (the CLI's path:
  ``graphopt optimize --inputs test_data_set_0``, through the Python API, or
  with ``--via cli`` through that command run in-process) and its outputs in
  onnxruntime match the expected outputs wherever the original's do;
- ``refused``: graphopt raised an error with exit code 2 (bad input), reason kept;
- ``verify-failed``: exit code 1 (graphopt's own comparison failed);
- ``crash``: exit code 3 or an unexpected exception;
- ``mismatch``: graphopt passed its own check but the written model's outputs
  differ from the expected outputs (where the original's agree with them) or
  from the original's (``numpy.testing.assert_allclose`` at the backend test's
  ``rtol=1e-3, atol=1e-7``; exact for non-float outputs);
- ``timeout``: the worker ran past ``--timeout`` seconds.

The reference run here is independent of graphopt's verifier (own input
reading and feeding; only the packing of sub-byte tensors is shared), so that
a defect of the verifier shows as a graphopt failure, not as an unsupported
case. Outputs of types numpy cannot hold are compared as raw bytes.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_cases import Case, collect_cases, data_dir  # noqa: E402
from backend_report import CLASSES, count_table, write_report  # noqa: E402, F401 - CLASSES re-exported

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GRAPHOPT_BACKEND_CACHE", Path.home() / ".cache" / "graphopt" / "backend_node"))
REPORT = ROOT / "tools" / "benchmarks" / "backend_sweep.md"
FOLDERS = ("node", "simple", "pytorch-operator", "pytorch-converted", "light", "real")
PIPELINES = ("O1:ort", "O2:ort", "O2:onnx", "O2:tensorrt")
RTOL, ATOL = 1e-3, 1e-7  # onnx.backend.test.runner's defaults for node and data cases


@dataclass
class Row:
    """The outcome of one (case, pipeline): ``cls`` is one of :data:`CLASSES`,
    ``reason`` a one-line cause (empty when ok), ``seconds`` the wall time."""

    folder: str
    name: str
    pipeline: str
    cls: str
    reason: str = ""
    seconds: float = 0.0


# ---------------------------------------------------------------------------
# the independent reference run


def _read_value(raw: bytes, vi: Any) -> Any:
    """Decode a backend-test ``.pb`` file by the declared type of ``vi``."""
    import onnx
    from onnx import numpy_helper

    t = vi.type
    if t.HasField("sequence_type"):
        proto = onnx.SequenceProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_list(proto)
    if t.HasField("optional_type"):
        proto = onnx.OptionalProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_optional(proto)
    if t.HasField("map_type"):
        proto = onnx.MapProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_dict(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(raw)
    return numpy_helper.to_array(proto)


def _ort_feed_value(value: Any, elem_type: int) -> Any:
    """numpy arrays go to onnxruntime as they are, exotic dtypes (ml_dtypes
    int4, float8, ...) as OrtValues (packed where sub-byte, by
    ``graphopt.verify.ortvalues.to_ort_value``: the one piece of graphopt's
    verifier the reference run shares, tested on its own)."""
    import numpy as np

    from graphopt.verify.ortvalues import to_ort_value

    if isinstance(value, np.ndarray) and type(value.dtype).__module__.startswith("ml_dtypes"):
        return to_ort_value(value, elem_type)
    return value


def reference_run(model_path: str, ds: Path, model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``model_path`` in onnxruntime on the inputs of ``ds``; returns
    ``(feed, outputs)`` with outputs as raw-comparable values.

    Raises:
        Exception: whatever onnxruntime raises (the case is then unsupported).
    """
    import onnxruntime as ort

    inits = {t.name for t in model.graph.initializer}
    runtime_inputs = [vi for vi in model.graph.input if vi.name not in inits]
    feed = {}
    for i, vi in enumerate(runtime_inputs):
        f = ds / f"input_{i}.pb"
        if f.exists():
            feed[vi.name] = _read_value(f.read_bytes(), vi)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 4
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return feed, _run_session(ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"]), feed, model)


def _run_session(session: Any, feed: dict[str, Any], model: Any) -> dict[str, Any]:
    import numpy as np

    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    names = [o.name for o in session.get_outputs()]
    exotic = any(isinstance(v, np.ndarray) and type(v.dtype).__module__.startswith("ml_dtypes") for v in feed.values())
    out_exotic = any(o.type.tensor_type.elem_type in _EXOTIC for o in model.graph.output)
    if not exotic and not out_exotic:
        return dict(zip(names, session.run(names, feed)))
    import onnxruntime as ort

    values = {}
    for k, v in feed.items():
        fed = _ort_feed_value(v, types[k])
        values[k] = fed if isinstance(fed, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
    outs = session.run_with_ort_values(names, values)
    return {n: _ort_bytes(v) for n, v in zip(names, outs)}


_EXOTIC = {16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26}  # bfloat16, float8*, (u)int4, float4, (u)int2, float8e8m0


def _ort_bytes(value: Any) -> Any:
    """An output OrtValue as numpy; sub-byte and float8 types unpacked into
    ``ml_dtypes`` arrays (``graphopt.verify.ortvalues.from_ort_value``)."""
    from graphopt.verify.ortvalues import from_ort_value

    return from_ort_value(value)


def _expected_outputs(ds: Path, model: Any) -> dict[str, Any]:
    out = {}
    for i, vi in enumerate(model.graph.output):
        f = ds / f"output_{i}.pb"
        if f.exists():
            try:
                out[vi.name] = _read_value(f.read_bytes(), vi)
            except Exception:  # noqa: BLE001 - a type the reader cannot decode: not compared
                pass
    return out


def _differs(ref: Any, got: Any) -> str:
    """'' when ``got`` matches ``ref`` (backend-test tolerance), else why not."""
    import numpy as np

    if isinstance(ref, dict) or isinstance(got, dict):
        return "" if ref == got else "maps differ"
    if isinstance(ref, list) or isinstance(got, list):
        if not isinstance(ref, list) or not isinstance(got, list) or len(ref) != len(got):
            return "sequence lengths differ"
        return next((f"[{i}] {d}" for i, (a, b) in enumerate(zip(ref, got)) if (d := _differs(a, b))), "")
    if ref is None or got is None:
        return "" if ref is None and got is None else "optional presence differs"
    a, b = np.asarray(ref), np.asarray(got)
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype != b.dtype and not (a.dtype.kind in "OSU" and b.dtype.kind in "OSU"):
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.dtype.kind in "fc" or type(a.dtype).__module__.startswith("ml_dtypes"):
        x, y = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64), b.astype(
            np.complex128 if b.dtype.kind == "c" else np.float64)
        try:
            np.testing.assert_allclose(y, x, rtol=RTOL, atol=ATOL, equal_nan=True)
        except AssertionError as e:
            return str(e).strip().splitlines()[2] if len(str(e).strip().splitlines()) > 2 else "values differ"
        return ""
    if a.dtype.kind in "OSU":
        return "" if np.array_equal(a.astype(str), b.astype(str)) else "strings differ"
    return "" if np.array_equal(a, b) else f"{int(np.count_nonzero(a != b))} elements differ"


# ---------------------------------------------------------------------------
# one (case, pipeline)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _CliFailure(Exception):
    """``graphopt optimize`` run in-process exited non-zero: ``exit_code`` and its message."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _optimize_api(model_path: str, ds: Path, spec: str, target: str, out: Path) -> Path:
    """Optimize, save (checked) and verify through the Python API, as
    ``cmd_optimize`` does; returns the written path. Raises what graphopt raises."""
    from graphopt import ir
    from graphopt.errors import VerificationError
    from graphopt.passmanager import PassContext, PassManager, Pipeline, get_pass
    from graphopt.verify import compare

    model = ir.load(model_path)
    ctx = PassContext(target=target, config={}, instruments=[])
    result = PassManager(Pipeline.parse(spec), ctx).run(model)
    declared = max([get_pass(r.name).tolerance or 0.0 for r in result.report.records if r.modified], default=0.0)
    rtol = max(ctx.get("verify.rtol"), declared)

    def verify(path: Path) -> None:
        report = compare(model_path, str(path), inputs=str(ds), rtol=rtol, atol=ctx.get("verify.atol"),
                         atol_scale=declared)
        if not report.ok:
            raise VerificationError(f"outputs differ: {report.summary()}")

    return ir.save(result.model, out, check=True, validate=verify).path


def _optimize_cli(model_path: str, ds: Path, spec: str, target: str, out: Path) -> Path:
    """``graphopt -q optimize MODEL -o OUT -p SPEC --target T --inputs DS`` in-process.

    Raises:
        _CliFailure: a non-zero exit, with the last lines of its stderr.
    """
    import contextlib
    import io

    from graphopt.cli.main import main as cli_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["-q", "optimize", model_path, "-o", str(out), "-p", spec, "--target", target,
                         "--inputs", str(ds), "--reproducer-dir", str(out.parent / "repro")])
    if code != 0:
        raise _CliFailure(code, f"exit {code}: {err.getvalue().strip()}")
    return out


def run_case(case: Case, pipeline: str, tmp: str, via: str = "api") -> Row:
    """Optimize ``case`` with ``pipeline`` (``"O2:ort"``: pipeline and target)
    through the Python API the way ``graphopt optimize --inputs
    test_data_set_0`` does (``via="api"``), or through that command run
    in-process (``via="cli"``), and classify it (classes in the module doc)."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # the passes' warnings would flood the sweep's output
    try:
        return _run_case(case, pipeline, tmp, via)
    finally:
        logging.disable(previous)  # in-process callers (tests) keep their logging


def _run_case(case: Case, pipeline: str, tmp: str, via: str) -> Row:
    import onnx

    from graphopt.errors import GraphoptError

    start = time.perf_counter()
    row = Row(case.folder, case.name, pipeline, "ok")
    spec, _, target = pipeline.partition(":")
    model_path = str(Path(case.path) / "model.onnx")
    ds = Path(case.path) / "test_data_set_0"
    try:
        proto = onnx.load(model_path)
        feed, original = reference_run(model_path, ds, proto)
    except Exception as e:  # noqa: BLE001 - whatever onnxruntime or the reader raises
        row.cls, row.reason = "onnxruntime-unsupported", _one_line(f"{type(e).__name__}: {e}")
        row.seconds = round(time.perf_counter() - start, 3)
        return row
    out = Path(tmp) / f"{case.folder}.{case.name}.{spec}.{target or 'ort'}.onnx"
    try:
        optimize = _optimize_cli if via == "cli" else _optimize_api
        saved = optimize(model_path, ds, spec, target or "ort", out)
        written = onnx.load(str(saved))
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        got = _run_session(ort.InferenceSession(str(saved), opts, providers=["CPUExecutionProvider"]),
                           {k: v for k, v in feed.items() if k in {i.name for i in written.graph.input}}, written)
        expected = _expected_outputs(ds, proto)
        problems = []
        for name, ref in original.items():
            if name not in got:
                problems.append(f"output {name!r} missing")
                continue
            exp = expected.get(name)
            if exp is not None and not _differs(exp, ref) and (d := _differs(exp, got[name])):
                problems.append(f"{name} vs expected: {d}")
            elif d := _differs(ref, got[name]):
                problems.append(f"{name} vs original: {d}")
        if problems:
            row.cls, row.reason = "mismatch", _one_line("; ".join(problems))
    except (GraphoptError, _CliFailure) as e:
        code = e.exit_code
        row.cls = {1: "verify-failed", 2: "refused"}.get(code, "crash")
        cause = e.__cause__
        detail = f" <- {type(cause).__name__}: {cause}" if cause is not None and row.cls == "crash" else ""
        row.reason = _one_line(f"{type(e).__name__}: {e}{detail}")
    except Exception as e:  # noqa: BLE001 - an internal error of graphopt
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.name}" for f in reversed(tb) if "graphopt" in f.filename
                      or "passes" in f.filename), "")
        row.cls, row.reason = "crash", _one_line(f"{type(e).__name__}: {e} (in {where})")
    finally:
        for suffix in ("", ".data"):
            Path(str(out) + suffix).unlink(missing_ok=True)
    row.seconds = round(time.perf_counter() - start, 3)
    return row


# ---------------------------------------------------------------------------
# the worker pool: a timeout kills the worker, not the sweep


def _worker(conn: Any, tmp: str, via: str = "api") -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        task = conn.recv()
        if task is None:
            return
        case, pipeline = task
        try:
            row = run_case(case, pipeline, tmp, via)
        except BaseException as e:  # noqa: BLE001 - report, never die silently
            row = Row(case.folder, case.name, pipeline, "crash", _one_line(f"worker: {type(e).__name__}: {e}"))
        conn.send(row)


def sweep(tasks: list[tuple[Case, str]], workers: int, timeout: float, max_tasks: int,
          progress: bool = True, via: str = "api") -> list[Row]:
    """Run every ``(case, pipeline)`` in ``workers`` processes; a task over
    ``timeout`` seconds is recorded as ``timeout`` and its worker replaced; a
    worker is replaced after ``max_tasks`` tasks (memory)."""
    ctx = mp.get_context("spawn")
    rows: list[Row] = []
    pending = collections.deque(tasks)
    slots: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="graphopt-sweep-")

    def start() -> dict[str, Any]:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, tmp, via), daemon=True)
        proc.start()
        return {"proc": proc, "conn": parent, "task": None, "since": 0.0, "done": 0}

    slots = [start() for _ in range(max(1, workers))]
    t0 = time.time()
    try:
        while pending or any(s["task"] for s in slots):
            for i, s in enumerate(slots):
                if s["task"] is None and pending:
                    if s["done"] >= max_tasks or not s["proc"].is_alive():
                        _stop(s)
                        s = slots[i] = start()
                    s["task"] = pending.popleft()
                    s["since"] = time.time()
                    s["conn"].send(s["task"])
                if s["task"] is None:
                    continue
                case, pipeline = s["task"]
                row = None
                if s["conn"].poll(0.02):
                    try:
                        row = s["conn"].recv()
                    except EOFError:
                        row = Row(case.folder, case.name, pipeline, "crash", "worker process died")
                elif not s["proc"].is_alive():
                    row = Row(case.folder, case.name, pipeline, "crash",
                              f"worker process died (exit code {s['proc'].exitcode})")
                elif time.time() - s["since"] > timeout:
                    row = Row(case.folder, case.name, pipeline, "timeout", f"over {timeout:g} s",
                              round(time.time() - s["since"], 1))
                if row is None:
                    continue
                if row.cls in ("timeout", "crash") and not s["proc"].is_alive() or row.cls == "timeout":
                    _stop(s)
                    slots[i] = start()
                else:
                    s["task"], s["done"] = None, s["done"] + 1
                rows.append(row)
                if progress:
                    n, total = len(rows), len(tasks)
                    if row.cls not in ("ok", "onnxruntime-unsupported") or n % 100 == 0:
                        print(f"[{n}/{total} {time.time() - t0:.0f}s] {row.folder}/{row.name} {row.pipeline}: "
                              f"{row.cls} {row.reason[:160]}", file=sys.stderr, flush=True)
    finally:
        for s in slots:
            _stop(s)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _stop(slot: dict[str, Any]) -> None:
    proc = slot["proc"]
    if proc.is_alive():
        try:
            slot["conn"].send(None)
        except (BrokenPipeError, OSError):
            pass
        proc.join(0.5)
    if proc.is_alive():
        proc.kill()
        proc.join()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 1 when any case is not ok (unsupported excluded)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help="comma-separated PIPELINE:TARGET items (default: %(default)s)")
    parser.add_argument("--folders", default=",".join(FOLDERS))
    parser.add_argument("--filter", default=None, help="regex on folder/name")
    parser.add_argument("--limit", type=int, default=None, help="at most N cases (after --filter)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case and pipeline")
    parser.add_argument("--max-tasks", type=int, default=200, help="tasks per worker before it is replaced")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--json", type=Path, default=None, help="also write every row as JSON here")
    parser.add_argument("--report", type=Path, default=None,
                        help=f"markdown report path (the full sweep's is {REPORT.relative_to(ROOT)})")
    parser.add_argument("--before", type=Path, default=None,
                        help="a JSON file of an earlier run whose counts the report shows as 'before'")
    parser.add_argument("--before-label", default="", help="what the earlier run ran (e.g. the commit)")
    parser.add_argument("--label", default="", help="what this run ran (e.g. the commit), for the report")
    parser.add_argument("--also", type=Path, default=None,
                        help="a JSON file of a second run (e.g. --via cli) shown in the report as well")
    parser.add_argument("--also-title", default="Through the CLI (--via cli)")
    parser.add_argument("--rows-from", type=Path, default=None,
                        help="write the report from this --json file instead of running the cases")
    parser.add_argument("--via", choices=("api", "cli"), default="api",
                        help="optimize through the Python API (default) or `graphopt optimize` run in-process")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    folders = [f for f in args.folders.split(",") if f]
    unknown = [f for f in folders if f not in FOLDERS]
    if unknown:
        parser.error(f"unknown folder(s) {unknown}; choose from {list(FOLDERS)}")
    cases, skipped = collect_cases(folders, args.cache)
    if args.filter:
        rx = re.compile(args.filter)
        cases = [c for c in cases if rx.search(f"{c.folder}/{c.name}")]
    if args.limit is not None:
        cases = cases[: args.limit]
    pipelines = [p for p in args.pipelines.split(",") if p]
    tasks = [(c, p) for c in cases for p in pipelines]
    command = "python tools/sweep_backend.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.rows_from:
        doc = json.loads(args.rows_from.read_text())
        rows, command = [Row(**r) for r in doc["rows"]], doc["command"]
        pipelines = list(dict.fromkeys(r.pipeline for r in rows))
    else:
        rows = sweep(tasks, args.workers, args.timeout, args.max_tasks, progress=not args.quiet, via=args.via)
        order = {(c.folder, c.name): i for i, c in enumerate(cases)}
        rows.sort(key=lambda r: (order[(r.folder, r.name)], pipelines.index(r.pipeline)))
    if args.json:
        args.json.write_text(json.dumps({"command": command, "skipped": skipped,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    if args.report:
        before = None
        if args.before:
            doc = json.loads(args.before.read_text())
            before = {"note": f"{args.before_label} Command: `{doc['command']}`".strip(),
                      "rows": [Row(**r) for r in doc["rows"]]}
        also = None
        if args.also:
            doc = json.loads(args.also.read_text())
            also = {"title": args.also_title, "note": f"Command: `{doc['command']}`",
                    "rows": [Row(**r) for r in doc["rows"]]}
        write_report(rows, skipped, args.report, command, before, args.label, also)
    counts = collections.Counter(r.cls for r in rows)
    print(json.dumps(dict(counts)) if args.quiet else "\n".join(
        count_table(rows, list(dict.fromkeys(r.folder for r in rows)), pipelines)))
    return 0 if all(r.cls in ("ok", "onnxruntime-unsupported") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Compare ``graphopt -p O1`` with the peer simplifiers on the same models:
node count, wall time, peak RSS, validity and numerical error.

Usage::

    python tools/compare_simplifiers.py [PATH ...] [--tools graphopt,onnxslim,onnxsim,onnxscript]
        [--timeout 1800] [--repeat 1] [--dim sequence=128] [--json OUT] [--keep DIR]

PATH is an ``.onnx`` file or a folder of them (default: ``models/`` and
``~/.cache/graphopt/corpus/*.onnx``). For each model every tool runs in its
own child process (``python tools/compare_simplifiers.py --worker TOOL IN OUT``),
one after the other, so that its peak RSS (``os.wait4`` rusage ``ru_maxrss``)
and its times are its own. (Linux carries a parent's peak RSS into its
children's ``ru_maxrss`` over exec, so the child is forked by a bare ~10 MB
Python launcher that reports the child's rusage; the floor of the figure is
that launcher's ~10 MB.)

=================  ==========================================================
``graphopt``       ``graphopt.load`` -> ``graphopt.optimize(m, "O1")`` ->
                   ``graphopt.save`` (the in-process API; lazy weights)
``graphopt-cli``   ``graphopt -q optimize IN -o OUT -p O1 --no-verify``
                   (process wall time only; not in the default set)
``onnxslim``       ``onnx.load`` -> ``onnxslim.slim(model)`` ->
                   ``onnxslim.utils.save`` (what ``slim(path, out)`` does,
                   minus its summary tables)
``onnxsim``        ``onnxsim.simplify(path, output_path=OUT,
                   external_data_threshold="2GB")``: onnxsim's own path-based
                   fast path, which loads, simplifies and saves inside its C++
                   core, so the optimize-only time is not separable (its
                   ``opt s`` is the whole call)
``onnxscript``     ``onnx_ir.load`` -> ``onnxscript.optimizer.optimize(m)`` ->
                   ``onnx_ir.save``
=================  ==========================================================

Every tool writes external data when the input had external data (or, for the
protobuf-based ones, when the model is over 2 GB); otherwise a single file.

The same work is timed for every tool. onnxsim's ``simplify`` runs
``onnx.checker.check_model`` on the file it wrote (its success flag), and
graphopt's ``save`` fsyncs the files it writes (part of its atomic write); the
others do neither. So, after its save, each worker runs ``check``
(``onnx.checker.check_model(OUT)``, for all but onnxsim, which did it inside
its call) and ``sync`` (fsync of every file written and of the folder, for all:
the output is on disk when the time stops), both timed and part of ``work``;
``--no-check`` / ``--no-durable`` leave them out (onnxsim's own check cannot be
taken out of its call). Before each run, outside any timing, the parent
flushes dirty pages to disk (``os.sync``: the previous tool's output would
otherwise be written back during the next tool's run) and reads the input
files once, so every tool starts with the input in the page cache; the order
of the tools rotates from one repetition to the next.

Times, in seconds: ``wall`` is the child process from spawn to exit (Python
start-up and imports included), ``work`` is load + optimize + save (+ check +
sync) measured inside the worker, ``opt`` is the optimize call alone. The time
acceptance point compares ``work`` (``--time-metric`` picks another).
``--repeat N`` runs the tools N times and reports median times (and the
largest RSS).

Then, in this process, for each output: node count (all nodes, subgraphs
included; nodes inside model-local functions are listed apart), a full
``onnx.checker`` check, an onnxruntime load and run on the inputs that
``graphopt.verify.generate_inputs`` makes for the original (the original is run
once per model), the maximum relative error and minimum cosine similarity over
the outputs (``graphopt.verify.compare_outputs``, rtol 1e-5, atol 1e-6) and the
output signature (``graphopt.verify.signature_differences``). A tool that fails,
times out, is killed or writes an invalid model gets its error in the table.

Acceptance (summary table), per model, for graphopt against the peers whose
output loads and runs in onnxruntime with an unchanged signature (a peer whose
outputs drift still counts: the comparison is not made easier by dropping it):

- ``outputs``: graphopt's outputs within 1e-5 relative (rtol 1e-5, atol 1e-6),
  and its model passes the checker and loads in onnxruntime
- ``signature``: output signature unchanged
- ``nodes``: graphopt nodes <= the fewest nodes of those peers
- ``time``: graphopt time <= the fastest of those peers

Peers are optional: they are not graphopt dependencies. Install them into the
dev venv with ``pip install onnxslim onnxsim onnxscript`` (checked on Python
3.11: onnxslim 0.1.98, onnxsim 0.8.1 (a cp311 manylinux wheel), onnxscript 0.7.2,
with onnx 1.23.2 / onnx-ir 1.1.0 / onnxruntime 1.32.0 kept). A peer that is not
importable is reported as "not installed". Exit status: 0 when every
acceptance point passes on every model, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# tools/ is on sys.path when this runs as a script
from simplifier_checks import ATOL, RTOL, _short, check_output, count_nodes, json_safe
from simplifier_tables import _f, model_table, summary_table
import peer_spawn
from simplifier_worker import MODULE, has_external_data, worker

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GRAPHOPT_CACHE", Path.home() / ".cache" / "graphopt" / "corpus"))
TOOLS = ("graphopt", "graphopt-cli", "onnxslim", "onnxsim", "onnxscript")
DEFAULT_TOOLS = ("graphopt", "onnxslim", "onnxsim", "onnxscript")
PEERS = ("onnxslim", "onnxsim", "onnxscript")
PROTOBUF_LIMIT = 2**31 - 1
#: Input shapes for corpus models whose image dims are unnamed or named in a way
#: that graphopt.verify's defaults would bind to 1 (see models/README.md);
#: ``--shape`` overrides.
DEFAULT_SHAPES: dict[str, dict[str, list[int]]] = {
    "paddleocr_det": {"x": [1, 3, 64, 64]},
    "paddleocr_cls": {"x": [1, 3, 48, 192]},
    "paddleocr_rec": {"x": [1, 3, 48, 320]},
}


# ---------------------------------------------------------------------------
# the parent: spawn, measure, check


def _installed(tool: str) -> bool:
    return importlib.util.find_spec(MODULE[tool]) is not None


def settle(path: Path) -> float:
    """Prepare a fair start for the next tool, outside its timing: write dirty
    pages to disk (``os.sync``) and read the model's files once (they are then
    in the page cache for every tool). Returns the seconds it took."""
    start = time.perf_counter()
    os.sync()
    buffer = bytearray(16 * 2**20)
    for file in [path, *path.parent.glob(path.name + ".data")]:
        with open(file, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start


def rotated(tools: list[str], rep: int) -> list[str]:
    """The tools in the order of repetition ``rep`` (0-based): rotated by one
    per repetition, so no tool always runs first or after the same one."""
    if not tools:
        return []
    k = rep % len(tools)
    return tools[k:] + tools[:k]


def spawn(tool: str, src: Path, dst: Path, pipeline: str, timeout: float, log: Path, big: bool,
          check: bool = True, durable: bool = True) -> dict[str, Any]:
    """Run one tool in a child process (``peer_spawn.spawn``: wall time and
    the child's own peak RSS, from ``os.wait4``)."""
    if tool == "graphopt-cli":
        cmd = [str(Path(sys.executable).parent / "graphopt"), "-q", "optimize", str(src), "-o", str(dst),
               "-p", pipeline, "--no-verify"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, str(src), str(dst),
               "--pipeline", pipeline] + (["--big"] if big else []) + ([] if check else ["--no-check"]) + (
               [] if durable else ["--no-durable"])
    return peer_spawn.spawn(cmd, dst, timeout, log)


def _parse_shape(text: str) -> tuple[str, list[int]]:
    name, _, dims = text.rpartition("=")
    if not name:
        raise SystemExit(f"--shape wants INPUT=D0,D1,...; got {text!r}")
    return name, [int(d) for d in dims.replace("x", ",").split(",")]


def _with_shapes(proto: Any, shapes: dict[str, list[int]]) -> Any:
    """A copy of the (structure-only) model whose named inputs have these static
    dims, for input generation; inputs of another rank are left alone."""
    import onnx

    if not shapes:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for vi in copy.graph.input:
        dims = shapes.get(vi.name)
        shape = vi.type.tensor_type.shape
        if dims is None or len(shape.dim) != len(dims):
            continue
        for d, size in zip(shape.dim, dims):
            d.Clear()
            d.dim_value = size
    return copy


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_model_set(path: Path, tools: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import onnx

    from graphopt.verify import generate_inputs
    from graphopt.verify.runtime import run_model

    print(f"\n### {path.name}", flush=True)
    src_proto = onnx.load(str(path), load_external_data=False)
    data_bytes = sum(p.stat().st_size for p in path.parent.glob(path.name + ".data")) + path.stat().st_size
    nodes, fnodes = count_nodes(src_proto)
    result: dict[str, Any] = {"model": str(path), "name": path.name, "input_nodes": nodes,
                              "input_function_nodes": fnodes, "size_mb": data_bytes / 2**20,
                              "loadavg_before": _loadavg(), "tools": {}}
    big = has_external_data(src_proto) or data_bytes > PROTOBUF_LIMIT
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    outs: dict[str, Path] = {}
    failed: set[str] = set()
    for rep in range(args.repeat):
        for tool in rotated(tools, rep):
            if tool in failed:
                continue  # no point repeating a failure
            if not _installed(tool):
                runs[tool].append({"ok": False, "error": "not installed"})
                failed.add(tool)
                continue
            folder = tmp / f"{path.stem}.{tool}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            out = folder / f"{path.stem}.{tool}.onnx"
            log = tmp / f"{path.stem}.{tool}.log"  # beside the output folder: not fsynced with it
            settle(path)
            row = spawn(tool, path, out, args.pipeline, args.timeout, log, big, args.check, args.durable)
            runs[tool].append(row)
            outs[tool] = out
            status = "ok" if row.get("ok") else f"FAILED {row.get('error', '')[:200]}"
            print(f"  [{rep + 1}/{args.repeat}] {tool}: wall {_f(row.get('wall_s'))} s, work "
                  f"{_f(row.get('work_s'), '.3f')} s, peak RSS {_f(row.get('rss_mb'), '.0f')} MB, {status}", flush=True)
            if not row.get("ok"):
                failed.add(tool)
    # the reference outputs, once per model
    ref = feed = None
    dims = {k: int(v) for k, v in (d.split("=", 1) for d in args.dim)}
    shapes = {**DEFAULT_SHAPES.get(path.stem, {}), **dict(_parse_shape(t) for t in args.shape)}
    try:
        t0 = time.perf_counter()
        feed = generate_inputs(_with_shapes(src_proto, shapes), dims or None, seed=args.seed)
        ref = run_model(path, feed)
        result["reference_s"] = time.perf_counter() - t0
        result["inputs"] = {k: f"{v.dtype.name}{list(v.shape)}" for k, v in feed.items()}
    except Exception as e:  # noqa: BLE001
        result["reference_error"] = _short(e)
        print(f"  reference run failed: {result['reference_error']}", flush=True)
    for tool in tools:
        rows = runs[tool]
        last = rows[-1]
        entry: dict[str, Any] = {"ok": bool(last.get("ok")), "runs": len(rows)}
        if not last.get("ok"):
            entry["error"] = last.get("error", "failed")
            if last.get("traceback"):
                entry["traceback"] = last["traceback"]
        for key in ("wall_s", "work_s", "opt_s", "load_s", "save_s", "check_s", "sync_s"):
            entry[key] = _median([r.get(key) for r in rows if r.get("ok")]) if entry["ok"] else last.get(key)
        entry["rss_mb"] = max((r.get("rss_mb", 0.0) for r in rows), default=None)
        if last.get("import_rss_kb"):
            entry["import_rss_mb"] = last["import_rss_kb"] / 1024
        if entry["ok"]:
            try:
                entry.update(check_output(src_proto, outs[tool], ref, feed))
            except Exception as e:  # noqa: BLE001
                entry["check_error"] = _short(e)
        result["tools"][tool] = entry
        if not args.keep and tool in outs:
            shutil.rmtree(outs[tool].parent, ignore_errors=True)
    ref = feed = None
    result["loadavg_after"] = _loadavg()
    result["acceptance"] = acceptance(result, args.time_metric)
    return result


def _runs_clean(entry: dict[str, Any]) -> bool:
    """A peer output that counts for the node/time comparison: it ran, loads and
    runs in onnxruntime, and keeps the signature."""
    return (entry.get("ok") and entry.get("ort_load") == "ok" and entry.get("ort_run") in ("ok", "no reference")
            and not entry.get("signature_diffs"))


def acceptance(result: dict[str, Any], metric: str) -> dict[str, Any]:
    tools = result["tools"]
    g = tools.get("graphopt")
    acc: dict[str, Any] = {}
    if g is None:
        return {"overall": "n/a (graphopt not run)"}
    peers = {t: e for t, e in tools.items() if t in PEERS and _runs_clean(e)}
    if not g.get("ok"):
        acc.update(outputs="FAIL", signature="FAIL", nodes="FAIL", time="FAIL", overall="FAIL")
        return acc
    valid = g.get("checker") == "ok" and g.get("ort_load") == "ok" and g.get("ort_run") == "ok"
    acc["outputs"] = "PASS" if valid and g.get("outputs_ok") else "FAIL"
    acc["signature"] = "PASS" if not g.get("signature_diffs") else "FAIL"
    if peers:
        best_nodes = min(peers.items(), key=lambda kv: kv[1]["nodes"])
        acc["min_peer_nodes"], acc["min_peer_nodes_tool"] = best_nodes[1]["nodes"], best_nodes[0]
        acc["nodes"] = "PASS" if g["nodes"] <= best_nodes[1]["nodes"] else "FAIL"
        timed = {t: e for t, e in peers.items() if e.get(metric) is not None}
        if timed and g.get(metric) is not None:
            fastest = min(timed.items(), key=lambda kv: kv[1][metric])
            acc["fastest_peer_s"], acc["fastest_peer_tool"] = fastest[1][metric], fastest[0]
            acc["time"] = "PASS" if g[metric] <= fastest[1][metric] else "FAIL"
        else:
            acc["time"] = "n/a"
    else:
        acc["nodes"] = acc["time"] = "n/a (no peer output ran)"
    points = [acc[k] for k in ("outputs", "signature", "nodes", "time")]
    acc["overall"] = "FAIL" if "FAIL" in points else "PASS"
    return acc


def collect(paths: list[str]) -> list[Path]:
    models: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            models.extend(sorted(p.glob("*.onnx")))
        elif p.is_file():
            models.append(p)
        else:
            print(f"warning: {p} does not exist, skipped", file=sys.stderr)
    return models


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        wp = argparse.ArgumentParser(prog="compare_simplifiers.py --worker")
        wp.add_argument("--worker", choices=TOOLS)
        wp.add_argument("src")
        wp.add_argument("dst")
        wp.add_argument("--pipeline", default="O1")
        wp.add_argument("--big", action="store_true", help="write external data")
        wp.add_argument("--no-check", dest="check", action="store_false")
        wp.add_argument("--no-durable", dest="durable", action="store_false")
        w = wp.parse_args(argv)
        return worker(w.worker, w.src, w.dst, w.pipeline, w.big, w.check, w.durable)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", default=[str(ROOT / "models"), str(CACHE)],
                        help="models or folders of models (default: models/ and the cache corpus)")
    parser.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                        help=f"comma-separated, from {', '.join(TOOLS)} (default: %(default)s)")
    parser.add_argument("--pipeline", default="O1", help="graphopt pipeline (default: O1)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per tool and model, seconds (default 1800)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool, round-robin; median times")
    parser.add_argument("--time-metric", choices=("work_s", "wall_s", "opt_s"), default="work_s",
                        help="time compared in the acceptance (default: work_s = load+optimize+save)")
    parser.add_argument("--dim", action="append", default=[], help="symbolic dim size for the inputs, NAME=N")
    parser.add_argument("--shape", action="append", default=[],
                        help="static shape for an input of every model that has it, NAME=D0,D1,... "
                             "(defaults for the PaddleOCR models: see DEFAULT_SHAPES)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="leave the timed onnx.checker step out (onnxsim still checks inside its call)")
    parser.add_argument("--no-durable", dest="durable", action="store_false",
                        help="leave the timed fsync of the outputs out (graphopt's save still fsyncs)")
    parser.add_argument("--seed", type=int, default=0, help="input generation seed")
    parser.add_argument("--json", dest="json_out", help="write all results as JSON here")
    parser.add_argument("--keep", help="keep the outputs in this folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        parser.error(f"unknown tool(s) {bad}; choose from {list(TOOLS)}")
    models = collect(args.paths)
    if not models:
        parser.error("no .onnx models found")
    versions = {}
    for mod in ("graphopt", "onnxslim", "onnxsim", "onnxscript", "onnx", "onnx_ir", "onnxruntime"):
        try:
            m = importlib.import_module(mod) if _installed_mod(mod) else None
            versions[mod] = str(getattr(m, "__version__", "?")) if m else "not installed"
        except Exception as e:  # noqa: BLE001
            versions[mod] = f"import error: {_short(e, 100)}"
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    results = []
    tmp_ctx = tempfile.TemporaryDirectory(prefix="compare_simplifiers.") if not args.keep else None
    tmp = Path(args.keep) if args.keep else Path(tmp_ctx.name)  # type: ignore[union-attr]
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for path in models:
            try:
                result = run_model_set(path, tools, args, tmp)
                table = model_table(result, args.time_metric)
            except Exception as e:  # noqa: BLE001 - an unreadable input is a row, not a crash
                result = {"model": str(path), "name": path.name, "input_nodes": "-", "error": _short(e),
                          "tools": {}, "acceptance": {"overall": "FAIL"}}
                table = f"**{path.name}**: cannot be compared: {result['error']}"
            results.append(result)
            print("\n" + table, flush=True)
            if args.json_out:  # written as we go, so a long run leaves partial results
                _write_json(args.json_out, versions, args, results)
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print(f"\n## Summary (graphopt -p {args.pipeline} vs {', '.join(t for t in tools if t in PEERS)}; "
          f"time = {args.time_metric})\n")
    print(summary_table(results, args.time_metric))
    if args.json_out:
        _write_json(args.json_out, versions, args, results)
    return 0 if all(r["acceptance"].get("overall") == "PASS" for r in results) else 1


def _installed_mod(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _write_json(path: str, versions: dict[str, str], args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    doc = {"versions": versions, "pipeline": args.pipeline, "time_metric": args.time_metric, "repeat": args.repeat,
           "check": args.check, "durable": args.durable,
           "rtol": RTOL, "atol": ATOL, "dims": args.dim, "seed": args.seed, "results": results}
    Path(path).write_text(json.dumps(json_safe(doc), indent=1, allow_nan=False))


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz graphopt's pipelines with random valid graphs, checked by onnxruntime.

Each seed makes one graph with :mod:`graphgen` (elementwise, shape ops,
reductions, MatMul/Gemm, Conv/BatchNormalization, decomposed LayerNorm and
Gelu, Softmax, run-time index and mask inputs, If and Loop with subgraphs
reading outer-scope values; default opset 13-23; a symbolic batch dim on half
of them, other symbolic dims by chance) and a random feed. The graph is
saved, then loaded, optimized and saved by graphopt as the CLI does
(``graphopt.load`` -> ``graphopt.optimize`` -> ``graphopt.save``) under every
configuration (``O1`` and ``O2`` for targets ``ort`` and ``onnx`` by default),
read back and classified:

- ``ok``: every configuration kept the output signature, passed
  ``onnx.checker`` (target ``onnx``; target ``ort`` may use onnxruntime's
  default-domain contrib ops such as SimplifiedLayerNormalization, which the
  checker does not know, so there onnxruntime's load is the check), matched
  the original in onnxruntime (graph optimizations disabled on both sides)
  within rtol=atol=1e-5, and (target ``ort``) also runs at ORT_ENABLE_ALL
  where the original does;
- ``crash``: graphopt raised, wrote a model onnx.checker or onnxruntime
  rejects, ran past ``--timeout``, or the process died;
- ``mismatch``: outputs differ beyond tolerance, or the signature changed;
- ``refused``: graphopt declined the graph as bad input (a ``GraphoptError``
  with exit code 2) although onnxruntime runs it;
- ``invalid-generated``: onnxruntime (or onnx.checker) rejects the generated
  graph itself: a generator defect, counted apart (fix :mod:`graphgen`).

A graph's class is the worst over its configurations. Each seed runs in a
forked child, so a native crash (a segfault in onnxruntime on a model graphopt
wrote) is that seed's ``crash``, not the end of the run. Every non-ok graph is
printed with its seed and a command that reproduces it::

    python tools/fuzz.py --count 1000                # seeds 0..999
    python tools/fuzz.py --seed 17                   # one graph, verbose
    python tools/fuzz.py --count 1000 --markdown tools/benchmarks/fuzz.md
    python tools/fuzz.py --start 10000 --count 400 --max-nodes 64 --max-steps 40
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import graphgen  # noqa: E402

CLASSES = ("ok", "crash", "mismatch", "refused", "invalid-generated")
SEVERITY = {"ok": 0, "refused": 1, "mismatch": 2, "crash": 3, "invalid-generated": 4}
CONFIGS = ("O1:ort", "O2:ort", "O2:onnx")
OPSETS = tuple(range(13, 24))
RTOL = ATOL = 1e-5
DEFAULT_SIZES = (32, 20)
MAX_NODES, MAX_STEPS = DEFAULT_SIZES
KEPT_HEADING = "## Fixed along the way"


@dataclass
class Result:
    """The outcome of one seed: its class, and per configuration the class and
    a one-line reason."""

    seed: int
    cls: str = "ok"
    configs: dict[str, tuple[str, str]] = field(default_factory=dict)
    opset: int = 0
    nodes: int = 0
    detail: str = ""  # a traceback or report, printed by --seed

    def note(self, config: str, cls: str, reason: str) -> None:
        """Record a configuration's outcome; the seed's class is the worst."""
        self.configs[config] = (cls, reason)
        if SEVERITY[cls] > SEVERITY[self.cls]:
            self.cls = cls

    def line(self) -> str:
        """One line per non-ok configuration, with the reproduce command."""
        bad = [f"{c}: {k}: {r}" for c, (k, r) in self.configs.items() if k != "ok"]
        return (f"seed {self.seed} {self.cls} (opset {self.opset}, {self.nodes} nodes) {'; '.join(bad)} "
                f"-- reproduce: python tools/fuzz.py --seed {self.seed}{_size_args()}")


def _size_args() -> str:
    """The --max-nodes/--max-steps a reproduce command needs (none at the defaults)."""
    if (MAX_NODES, MAX_STEPS) == DEFAULT_SIZES:
        return ""
    return f" --max-nodes {MAX_NODES} --max-steps {MAX_STEPS}"


def generate(seed: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The graph and feed of a seed (the same on every machine and run)."""
    return graphgen.build_model(graphgen.RandomDraw(seed), opsets=OPSETS, steps=tuple(graphgen.STEPS),
                                max_nodes=MAX_NODES, max_steps=MAX_STEPS, symbolic_all=True)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001, ARG001 - signal handler signature
    raise _Timeout


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def run_config(model: onnx.ModelProto, feed: dict, ref: dict, config: str,
               original_runs_at_all: Callable[[], bool] = lambda: True) -> tuple[str, str, str]:
    """Optimize ``model`` under ``config`` (``PIPELINE:TARGET``) and check the
    result: ``(class, one-line reason, detail)``. ``original_runs_at_all``
    says whether the original runs at ORT_ENABLE_ALL (asked only when needed)."""
    import graphopt
    from graphopt.errors import GraphoptError
    from graphopt.verify import compare_outputs, run_model, signature_differences

    pipeline, target = config.split(":")
    try:
        # the user's path: load (with its validation) -> optimize -> save (atomic write) -> read back
        with tempfile.TemporaryDirectory(prefix="graphopt-fuzz-") as tmp:
            onnx.save(model, f"{tmp}/in.onnx")
            optimized = graphopt.optimize(graphopt.load(f"{tmp}/in.onnx"), pipeline, target)
            graphopt.save(optimized, f"{tmp}/out.onnx")
            out = onnx.load(f"{tmp}/out.onnx")
    except _Timeout:
        raise
    except GraphoptError as e:
        cls = "refused" if e.exit_code == 2 else "crash"
        return cls, _short(e), traceback.format_exc()
    except Exception as e:  # noqa: BLE001 - any other exception is a crash of graphopt
        return "crash", _short(e), traceback.format_exc()
    sig = signature_differences(model, out)
    if sig:
        return "mismatch", "signature changed: " + "; ".join(sig), onnx.printer.to_text(out)
    try:
        if target != "ort":  # ort allows onnxruntime's own ops, some in the default domain
            onnx.checker.check_model(out, full_check=True)
    except Exception as e:  # noqa: BLE001
        return "crash", "output fails onnx.checker: " + _short(e), onnx.printer.to_text(out)
    try:
        got = run_model(out, feed, optimization_level="disable")
    except Exception as e:  # noqa: BLE001
        return "crash", "onnxruntime rejects the output: " + _short(e), onnx.printer.to_text(out)
    report = compare_outputs(ref, got, rtol=RTOL, atol=ATOL)
    if not report.ok:
        return "mismatch", " ".join(report.summary().split())[:300], onnx.printer.to_text(out)
    if target == "ort" and original_runs_at_all():
        # the output must also survive onnxruntime's own optimizers (numbers not compared), where the
        # original does: onnxruntime's LayerNormFusion mistypes some graphs by itself (seed 30161 at
        # --max-nodes 64: "Type parameter (T) of Optype (LayerNormalization) bound to different types")
        try:
            run_model(out, feed, optimization_level="all")
        except Exception as e:  # noqa: BLE001
            return "crash", "onnxruntime at ORT_ENABLE_ALL rejects the output: " + _short(e), onnx.printer.to_text(out)
    return "ok", "", ""


def run_seed(seed: int, configs: tuple[str, ...] = CONFIGS, timeout: int = 120,
             started: Callable[[str], None] | None = None) -> Result:
    """Generate the graph of ``seed``, run it through ``configs`` and classify
    it (``started`` is told each configuration before it runs)."""
    from graphopt.verify import run_model

    result = Result(seed)
    try:
        model, feed = generate(seed)
    except Exception as e:  # noqa: BLE001 - the generator made a graph onnx rejects
        result.note("generate", "invalid-generated", _short(e))
        result.detail = traceback.format_exc()
        return result
    result.opset = model.opset_import[0].version
    result.nodes = graphgen.count_nodes(model.graph)
    try:
        ref = run_model(model, feed, optimization_level="disable")
    except Exception as e:  # noqa: BLE001
        result.note("onnxruntime", "invalid-generated", _short(e))
        result.detail = onnx.printer.to_text(model)
        return result
    at_all: list[bool] = []

    def original_runs_at_all() -> bool:
        if not at_all:
            try:
                run_model(model, feed, optimization_level="all")
                at_all.append(True)
            except Exception:  # noqa: BLE001 - onnxruntime's own optimizers fail on the original
                at_all.append(False)
        return at_all[0]

    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for config in configs:
            if started:
                started(config)
            signal.alarm(timeout)
            try:
                cls, reason, detail = run_config(model, feed, ref, config, original_runs_at_all)
            except _Timeout:
                cls, reason, detail = "crash", f"timeout: more than {timeout} s", ""
            finally:
                signal.alarm(0)
            result.note(config, cls, reason)
            if detail:
                result.detail += f"--- {config}: {cls}\n{detail}\n"
    finally:
        signal.signal(signal.SIGALRM, old)
    return result


def run_isolated(seed: int, configs: tuple[str, ...] = CONFIGS, timeout: int = 120) -> Result:
    """:func:`run_seed` in a forked child, so that a segfault (onnxruntime's,
    on a model graphopt wrote) is a ``crash`` of that seed, not the end of the
    run. The child reports the configuration it starts, so a death names it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        out = os.fdopen(w, "w")
        try:
            def started(config: str) -> None:
                out.write(json.dumps({"started": config}) + "\n")
                out.flush()

            result = run_seed(seed, configs, timeout, started=started)
            out.write(json.dumps({"result": asdict(result)}) + "\n")
            out.flush()
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        messages = [json.loads(line) for line in f if line.strip()]
    _, status = os.waitpid(pid, 0)
    for m in messages:
        if "result" in m:
            data = m["result"]
            data["configs"] = {k: tuple(v) for k, v in data["configs"].items()}
            return Result(**data)
    running = next((m["started"] for m in reversed(messages) if "started" in m), "generate")
    how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}"
    result = Result(seed)
    result.note(running, "crash", f"the process died ({how}); run --seed {seed} for the native stack")
    return result


def _settings(configs: tuple[str, ...]) -> str:
    """What the run did, in a paragraph: the generator's sizes and commit, the
    configurations, the comparison."""
    import onnxruntime

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = ""
    return (f"Generator `tools/graphgen*.py`{f' at commit {commit}' if commit else ''} (up to {MAX_NODES} "
            f"main-graph nodes, {MAX_STEPS} steps, opsets {OPSETS[0]}-{OPSETS[-1]}, symbolic dims); each graph "
            f"through {', '.join(configs)} by load -> optimize -> save, compared with the original in onnxruntime "
            f"{onnxruntime.__version__} (graph optimizations disabled) at rtol = atol = {RTOL:g}; ort outputs also "
            "run at ORT_ENABLE_ALL where the original does. Reproduce one graph: "
            f"`python tools/fuzz.py --seed N{_size_args()}`.")


def markdown(results: list[Result], command: str, seconds: float, configs: tuple[str, ...]) -> str:
    """The report: counts per class (graphs and per configuration) and every non-ok seed."""
    per_graph = Counter(r.cls for r in results)
    per_config = {c: Counter(r.configs.get(c, ("-", ""))[0] for r in results) for c in configs}
    lines = [
        "# Fuzz: random graphs through graphopt, checked by onnxruntime", "",
        f"Command: `{command}` ({len(results)} graphs, {seconds:.0f} s, 1 process).", "",
        _settings(configs), "",
        "| class | graphs | " + " | ".join(configs) + " |",
        "|---|---|" + "---|" * len(configs),
    ]
    for cls in CLASSES:
        lines.append(f"| {cls} | {per_graph.get(cls, 0)} | "
                     + " | ".join(str(per_config[c].get(cls, 0)) for c in configs) + " |")
    bad = [r for r in results if r.cls != "ok"]
    lines += ["", "## Non-ok seeds", ""]
    lines += [f"- {r.line()}" for r in bad] or ["None."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: run seeds, print every failure, summarize; exit 1 on any crash or mismatch."""
    global MAX_NODES, MAX_STEPS  # generate() reads them; forked children inherit them
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="run one seed and print its graph and the failure's detail")
    parser.add_argument("--count", type=int, default=1000, help="number of seeds (default 1000)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="PIPELINE:TARGET,... (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per configuration (default 120)")
    parser.add_argument("--max-nodes", type=int, default=MAX_NODES,
                        help="most main-graph nodes per graph (default %(default)s; larger finds more interplay)")
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS, help="most generator steps (default %(default)s)")
    parser.add_argument("--log", type=Path, help="append one JSON line per seed (to follow a long run)")
    parser.add_argument("--markdown", type=Path, help="write the report here (e.g. tools/benchmarks/fuzz.md)")
    args = parser.parse_args(argv)
    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    MAX_NODES, MAX_STEPS = args.max_nodes, args.max_steps

    if args.seed is not None:
        faulthandler.enable()  # a native crash prints the Python stack it happened under
        try:  # the graph first: a native crash ends the process before the report
            print(onnx.printer.to_text(generate(args.seed)[0]), flush=True)
        except Exception:  # noqa: BLE001 - the failure is in the detail below
            pass
        result = run_seed(args.seed, configs, args.timeout)
        if result.detail:
            print(result.detail)
        print(result.line() if result.cls != "ok" else f"seed {args.seed} ok ({', '.join(configs)})")
        return 0 if result.cls in ("ok", "refused") else 1

    # imported once here, not in every forked child (faster, and every seed runs the same code)
    import onnxruntime  # noqa: F401

    import graphopt.passes  # noqa: F401 - registers the passes
    import graphopt.verify  # noqa: F401

    seeds = range(args.start, args.start + args.count)
    results: list[Result] = []
    t0 = time.perf_counter()
    log = args.log.open("a") if args.log else None
    for seed in seeds:
        r = run_isolated(seed, configs, args.timeout)
        results.append(r)
        if r.cls != "ok":
            print(r.line(), flush=True)
        if log:
            log.write(json.dumps({"seed": seed, "class": r.cls, "configs": r.configs}) + "\n")
            log.flush()
    seconds = time.perf_counter() - t0
    counts = Counter(r.cls for r in results)
    print(f"{len(results)} graphs in {seconds:.0f} s: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES))
    if args.markdown:
        command = "python tools/fuzz.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
        kept = ""  # the hand-written history below KEPT_HEADING survives a rerun
        if args.markdown.exists() and KEPT_HEADING in args.markdown.read_text():
            kept = "\n" + KEPT_HEADING + args.markdown.read_text().split(KEPT_HEADING, 1)[1]
        args.markdown.write_text(markdown(results, command.strip(), seconds, configs) + kept)
    return 1 if counts.get("crash") or counts.get("mismatch") else 0


if __name__ == "__main__":
    sys.exit(main())

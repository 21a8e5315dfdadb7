#!/usr/bin/env python3
"""Nested control flow: graphopt O2 against onnxscript's optimizer on a
streaming-VAD-like model (issue 20, item 9).

Usage::

    python tools/bench_nested_if.py [--hidden 128] [--seconds 10] [--threads 2] [--model PATH] [--keep DIR]
        [--json OUT]

Builds the model of ``tools/nested_if_model.py`` (a top-level
``If(Equal(sr, 16000))`` whose two branches hold 8 guard Ifs each, 12 of
them decided by the input shapes, around a small Conv/LSTM-cell network,
as in Silero-VAD-style exports), optimizes it with

* ``graphopt``: ``graphopt.optimize(model, "O2", target="ort")`` -> ``graphopt.save``;
* ``onnxscript``: ``onnx_ir.load`` -> ``onnxscript.optimizer.optimize(model)`` -> ``onnx_ir.save``,

counts the Ifs each output keeps (all graphs), and times the original and
both outputs interleaved in one run per sample rate with graphopt's bench
runner (``graphopt.bench.runner.benchmark``: onnxruntime CPU,
ORT_ENABLE_ALL, 2 intra-op threads, spinning off, rotated order; see
``shared/BENCH.md``). Each run feeds one 512-sample chunk at ``sr=16000``
or 256 samples at ``sr=8000``, batch 1, as a streaming VAD is called.
Prints per sample rate the median, p90 and ratio to the original, and the
outputs' max abs error against the original's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nested_if_model import DECIDED_IFS, GUARD_IFS, build_vad_model, vad_inputs  # noqa: E402


def count_ifs(proto: onnx.ModelProto) -> int:
    """If nodes in the main graph and every subgraph."""
    def walk(graph: onnx.GraphProto) -> int:
        n = 0
        for node in graph.node:
            n += node.op_type == "If"
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    n += sum(walk(g) for g in attr.graphs)
        return n
    return walk(proto.graph)


def optimize_graphopt(src: Path, dst: Path) -> float:
    """graphopt O2 (target ort); returns the optimize seconds."""
    import graphopt

    model = graphopt.load(src)
    t0 = time.perf_counter()
    model = graphopt.optimize(model, "O2", target="ort")
    seconds = time.perf_counter() - t0
    graphopt.save(model, dst)
    return seconds


def optimize_onnxscript(src: Path, dst: Path) -> float:
    """onnxscript's optimizer with its defaults; returns the optimize seconds."""
    import onnx_ir
    import onnxscript.optimizer

    model = onnx_ir.load(src)
    t0 = time.perf_counter()
    onnxscript.optimizer.optimize(model)
    seconds = time.perf_counter() - t0
    onnx_ir.save(model, dst)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128, help="state width / encoder channels (Silero VAD: 128)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per sample rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help=(
        "time this model instead of the constructed one (inputs input [1, n], state [2, 1, hidden], sr: a "
        "Silero VAD export, e.g. silero_vad.onnx from the silero-vad wheel)"))
    parser.add_argument("--keep", type=Path, help="folder to keep the three models in")
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)

    from graphopt.bench.runner import benchmark

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_nested_if_"))
    folder.mkdir(parents=True, exist_ok=True)
    original = folder / "vad_original.onnx"
    if args.model is None:
        onnx.save(build_vad_model(hidden=args.hidden), original)
    else:
        original.write_bytes(args.model.read_bytes())
    paths = {"original": original, "graphopt-O2": folder / "vad_graphopt_O2.onnx",
             "onnxscript": folder / "vad_onnxscript.onnx"}
    opt_seconds = {"graphopt-O2": optimize_graphopt(original, paths["graphopt-O2"]),
                   "onnxscript": optimize_onnxscript(original, paths["onnxscript"])}
    ifs = {name: count_ifs(onnx.load(p, load_external_data=False)) for name, p in paths.items()}
    total = ifs["original"] - 1  # the nested ones (the top-level If on sr stays in every output)
    if args.model is None:
        print(f"model: {original} (hidden={args.hidden}); nested Ifs: {total}, decided by shapes: {DECIDED_IFS}")
        assert total == GUARD_IFS
    else:
        print(f"model: {args.model}; nested Ifs: {total}")
    for name in ("graphopt-O2", "onnxscript"):
        print(f"  {name:12s} keeps {ifs[name]:2d} Ifs: resolved {ifs['original'] - ifs[name]:2d} of {total} nested "
              f"(optimize {opt_seconds[name]:.2f} s)")
    report: dict = {"ifs": ifs, "optimize_seconds": opt_seconds, "runs": {}}
    for sr in (16000, 8000):
        bench = benchmark([paths["original"], paths["graphopt-O2"], paths["onnxscript"]],
                          inputs=vad_inputs(sr, args.hidden), threads=args.threads, opt_level="all",
                          warmup=50, min_runs=200, max_runs=100000, seconds=args.seconds)
        print(f"\nsr={sr}: {bench.models[0].runs} interleaved runs each, ORT_ENABLE_ALL, {bench.threads} threads, "
              f"load {bench.load_before[0]:.2f} -> {bench.load_after[0]:.2f}")
        print(f"  {'model':12s} {'median ms':>10s} {'p90 ms':>8s} {'ratio':>6s} {'max abs err':>12s}")
        for name, t in zip(paths, bench.models):
            err = "" if t.max_abs_err is None else f"{t.max_abs_err:.2e}"
            print(f"  {name:12s} {t.median_ms:10.4f} {t.p90_ms:8.4f} {t.ratio:6.3f} {err:>12s}")
        go, osc = bench.models[1], bench.models[2]
        print(f"  graphopt-O2 / onnxscript = {go.median_ms / osc.median_ms:.3f}")
        report["runs"][str(sr)] = bench.to_dict()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""INT8 quantization of graphopt against onnxruntime's quantize_static and
quantize_dynamic, on the same models, calibration data and machine.

For each model: the calibration and evaluation inputs are fixed first
(``DATA_DIR/<model stem>/calib/*.npz`` and ``.../eval/*.npz`` when given,
e.g. rendered text images from ``tools/ocr_inputs.py``; else generated as
``graphopt verify`` does, calibration seeds 0.., evaluation seeds 1000..).
Each quantizer runs in its own process (wall time, peak RSS):

* ``ort-dynamic``: ``quantize_dynamic(weight_type=QInt8)`` (defaults);
* ``ort-static``: ``quantize_static(QDQ, per_channel=True, QUInt8 activations,
  QInt8 weights, MinMax)`` on the calibration data;
* ``graphopt``: ``graphopt quantize --target ort --calib DIR`` (INT8, MinMax);
* ``graphopt-budget`` (with ``--tools``): the same with ``--budget`` (mixed
  precision: the most sensitive layers stay float);

then every output is timed with the float model in one interleaved run
(``graphopt.bench.runner.benchmark``: onnxruntime ORT_ENABLE_ALL, 2 threads,
the first evaluation input) and compared with the float model on all
evaluation inputs (cosine, max abs error, argmax agreement). Prints a markdown
table per model and writes ``OUT_DIR/report.md`` and ``OUT_DIR/quantizers.json``.

Usage::

    python tools/compare_quantizers.py OUT_DIR MODEL.onnx [MODEL.onnx ...] [--data-dir D] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_spawn import spawn  # noqa: E402

TOOLS = ("ort-dynamic", "ort-static", "graphopt")
BIG = 1_800_000_000


def _samples(folder: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as z:
            out.append({k: z[k] for k in z.files})
    return out


def _write(folder: Path, samples: list[dict[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        np.savez(folder / f"sample_{i:04d}.npz", **s)


def prepare_data(model: Path, work: Path, data_dir: Path | None, count: int,
                 dims: dict[str, int]) -> tuple[Path, Path | None, Path]:
    """The calibration, tuning and evaluation folders (``*.npz``) of ``model``.

    The tuning inputs are what ``graphopt-budget`` searches its budget on
    (``--eval``); the accuracy of every tool is then measured on the
    evaluation inputs, which no tool has seen. None when ``data_dir`` has no
    ``tune`` folder for the model (the budget is then searched on the
    calibration inputs)."""
    import onnx

    from graphopt.verify.inputs import generate_inputs, model_dim_names

    if data_dir is not None and (data_dir / model.stem / "calib").is_dir():
        tune = data_dir / model.stem / "tune"
        return data_dir / model.stem / "calib", tune if tune.is_dir() else None, data_dir / model.stem / "eval"
    proto = onnx.load(str(model), load_external_data=False)
    names = set(model_dim_names(proto))
    dims = {k: v for k, v in dims.items() if k in names}
    calib, tune, evaluation = work / "calib", work / "tune", work / "eval"
    _write(calib, [generate_inputs(proto, dims=dims, seed=i) for i in range(count)])
    _write(tune, [generate_inputs(proto, dims=dims, seed=2000 + i) for i in range(4)])
    _write(evaluation, [generate_inputs(proto, dims=dims, seed=1000 + i) for i in range(4)])
    return calib, tune, evaluation


def worker(tool: str, src: str, dst: str, calib: str) -> None:
    """Run one quantizer (in a child process)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    big = sum(f.stat().st_size for f in Path(src).parent.glob(Path(src).stem + "*")) > BIG
    if tool == "ort-dynamic":
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, use_external_data_format=big)
        return
    samples = _samples(Path(calib))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=big)


def run_tool(tool: str, model: Path, out: Path, calib: Path, tune: Path | None,
             args: argparse.Namespace) -> dict[str, Any]:
    """Quantize ``model`` with ``tool`` into ``out``; wall time, RSS, errors."""
    if tool.startswith("graphopt"):
        exe = Path(sys.executable).parent / "graphopt"
        cmd = [str(exe), "quantize", str(model), "-o", str(out), "--calib", str(calib), "--target", "ort",
               "--method", args.method, "--quiet"]
        if tool == "graphopt-budget":
            cmd += ["--budget", args.budget] + (["--eval", str(tune)] if tune is not None else [])
    else:
        cmd = [sys.executable, __file__, "--worker", tool, str(model), str(out), str(calib)]
    return spawn(cmd, out, args.timeout, out.with_suffix(".log"))


def accuracy(reference: Path, candidate: Path, evaluation: list[dict]) -> dict[str, Any]:
    """Worst-output cosine, max abs error and argmax agreement against the float model."""
    from graphopt.passes.quantization.report import accuracy_report

    report = accuracy_report(reference, candidate, evaluation)
    agree = [o.argmax_agreement for o in report.outputs if o.argmax_agreement is not None]
    return {"cosine": report.cosine, "max_abs": max((o.max_abs for o in report.outputs), default=0.0),
            "argmax": min(agree) if agree else None, "bytes": report.bytes_after, "bytes_fp32": report.bytes_before}


def compare_model(model: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Quantize, check and time one model with every tool."""
    from graphopt.bench.runner import benchmark

    work = out_dir / model.stem
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dims = dict(item.split("=") for item in args.dim or [])
    dims = {k: int(v) for k, v in dims.items()}
    calib, tune, evaluation_dir = prepare_data(model, work, args.data_dir, args.calib_count, dims)
    evaluation = _samples(evaluation_dir)
    rows: dict[str, dict[str, Any]] = {}
    for tool in args.tools.split(","):
        dst = work / f"{tool}.onnx"
        row = run_tool(tool, model, dst, calib, tune, args)
        if row.get("ok"):
            try:
                row.update(accuracy(model, dst, evaluation))
            except Exception as e:  # a peer's output onnxruntime cannot run: reported, not fatal
                row.update(ok=False, error=f"accuracy check failed: {e}"[:600])
        rows[tool] = row
        print(f"  {tool}: {'ok' if row.get('ok') else row.get('error')} ({row['wall_s']:.1f} s)", flush=True)
    timed = [t for t, r in rows.items() if r.get("ok")]
    bench = benchmark([model] + [work / f"{t}.onnx" for t in timed], inputs=evaluation[0], seconds=args.seconds,
                      warmup=args.warmup, min_runs=args.min_runs)
    fp32 = bench.models[0]
    for tool, timing in zip(timed, bench.models[1:]):
        rows[tool].update(median_ms=timing.median_ms, p90_ms=timing.p90_ms, ratio=timing.ratio, runs=timing.runs)
    result = {"model": model.stem, "fp32_ms": fp32.median_ms, "fp32_runs": fp32.runs, "tools": rows,
              "load": [bench.load_before, bench.load_after]}
    if not args.keep:
        for tool in rows:
            for f in work.glob(f"{tool}.onnx*"):
                f.unlink()
    return result


def markdown(result: dict[str, Any]) -> str:
    """One model's table."""
    lines = [f"### {result['model']} (fp32 median {result['fp32_ms']:.1f} ms)", "",
             "| tool | quantize s | peak RSS MB | size MB | size ratio | median ms | latency ratio vs fp32 | "
             "cosine | max abs err | argmax agree |", "|---|---|---|---|---|---|---|---|---|---|"]
    for tool, r in result["tools"].items():
        if not r.get("ok"):
            lines.append(f"| {tool} | {r['wall_s']:.1f} | | | | | failed: {r.get('error', '')[:120]} | | | |")
            continue
        rss = f"{r['rss_mb']:.0f}" if r.get("rss_mb") else ""
        agree = f"{r['argmax']:.4f}" if r.get("argmax") is not None else ""
        lines.append(f"| {tool} | {r['wall_s']:.1f} | {rss} | {r['bytes'] / 1e6:.1f} | {r['bytes'] / r['bytes_fp32']:.3f} "
                     f"| {r.get('median_ms', 0):.1f} | {r.get('ratio', 0):.3f} | {r['cosine']:.6f} | "
                     f"{r['max_abs']:.4g} | {agree} |")
    return "\n".join(lines) + "\n"


def header(args: argparse.Namespace) -> str:
    """The report's first lines: machine, versions and the command (no paths of this machine)."""
    import os
    import platform

    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    models = " ".join(m.name for m in args.models)
    return (f"# INT8 quantizers\n\n{cpu}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__} CPU, "
            f"ORT_ENABLE_ALL, 2 threads; graphopt --method {args.method}; {args.calib_count} calibration inputs "
            f"unless --data-dir.\n\n`python tools/compare_quantizers.py OUT {models} --tools {args.tools}"
            f"{' --data-dir D' if args.data_dir else ''} --seconds {args.seconds:g}`\n\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module doc)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(*argv[1:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data-dir", type=Path, help="DIR/<model stem>/{calib,eval}/*.npz inputs")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--method", default="minmax", help="graphopt's calibration method")
    parser.add_argument("--budget", default="cosine=0.995",
                        help="the accuracy budget of the graphopt-budget tool (mixed precision)")
    parser.add_argument("--calib-count", type=int, default=8)
    parser.add_argument("--dim", action="append", help="NAME=SIZE for generated inputs (default sequence=128)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the quantized models")
    args = parser.parse_args(argv)
    args.dim = args.dim or ["sequence=128", "batch=1"]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models:
        print(f"{model.stem}:", flush=True)
        results.append(compare_model(model, args.out_dir, args))
        print(markdown(results[-1]), flush=True)
        (args.out_dir / "quantizers.json").write_text(json.dumps(results, indent=1, default=str))
        (args.out_dir / "report.md").write_text(header(args) + "\n".join(markdown(r) for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run `graphopt optimize -p O1` on every model of a corpus folder and check the
acceptance points of the core issue: onnx.checker full check, onnxruntime load,
output signature unchanged, outputs within 1e-5 relative, node count not grown,
and the size on disk (model + external data) not grown by more than 1% (the
folding growth rule of fold-constants; a shrink is reported, not failed).

Usage::

    python tools/check_corpus.py [DIR ...] [--pipeline O1] [--target ort] [--dim sequence=128] [--only NAME ...]

DIR defaults to ``models/`` and ``~/.cache/graphopt/corpus``. Prints one row per
model and exits 1 if any model fails a check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

from graphopt.verify import compare, signature_differences

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("GRAPHOPT_CACHE", Path.home() / ".cache" / "graphopt" / "corpus"))


def disk_bytes(path: Path) -> int:
    """Bytes of a model file plus the external-data files it names (each once)."""
    model = onnx.load(str(path), load_external_data=False)
    files = {t.external_data[i].value for t in model.graph.initializer for i in range(len(t.external_data))
             if t.external_data[i].key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def check(path: Path, pipeline: str, dims: list[str], out_dir: Path, target: str = "ort") -> dict:
    """Optimize one model in a child process and check the result."""
    out = out_dir / f"{path.stem}.{pipeline}.onnx"
    cmd = [str(Path(sys.executable).parent / "graphopt"), "-q", "optimize", str(path), "-o", str(out),
           "-p", pipeline, "--target", target, "--json", "--no-verify"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"model": path.name, "seconds": round(time.perf_counter() - start, 2), "ok": False}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip()[-300:]
        return row
    report = json.loads(proc.stdout)
    row["nodes"] = f"{report['before']['nodes']} -> {report['after']['nodes']}"
    before, after = disk_bytes(path), disk_bytes(out)
    row["size"] = f"{before} -> {after} ({(after - before) / before:+.2%})"
    grown = after > before * 1.01
    if target != "ort":  # ort outputs may hold onnxruntime's default-domain contrib ops onnx.checker lacks
        onnx.checker.check_model(str(out), full_check=True)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    sig = signature_differences(onnx.load(str(path), load_external_data=False), onnx.load(str(out), load_external_data=False))
    from graphopt.verify.inputs import model_dim_names

    names = set(model_dim_names(onnx.load(str(path), load_external_data=False)))
    dim_map = {k: int(v) for k, v in (d.split("=") for d in dims) if k in names}  # ViT has no sequence
    # the tolerance graphopt optimize verifies with: the largest a pass that changed the model declares
    # (1e-4 for fusions, also the scale-relative absolute floor), else 1e-5
    from graphopt.passmanager import get_pass

    declared = max([get_pass(r["name"]).tolerance or 0.0 for r in report["passes"] if r.get("modified")], default=0.0)
    result = compare(path, out, dims=dim_map, rtol=max(1e-5, declared), atol=1e-6, atol_scale=declared)
    row.update(signature="same" if not sig else "; ".join(sig), max_rel=result.worst,
               cosine=min((o.cosine for o in result.outputs if o.cosine is not None), default=None))
    row["ok"] = result.ok and not sig and report["after"]["nodes"] <= report["before"]["nodes"] and not grown
    for f in out_dir.iterdir():
        f.unlink()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", default=[str(ROOT / "models"), str(CACHE)])
    parser.add_argument("--pipeline", default="O1")
    parser.add_argument("--target", default="ort")
    parser.add_argument("--dim", action="append", default=[])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these files (stems)")
    args = parser.parse_args()
    models = [p for d in args.dirs for p in sorted(Path(d).glob("*.onnx")) if not args.only or p.stem in args.only]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            row = check(path, args.pipeline, args.dim, Path(tmp), args.target)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | nodes | size on disk | max rel err | min cosine | signature | optimize s | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r.get('nodes', '-')} | {r.get('size', '-')} | {r.get('max_rel', '-')} | "
              f"{r.get('cosine', '-')} | "
              f"{r.get('signature', r.get('error', '-'))} | {r['seconds']} | {'yes' if r['ok'] else 'NO'} |")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

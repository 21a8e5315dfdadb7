#!/usr/bin/env python3
"""Round-trip a large (> 2 GB, external data) model through `graphopt optimize -p O1`
and report peak RSS and whether every initializer survived byte for byte.

Usage::

    python tools/measure_large.py [MODEL.onnx] [--out DIR] [--pipeline O1]

MODEL defaults to the >2 GB LLaMA-architecture model that
``tools/make_corpus.py --large`` writes into ``~/.cache/graphopt/corpus``.

The optimize run is a child process (``graphopt -q optimize ... --no-verify``:
numeric verification would have onnxruntime hold the weights twice, which is
not what this measures); its peak RSS comes from ``os.wait4``'s rusage
(``ru_maxrss``, KiB on Linux). Initializers are hashed (SHA-256) in both
models by streaming their bytes from the data files in 16 MiB chunks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import external_data_helper

DEFAULT = Path(os.environ.get("GRAPHOPT_CACHE", Path.home() / ".cache" / "graphopt" / "corpus"))
CHUNK = 16 * 2**20


def initializer_hashes(path: Path) -> dict[str, str]:
    """SHA-256 of each initializer's raw bytes (main graph), streamed from external data."""
    model = onnx.load(str(path), load_external_data=False)
    hashes: dict[str, str] = {}
    for tensor in model.graph.initializer:
        digest = hashlib.sha256()
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            with open(path.parent / info.location, "rb") as f:
                f.seek(int(info.offset or 0))
                left = int(info.length) if info.length is not None else -1
                while left != 0:
                    chunk = f.read(CHUNK if left < 0 else min(CHUNK, left))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk) if left > 0 else 0
        else:
            digest.update(onnx.numpy_helper.to_array(tensor).tobytes())
        hashes[tensor.name] = digest.hexdigest()
    return hashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=str(DEFAULT / "llama_gqa_large_ts.onnx"))
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "graphopt-large"))
    parser.add_argument("--pipeline", default="O1")
    args = parser.parse_args()
    src = Path(args.model)
    if not src.is_file():
        print(f"{src} does not exist; run: python tools/make_corpus.py --large", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "model.O1.onnx"
    proto = onnx.load(str(src), load_external_data=False)
    data_files = {external_data_helper.ExternalDataInfo(t).location for t in proto.graph.initializer
                  if external_data_helper.uses_external_data(t)}
    size = src.stat().st_size + sum((src.parent / f).stat().st_size for f in data_files)
    del proto
    graphopt = Path(sys.executable).parent / "graphopt"
    cmd = [str(graphopt), "-q", "optimize", str(src), "-o", str(out), "-p", args.pipeline, "--no-verify"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    print(f"model: {src} ({size / 2**30:.2f} GiB with data)")
    print(f"command: {' '.join(cmd)}")
    print(f"exit code: {code}, wall time: {seconds:.1f} s, peak RSS: {usage.ru_maxrss / 2**20:.3f} GiB "
          f"({usage.ru_maxrss / 1024:.0f} MiB)")
    if code != 0:
        return code
    onnx.checker.check_model(str(out), full_check=True)
    print("onnx.checker (full check): ok")
    before, after = initializer_hashes(src), initializer_hashes(out)
    same = sum(1 for k, v in after.items() if before.get(k) == v)
    changed = sorted(k for k, v in after.items() if k in before and before[k] != v)
    new = sorted(k for k in after if k not in before)
    gone = sorted(k for k in before if k not in after)
    print(f"initializers: {len(before)} in, {len(after)} out; {same} of the output's are byte-identical to the "
          f"input's of the same name; {len(changed)} changed, {len(new)} new (folded), {len(gone)} removed "
          "(dead or merged duplicates)")
    for name in changed[:10]:
        print(f"  changed: {name}")
    return 0 if not changed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: an IR-3 CNN whose weights are graph inputs, before and after graphopt.

IR 3 required every initializer to be listed among the graph inputs. Written
as IR >= 4 with them still there, onnxruntime treats each weight as an
overridable input ("Initializer ... appears in graph inputs and will not be
treated as constant value/weight"): no constant folding, no Conv+BN or
Conv+activation fusion (issue 20, item 2: two model-zoo CNNs ran 1.3-1.5x
slower). graphopt drops them from the inputs unless
``--keep-initializer-inputs``.

The model (built here, seeded): x: float[1, 3, 224, 224] ->
Conv 3->64 3x3/2 + BN + Relu -> Conv 64->64 + BN + Relu -> MaxPool 2x2 ->
Conv 64->128 + BN + Relu -> Conv 128->128 + BN + Relu -> GlobalAveragePool ->
Flatten -> Gemm 128->10; opset 9, IR 3. It is optimized with
``graphopt optimize -p O2 --target ort`` (in-process), once by default and
once with ``--keep-initializer-inputs``, and the three files are timed
interleaved at ORT_ENABLE_ALL with :func:`graphopt.bench.benchmark` (ratios
against the input).

Usage::

    .venv/bin/python tools/bench_ir3.py [--seconds 15] [--threads 2] [--out DIR]

Runs in well under a minute (model building and optimizing take a few
seconds; ``--seconds`` bounds the timed rounds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_model(path: Path, seed: int = 0) -> Path:
    """Write the IR-3, opset-9 CNN described in the module docstring to ``path``.

    Weights are He-initialized (so activations stay O(1)), BatchNormalization
    statistics random but positive variance; every initializer is also a
    graph input, as IR 3 required.
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def add(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    x = "x"
    channels = 3
    for i, (out, stride) in enumerate([(64, 2), (64, 1), (128, 1), (128, 1)]):
        if i == 2:
            nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
            x = "pool"
        w = add(f"conv{i}.weight", rng.standard_normal((out, channels, 3, 3)) * np.sqrt(2.0 / (channels * 9)))
        nodes.append(helper.make_node("Conv", [x, w], [f"conv{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]))
        bn = [add(f"bn{i}.scale", rng.random(out) + 0.5), add(f"bn{i}.bias", rng.standard_normal(out) * 0.1),
              add(f"bn{i}.mean", rng.standard_normal(out) * 0.1), add(f"bn{i}.var", rng.random(out) + 0.5)]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}", *bn], [f"bn{i}"]))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"]))
        x, channels = f"relu{i}", out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fc_w = add("fc.weight", rng.standard_normal((10, channels)) * np.sqrt(1.0 / channels))
    fc_b = add("fc.bias", np.zeros(10))
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], transB=1))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "ir3_cnn", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.save(model, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Build, optimize twice, benchmark; print the table. Returns 0, or the
    CLI's exit code when an optimize run fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="time budget of the timed rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per session (default 2)")
    parser.add_argument("--out", help="folder to keep the three models in (default: a temporary folder)")
    args = parser.parse_args(argv)

    from graphopt.bench import benchmark
    from graphopt.cli.main import main as graphopt_main

    with tempfile.TemporaryDirectory(prefix="graphopt-ir3-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src = build_model(folder / "ir3_cnn.onnx")
        out = folder / "ir3_cnn.O2.onnx"
        kept = folder / "ir3_cnn.O2.keep.onnx"
        for target, extra in ((out, []), (kept, ["--keep-initializer-inputs"])):
            code = graphopt_main(["-q", "optimize", str(src), "-o", str(target), "-p", "O2", "--target", "ort", *extra])
            if code:
                return code
        for path in (src, out, kept):
            model = onnx.load(str(path), load_external_data=False)
            inits = {t.name for t in model.graph.initializer}
            print(f"{path.name:24s} ir_version {model.ir_version}, {len(model.graph.node):2d} nodes, "
                  f"{sum(i.name in inits for i in model.graph.input):2d} initializers among the inputs")
        report = benchmark([src, out, kept], threads=args.threads, opt_level="all", seconds=args.seconds)
        print(f"\nORT_ENABLE_ALL, {args.threads} threads, load {report.load_before[0]:.1f} -> "
              f"{report.load_after[0]:.1f}, {report.seconds:.1f} s")
        print(f"{'model':24s} {'runs':>5s} {'median ms':>10s} {'p90 ms':>8s} {'ratio':>6s} {'max abs err':>12s}")
        for t in report.models:
            err = "" if t.max_abs_err is None else f"{t.max_abs_err:.2e}"
            print(f"{Path(t.path).name:24s} {t.runs:5d} {t.median_ms:10.2f} {t.p90_ms:8.2f} {t.ratio:6.3f} {err:>12s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The machine's fp32 GEMM throughput, the compute roof of a roofline.

Transformer and CNN inference on CPU is dominated by MatMul/Gemm/Conv, so the
measured throughput of one large square fp32 GEMM is the practical peak a
model's achieved GFLOP/s (its MatMul/Gemm/Conv FLOPs, from
``graphopt.analysis.stats.flops``, over its median latency) is compared with
(``shared/BENCH.md``: numpy ~188 GFLOP/s and one onnxruntime MatMul ~173 on
these 2-core machines). A multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from graphopt.bench.runner import make_bench_session

__all__ = ["GemmPeak", "gemm_peak"]


@dataclass
class GemmPeak:
    """Measured fp32 GEMM throughput.

    Attributes:
        n: the square GEMM's size (``[n, n] x [n, n]``).
        threads: onnxruntime intra-op threads (numpy uses its BLAS's default).
        numpy_gflops: best-of-runs GFLOP/s (1e9 FLOP/s) of ``numpy.matmul``.
        ort_gflops: best-of-runs GFLOP/s of a one-node onnxruntime MatMul
            (CPU execution provider, ORT_ENABLE_ALL, spinning off).
        runs: timed runs of each.
    """

    n: int
    threads: int
    numpy_gflops: float
    ort_gflops: float
    runs: int

    @property
    def peak_gflops(self) -> float:
        """The higher of the two: the roof models are compared with."""
        return max(self.numpy_gflops, self.ort_gflops)


def _best(fn, runs: int) -> float:
    fn()  # warm-up: BLAS thread start, page faults
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(n: int = 2048, threads: int = 2, runs: int = 5) -> GemmPeak:
    """Measure fp32 ``[n, n] x [n, n]`` GEMM throughput with numpy and with
    onnxruntime (``2 n^3`` FLOPs per product; the fastest of ``runs``).

    Raises:
        ValueError: ``n`` or ``runs`` below 1.
    """
    if n < 1 or runs < 1:
        raise ValueError(f"gemm_peak needs n >= 1 and runs >= 1 (got n={n}, runs={runs})")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3
    numpy_s = _best(lambda: np.matmul(a, b), runs)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    with tempfile.TemporaryDirectory(prefix="graphopt-gemm-") as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, path)
        session = make_bench_session(path, "CPUExecutionProvider", threads, "all")
        ort_s = _best(lambda: session.run(None, {"a": a, "b": b}), runs)
    return GemmPeak(n, threads, flop / numpy_s / 1e9, flop / ort_s / 1e9, runs)

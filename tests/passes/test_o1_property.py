"""Property test of the ``O1`` pipeline: on random small graphs of elementwise
and shape ops, the optimized model computes the same outputs as the original in
onnxruntime, keeps the output signature and never has more nodes.

The graphs (2-12 nodes, default opset 13-23 with the IR version onnx pairs
with it, float32 inputs of rank 2-4 whose first dim is static or symbolic)
come from ``tools/graphgen.py``, the generator ``tools/fuzz.py`` runs 1,000+
seeds of: elementwise ops with variable and constant operands (0 and 1
included, constants as initializers or Constant nodes, broadcast and
shape-growing constants), Cast round trips (exact, and lossy through float16
and int32), Transpose pairs, Reshape (with 0 and -1) and back,
Unsqueeze/Squeeze, Concat then Slice, full-range Slice, Shape->Gather->Reshape
chains, constant subgraphs that fold, inference-mode Dropout, exact duplicates
of earlier nodes (CSE), reductions, MatMul/Gemm, Conv (+BatchNormalization,
+Relu), Softmax, decomposed Gelu (and LayerNorm when it fits), shape ops
(Expand, Tile, Pad, Split, Flatten, Gather, ConstantOfShape), sibling
MatMuls/Convs, ops on run-time int64 index and bool mask inputs, and If (on data
or on a shape guard) and Loop whose subgraphs read outer-scope values. Values
not chosen as outputs are dead code. Hypothesis draws every choice, so a
failing graph shrinks.

Both models run with onnxruntime's graph optimizations disabled, so the
comparison sees graphopt's rewrites only. ``GRAPHOPT_PROPERTY_PIPELINE`` (a
pipeline spec) replaces ``O1``, to try a pass on these graphs before it joins O1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
from graphopt.verify import compare_outputs, run_model, signature_differences

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from graphgen import CI_STEPS, build_model, count_nodes  # noqa: E402

MAX_NODES = 12
RTOL, ATOL = 1e-5, 1e-6
PIPELINE = os.environ.get("GRAPHOPT_PROPERTY_PIPELINE", "O1")
OPSETS = tuple(range(13, 24))


class HypothesisDraw:
    """:class:`graphgen.Draw` over hypothesis's ``draw`` (so failures shrink)."""

    def __init__(self, draw):  # noqa: ANN001 - hypothesis's draw function
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return self._draw(st.integers(lo, hi))

    def choice(self, options):  # noqa: ANN001, ANN201
        """One of ``options`` (shrinks toward the first)."""
        return self._draw(st.sampled_from(list(options)))

    def boolean(self) -> bool:
        """True or False."""
        return self._draw(st.booleans())

    def permutation(self, n: int) -> list[int]:
        """A permutation of ``range(n)``."""
        return list(self._draw(st.permutations(range(n))))


@st.composite
def models(draw) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A random small model (``graphgen.build_model``, every step, opsets 13-23)
    and a feed for it."""
    return build_model(HypothesisDraw(draw), opsets=OPSETS, steps=CI_STEPS, max_nodes=MAX_NODES, max_steps=10)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models())
def test_o1_preserves_outputs(case: tuple[onnx.ModelProto, dict[str, np.ndarray]]):
    model, feed = case
    optimized = graphopt.optimize(graphopt.ir.from_proto(model), PIPELINE)
    out = graphopt.ir.to_proto(optimized)

    assert signature_differences(model, out) == []
    assert count_nodes(out.graph) <= count_nodes(model.graph)
    onnx.checker.check_model(out, full_check=True)
    ref = run_model(model, feed, optimization_level="disable")
    got = run_model(out, feed, optimization_level="disable")
    report = compare_outputs(ref, got, rtol=RTOL, atol=ATOL)
    assert report.ok, report.summary() + "\n" + onnx.printer.to_text(model.graph)

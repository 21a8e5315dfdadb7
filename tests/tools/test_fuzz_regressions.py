"""Regressions found by ``tools/fuzz.py``, as constructed models (a seed
names a different graph once the generator grows, so each defect is pinned by
the smallest model that shows it), and the fuzz tool's own contract: a seed
is reproducible, a native crash is one seed's ``crash``, the report counts
every class."""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import fuzz  # noqa: E402
import graphgen  # noqa: E402


def _plain_layernorm(opset: int) -> onnx.ModelProto:
    """(x - mean) / sqrt(var + eps) over the last axis, with no scale or bias
    (the decomposed form fuse-norm turns into LayerNormalization)."""
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")

    def mean(x: str, y: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node("ReduceMean", [x, "axes"], [y], keepdims=1)
        return helper.make_node("ReduceMean", [x], [y], axes=[-1], keepdims=1)

    nodes = [mean("x", "m"), helper.make_node("Sub", ["x", "m"], ["d"]), helper.make_node("Pow", ["d", "two"], ["sq"]),
             mean("sq", "v"), helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              initializer=[axes, eps, two] if opset >= 18 else [eps, two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=graphgen.ir_version_for(opset))


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_fused_layernorm_has_no_empty_bias_input(opset, tmp_path):
    """Fuzz seed 2 (generator of the first commit of tools/fuzz.py): O2 fused a
    LayerNorm without bias into ``LayerNormalization(x, scale, "")``, and
    onnxruntime 1.32 segfaults on that empty input at ORT_ENABLE_ALL (the
    process dies; checked here in a child process so a regression fails the
    test instead of killing pytest)."""
    src = tmp_path / "ln.onnx"
    onnx.save(_plain_layernorm(opset), src)
    out = tmp_path / "ln.opt.onnx"
    graphopt.save(graphopt.optimize(graphopt.load(src), "O2", "ort"), out)
    (ln,) = [n for n in onnx.load(out).graph.node if n.op_type == "LayerNormalization"]
    assert list(ln.input)[1:] != [] and "" not in list(ln.input)
    assert len(ln.input) == 2
    script = textwrap.dedent(f"""
        import numpy as np, onnxruntime as ort
        so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession({str(out)!r}, so, providers=["CPUExecutionProvider"])
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        y = s.run(None, {{"x": x}})[0]
        ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        assert np.allclose(y, ref, atol=1e-5), (y, ref)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _norm_after_reshape(kind: str) -> onnx.ModelProto:
    """A LayerNorm or RMSNorm without scale/bias over t = Reshape(Flatten(x,
    axis=2), [Shape(.)[0], -1]), x: [N, S]: graphopt's IR knows t's last dim
    is 1, onnxruntime's symbolic shapes leave it a symbol."""
    ints = {name: numpy_helper.from_array(np.array(v, np.int64), name)
            for name, v in (("zero", 0), ("axes0", [0]), ("minus1", [-1]))}
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=2), helper.make_node("Shape", ["f"], ["sh"]),
             helper.make_node("Gather", ["sh", "zero"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g", "axes0"], ["u"]),
             helper.make_node("Concat", ["u", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["f", "target"], ["t"])]
    if kind == "layernorm":
        nodes += [helper.make_node("ReduceMean", ["t"], ["m"], axes=[-1], keepdims=1),
                  helper.make_node("Sub", ["t", "m"], ["d"]), helper.make_node("Mul", ["d", "d"], ["sq"]),
                  helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1),
                  helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                  helper.make_node("Div", ["d", "sd"], ["y"])]
    else:
        nodes += [helper.make_node("Pow", ["t", "two"], ["sq"]),
                  helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1),
                  helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
                  helper.make_node("Div", ["t", "sd"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
                              initializer=[*ints.values(), eps, two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("kind,fused", [("layernorm", "LayerNormalization"),
                                        ("rmsnorm", "SimplifiedLayerNormalization")])
def test_norm_fusion_reads_the_static_last_dim_the_check_saw(kind, fused, tmp_path):
    """Fuzz seed 864 (final generator): fuse-norm's check found the last dim
    static (the IR's shape: 1) but its rewrite read onnxruntime's symbolic
    shape (a symbol) and crashed making the ones scale: ``'str' object cannot
    be interpreted as an integer``."""
    from graphopt.verify import compare_outputs, run_model

    model = _norm_after_reshape(kind)
    onnx.save(model, tmp_path / "m.onnx")
    out = graphopt.ir.to_proto(graphopt.optimize(graphopt.load(tmp_path / "m.onnx"), "O2", "ort"))
    assert fused in [n.op_type for n in out.graph.node]
    feed = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    report = compare_outputs(run_model(model, feed, optimization_level="disable"),
                             run_model(out, feed, optimization_level="disable"), rtol=1e-5, atol=1e-5)
    assert report.ok, report.summary()


def test_seed_is_reproducible():
    a, feed_a = fuzz.generate(7)
    b, feed_b = fuzz.generate(7)
    assert a.SerializeToString() == b.SerializeToString()
    assert feed_a.keys() == feed_b.keys() and all(np.array_equal(feed_a[k], feed_b[k]) for k in feed_a)


@pytest.mark.parametrize("seed", [0, 1, 2, 633])
def test_seeds_run_clean(seed):
    """A few seeds through O1 and O2 (ort, onnx), in this process."""
    result = fuzz.run_seed(seed)
    assert result.cls == "ok", result.line() + "\n" + result.detail


def test_native_crash_is_one_seeds_crash(monkeypatch):
    """A segfault in the child (as onnxruntime's was) is reported as a crash of
    that seed, naming the configuration that was running."""

    def segfault(seed, configs, timeout, started=None):  # noqa: ANN001, ANN202
        started("O2:ort")
        faulthandler.disable()  # pytest's handler would print the child's stack into the test output
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(fuzz, "run_seed", segfault)
    result = fuzz.run_isolated(5)
    assert result.cls == "crash"
    assert result.configs == {"O2:ort": ("crash", "the process died (signal 11); run --seed 5 for the native stack")}
    assert result.line().endswith("-- reproduce: python tools/fuzz.py --seed 5")


def test_report_counts_every_class():
    ok = fuzz.Result(0, configs={"O1:ort": ("ok", "")})
    bad = fuzz.Result(3)
    bad.note("O1:ort", "ok", "")
    bad.note("O2:ort", "mismatch", "y: max_abs=1")
    text = fuzz.markdown([ok, bad], "python tools/fuzz.py --count 2", 1.0, ("O1:ort", "O2:ort"))
    assert "| ok | 1 | 2 | 0 |" in text  # the first graph did not run O2:ort
    assert "| mismatch | 1 | 0 | 1 |" in text
    assert "| invalid-generated | 0 | 0 | 0 |" in text
    assert "- seed 3 mismatch (opset 0, 0 nodes) O2:ort: mismatch: y: max_abs=1 -- reproduce: python tools/fuzz.py " \
           "--seed 3" in text

"""``graphopt optimize`` keeps a model's contract and reports its own defects
(issue 20, items 1, 2 and 5), each on a constructed model with the property seen
in the wild:

* declared symbolic output dims that shape inference would sharpen to numbers
  (``Concat461_dim_1`` -> 8, an LSTM state's ``LSTMhn_dim_1`` -> 1) are
  written back as declared, and verification passes;
* an IR-3 model whose initializers are listed among its graph inputs is
  written without them among the inputs (IR >= 4), unless
  ``--keep-initializer-inputs``;
* a pass that breaks SSA is exit 3 with a reproducer, no output and the input
  untouched; under ``--verify-each`` it is rolled back with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import sha256
from graphopt import ir
from graphopt.passmanager import Pass, PassResult, register_pass
from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture


def _dims(path: Path, output: int = 0) -> list[int | str]:
    vi = onnx.load(str(path)).graph.output[output]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


# 1. declared output shapes --------------------------------------------------


def _concat_model(path: Path) -> Path:
    """y = Relu(Concat(x, x, axis=1)) with x: float[batch, 4] and y declared
    float[batch, Concat461_dim_1] (inference knows axis 1 is 8)."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["c"], axis=1), helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "Concat461_dim_1"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _lstm_model(path: Path) -> Path:
    """A streaming LSTM cell: x: float[seq, 1, 3], state inputs h, c: float[1, 1, 4]
    (hidden 4); its state outputs hn/cn are declared float[1, LSTMhn_dim_1, 4] /
    float[1, LSTMcn_dim_1, 4], which inference sharpens to batch 1 (filling in
    the shape of Y, declared as four unnamed dims)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((1, 16, 3)) * 0.3).astype(np.float32), "W")
    r = numpy_helper.from_array((rng.standard_normal((1, 16, 4)) * 0.3).astype(np.float32), "R")
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R", "", "", "h", "c"], ["Y", "hn", "cn"], hidden_size=4)], "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 1, 3]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, 4]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, None, None, None]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, "LSTMhn_dim_1", 4]),
         helper.make_tensor_value_info("cn", TensorProto.FLOAT, [1, "LSTMcn_dim_1", 4])],
        initializer=[w, r])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), path)
    return path


@pytest.mark.parametrize("pipeline", ["O1", "O2"])
def test_declared_symbolic_output_dim_is_kept(tmp_path: Path, capsys, pipeline: str) -> None:
    src = _concat_model(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", pipeline)
    assert code == 0, err
    assert _dims(out) == ["batch", "Concat461_dim_1"]
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    np.testing.assert_array_equal(_run(out, {"x": x})[0], np.maximum(np.concatenate([x, x], axis=1), 0))


@pytest.mark.parametrize("pipeline", ["O1", "O2"])
def test_declared_symbolic_lstm_state_dims_are_kept(tmp_path: Path, capsys, pipeline: str) -> None:
    src = _lstm_model(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", pipeline)
    assert code == 0, err
    assert [_dims(out, i) for i in (1, 2)] == [[1, "LSTMhn_dim_1", 4], [1, "LSTMcn_dim_1", 4]]
    assert _dims(out, 0) in (["", "", "", ""], ["seq", 1, 1, 4])  # unnamed dims promise nothing: inferred ones may stay
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((5, 1, 3)).astype(np.float32), "h": rng.standard_normal((1, 1, 4)).astype(np.float32),
            "c": rng.standard_normal((1, 1, 4)).astype(np.float32)}
    for got, want in zip(_run(out, feed), _run(src, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_internal_values_stay_sharpened(tmp_path: Path) -> None:
    """Only the declared signature is put back: the Concat inside keeps its inferred [batch, 8]."""
    model = ir.load(_concat_model(tmp_path / "in.onnx"))
    from graphopt.passmanager import PassManager

    result = PassManager("infer-shapes").run(model)
    inner = result.model.graph.node(0).outputs[0]
    assert [d if isinstance(d, int) else d.value for d in inner.shape] == ["batch", 8]
    output = result.model.graph.outputs[0]
    assert [d if isinstance(d, int) else d.value for d in output.shape] == ["batch", "Concat461_dim_1"]


# 2. IR 3 with initializers among the graph inputs ---------------------------


def _ir3_cnn(path: Path) -> Path:
    """Conv(3->8, 3x3) + Relu + Conv(8->8, 3x3) + BatchNormalization on
    x: float[1, 3, 16, 16], opset 9, IR 3: the six weights are graph inputs."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.2, "w2": rng.standard_normal((8, 8, 3, 3)) * 0.1,
              "scale": rng.random(8) + 0.5, "bias": rng.standard_normal(8), "mean": rng.standard_normal(8) * 0.1,
              "var": rng.random(8) + 0.5}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c2", "scale", "bias", "mean", "var"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "cnn", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.save(model, path)
    return path


def test_ir3_initializer_inputs_are_dropped(tmp_path: Path, capsys) -> None:
    src = _ir3_cnn(tmp_path / "in.onnx")
    digest = sha256(src)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", "O2")
    assert code == 0, err
    written = onnx.load(str(out))
    assert written.ir_version >= 4
    assert [i.name for i in written.graph.input] == ["x"]
    assert "BatchNormalization" not in [n.op_type for n in written.graph.node]  # graphopt could fold it now
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(out, {"x": x})[0], _run(src, {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert sha256(src) == digest


def test_ir3_initializer_inputs_kept_on_request(tmp_path: Path, capsys) -> None:
    src = _ir3_cnn(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", "O2", "--keep-initializer-inputs")
    assert code == 0, err
    written = onnx.load(str(out))
    assert [i.name for i in written.graph.input] == ["x", "w1", "w2", "scale", "bias", "mean", "var"]
    assert written.ir_version == 4  # opset 9 needs IR 4
    # still overridable: with w1 = 0 both convs give 0 and y is BatchNormalization's shift
    feed = {"x": np.ones((1, 3, 16, 16), np.float32), "w1": np.zeros((8, 3, 3, 3), np.float32)}
    arrays = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    shift = arrays["bias"] - arrays["scale"] * arrays["mean"] / np.sqrt(arrays["var"] + 1e-5)
    np.testing.assert_allclose(_run(out, feed)[0], np.broadcast_to(shift[None, :, None, None], (1, 8, 16, 16)),
                               rtol=1e-5, atol=1e-6)


def test_ir4_initializer_inputs_are_left_alone(tmp_path: Path, capsys) -> None:
    """From IR 4 on an initializer among the inputs is overridable on purpose: kept."""
    src = _ir3_cnn(tmp_path / "in.onnx")
    model = onnx.load(str(src))
    model.ir_version = 4
    onnx.save(model, src)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", "O1")
    assert code == 0, err
    assert len(onnx.load(str(out)).graph.input) == 7


# 5. a pass that breaks the graph --------------------------------------------


@register_pass("test-break-ssa")
class BreakSSA(Pass):
    """Test only: adds ``Identity(x)`` whose output is named like the first
    node's output, so that value has two producers (not SSA)."""

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001
        graph = model.graph
        first = graph.node(0)
        twin = ir.Node("", "Identity", [graph.inputs[0]], outputs=[ir.Value(name=first.outputs[0].name)])
        graph.append(twin)
        return PassResult(modified=True)


def _chain(path: Path) -> Path:
    """x: float[4] -> Relu -> a -> Neg -> y."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_pass_breaking_ssa_is_internal_error_with_reproducer(tmp_path: Path, capsys) -> None:
    src = _chain(tmp_path / "in.onnx")
    digest = sha256(src)
    out = tmp_path / "out.onnx"
    repro = tmp_path / "repro"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", "dce,test-break-ssa,dce",
                           "--reproducer-dir", repro)
    message = flat(err)
    assert code == 3
    assert "pass 'test-break-ssa' broke the graph: the main graph defines value 'a' twice" in message
    assert "(also as an output of node Identity[" in message and "a graph must be in SSA form" in message
    assert "This is a graphopt defect" in message and "reproducer" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "repro"]  # no output, no temp file
    assert sha256(src) == digest
    (folder,) = list(repro.iterdir())
    assert folder.name.startswith("graphopt-crash-test-break-ssa-")
    assert (folder / "pipeline.txt").read_text() == "test-break-ssa\n"
    received = onnx.load(str(folder / "model.onnx"))
    assert [n.op_type for n in received.graph.node] == ["Relu", "Neg"]  # as the pass received it
    assert "broke the graph" in (folder / "README.txt").read_text()


def test_pass_breaking_ssa_is_rolled_back_under_verify_each(tmp_path: Path, capsys) -> None:
    src = _chain(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "optimize", src, "-o", out, "-p", "test-break-ssa,dce", "--verify-each")
    assert code == 0, err
    assert "pass 'test-break-ssa' rolled back: structural check failed" in flat(err)
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    assert [n.op_type for n in written.graph.node] == ["Relu", "Neg"]
    x = np.array([-1, 2, -3, 4], np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x})[0], -np.maximum(x, 0))


@register_pass("test-bad-attribute")
class BadAttribute(Pass):
    """Test only: keeps SSA but gives Relu an attribute it does not have, so
    only onnx.checker at save time sees the damage."""

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001
        model.graph.node(0).attributes["alpha"] = ir.Attr("alpha", ir.AttributeType.FLOAT, 0.1)
        return PassResult(modified=True)


def test_output_failing_the_checker_of_a_valid_input_is_exit_3(tmp_path: Path, capsys) -> None:
    src = _chain(tmp_path / "in.onnx")
    digest = sha256(src)
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, "-q", "optimize", src, "-o", out, "-p", "test-bad-attribute", "--no-verify")
    message = flat(err)
    assert code == 3
    assert "the output model fails onnx.checker" in message and "Unrecognized attribute: alpha" in message
    assert "this is a graphopt defect; nothing was written" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"] and sha256(src) == digest

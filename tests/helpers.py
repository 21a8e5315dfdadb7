"""Helpers shared by the tests: pass results, numerics, and running the CLI."""

from __future__ import annotations

import logging

import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import ir
from graphopt.passmanager import ModelRunner
from graphopt.verify import compare_outputs


def pass_stats(result, name: str) -> dict:  # noqa: ANN001 - a RunResult
    """The stats of the first record of pass ``name`` in a pipeline run."""
    return next(r.stats for r in result.report.records if r.name == name)


def ops(model: ir.Model) -> list[str]:
    """Op types of the main graph in order, Constant nodes left out."""
    return [n.op_type for n in model.graph if n.op_type != "Constant"]


def check_numerics(before: ir.Model, after: ir.Model) -> None:
    """Assert ``after`` matches ``before`` in onnxruntime (rtol 1e-5, atol 1e-6)
    on generated inputs."""
    reference = ModelRunner(seed=0)
    expected = reference.run(before)
    report = compare_outputs(expected, ModelRunner(inputs=reference.inputs).run(after), rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()


def relu_to_neg(model: ir.Model) -> int:
    """Turn every Relu of the main graph into Neg (a deliberately wrong
    rewrite for instrument tests); return how many."""
    count = 0
    for node in model.graph:
        if node.op_type == "Relu":
            node.op_type = "Neg"
            count += 1
    return count


def small_model(nodes, initializers=(), opset: int = 17, outputs=(("y", [4]),)) -> onnx.ModelProto:  # noqa: ANN001
    """A one-input (``x: float[4]``) ModelProto around ``nodes`` (IR 10)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI's main() installs a rich handler on the root logger; put the old
    handlers and levels back. Import it into a test module to use it there."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    onnx_ir_level = logging.getLogger("onnx_ir").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("onnx_ir").setLevel(onnx_ir_level)


def run_cli(capsys, *argv) -> tuple[int, str, str]:  # noqa: ANN001 - pytest's capsys
    """``graphopt.cli.main.main(argv)``: (exit code, stdout, stderr)."""
    from graphopt.cli.main import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flat(text: str) -> str:
    """The console wraps long messages at 80 columns: compare with single spaces."""
    return " ".join(text.split())


def mlp_file(path, d: int, h: int, scales: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)):  # noqa: ANN001, ANN201
    """x ``[batch, 4, d]`` -> MatMul ``d x h`` + bias -> Relu -> MatMul ``h x d`` + bias, saved to ``path``
    (opset 17): an FFN the pruning groups find. Weights w1, b1, w2, b2 from ``default_rng(0)`` times ``scales``."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    shapes = (("w1", (d, h)), ("b1", (h,)), ("w2", (h, d)), ("b2", (d,)))
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
             for (name, shape), scale in zip(shapes, scales)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, d])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def npz_samples(folder, count: int, seed: int, d: int, name: str = "x"):  # noqa: ANN001, ANN201
    """``count`` samples ``{name: float32 [1, 4, d]}`` from ``default_rng(seed)`` as ``sample_NNN.npz`` in a new
    ``folder``."""
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.savez(folder / f"sample_{i:03d}.npz", **{name: rng.standard_normal((1, 4, d)).astype(np.float32)})
    return folder

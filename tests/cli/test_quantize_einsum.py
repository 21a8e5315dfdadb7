"""``graphopt quantize --target ort`` on a jax2tf-style classifier whose Dense
layers are ``Einsum`` (issue 20, item 8): O1's ``canonicalize-einsum`` makes
them MatMuls, so they quantize; the written model loads in onnxruntime; an
Einsum that is not a matrix product stays float; and an output that fails
onnx.checker or onnxruntime is a graphopt defect (exit 3, reproducer folder),
never written and never reported as bad input (exit 2)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture
from graphopt.passes.quantization import insert

WIDTHS = (64, 128, 128, 64)
"""Every kernel has at least 4096 elements (qdq's min-gemm): all three layers quantize."""


def dense_einsum_classifier(path: Path, equation: str = "bsi,io->bso", last: str | None = None) -> Path:
    """Three Dense layers as jax2tf writes them: ``Einsum(x, kernel)`` + bias ``Add``, Relu between, float32,
    opset 13, node names ``jax2tf_infer_fn_/Dense_N/Einsum``. ``equation`` picks the layout (``...,oi->...``:
    the kernel stored [out, in]); ``last`` replaces the last layer's equation (a non-MatMul Einsum)."""
    rng = np.random.default_rng(0)
    transposed = equation.split(",")[1].split("->")[0] == "oi"
    rank = len(equation.split(",")[0].replace("...", "b"))
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        w = (rng.standard_normal((n, k) if transposed else (k, n)) / np.sqrt(k)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"Dense_{i}/kernel"),
                  numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float32), f"Dense_{i}/bias")]
        eq = last if (last and i == len(WIDTHS) - 2) else equation
        nodes.append(helper.make_node("Einsum", [x, f"Dense_{i}/kernel"], [f"e{i}"],
                                      name=f"jax2tf_infer_fn_/Dense_{i}/Einsum", equation=eq))
        if eq != equation:
            x = f"e{i}"
            break
        nodes.append(helper.make_node("Add", [f"e{i}", f"Dense_{i}/bias"], [f"a{i}"], name=f"Dense_{i}/add"))
        if i < len(WIDTHS) - 2:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"Dense_{i}/relu"))
        x = f"r{i}" if i < len(WIDTHS) - 2 else f"a{i}"
    nodes.append(helper.make_node("Identity", [x], ["logits"], name="output"))
    dims = ["batch", 6, WIDTHS[0]][-rank:]
    out_dims = ["batch", WIDTHS[-1], 6] if last else dims[:-1] + [WIDTHS[-1]]
    graph = helper.make_graph(nodes, "jax2tf_classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                              producer_name="tf2onnx")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _quantize(capsys, src: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "quantize", src, "-o", out, "--calib", "generate", "--calib-count", "4",
                   "--target", "ort", *extra)


def test_einsum_dense_layers_quantize_and_load(tmp_path, capsys):
    src = dense_einsum_classifier(tmp_path / "clf.onnx")
    out = tmp_path / "int8.onnx"
    code, stdout, stderr = _quantize(capsys, src, out)
    assert code == 0, stdout + stderr
    assert "3 quantized layers" in flat(stdout)
    ops = _ops(out)
    assert ops["Einsum"] == 0 and ops["MatMul"] == 0
    assert ops["MatMulIntegerToFloat"] == 3 and ops["QuantizeLinear"] == 3  # the bias Adds went into the kernel
    model = onnx.load(out)
    assert {o.domain: o.version for o in model.opset_import}["com.microsoft"] == 1
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 6, 64)).astype(np.float32)
    reference = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = session.run(None, {"x": x})[0]
    assert got.shape == (2, 6, 64)
    cosine = float(np.dot(got.ravel(), reference.ravel()) / np.linalg.norm(got) / np.linalg.norm(reference))
    assert cosine > 0.999


def test_transposed_kernel_einsum_quantizes_as_matmul(tmp_path, capsys):
    """'bi,oi->bo' (kernel stored [out, in]): MatMul by the folded transposed kernel, Gemm with the bias after O1,
    which qdq (target ort) turns back into MatMul + Add so that each layer becomes MatMulIntegerToFloat (its bias
    inside) rather than a float Gemm behind DequantizeLinear."""
    src = dense_einsum_classifier(tmp_path / "clf.onnx", "bi,oi->bo")
    out = tmp_path / "int8.onnx"
    code, stdout, stderr = _quantize(capsys, src, out)
    assert code == 0, stdout + stderr
    assert "3 quantized layers" in flat(stdout)
    ops = _ops(out)
    assert ops["Einsum"] == 0 and ops["Transpose"] == 0
    assert (ops["Gemm"], ops["DequantizeLinear"], ops["QuantizeLinear"], ops["MatMulIntegerToFloat"]) == (0, 0, 3, 3)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_non_matmul_einsum_stays_float(tmp_path, capsys):
    """A permuted output ('bsi,io->bos') is not a matrix product: it stays an Einsum, unquantized, and the
    model still loads; the two Dense layers before it quantize."""
    src = dense_einsum_classifier(tmp_path / "clf.onnx", last="bsi,io->bos")
    out = tmp_path / "int8.onnx"
    code, stdout, stderr = _quantize(capsys, src, out)
    assert code == 0, stdout + stderr
    ops = _ops(out)
    assert ops["Einsum"] == 1 and ops["MatMulIntegerToFloat"] == 2
    einsum = next(n for n in onnx.load(out).graph.node if n.op_type == "Einsum")
    assert einsum.name == "jax2tf_infer_fn_/Dense_2/Einsum"
    assert all(not name.startswith("Dense_2/kernel_quantized") for name in
               (i.name for i in onnx.load(out).graph.initializer))
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def _break_after(monkeypatch, damage) -> None:  # noqa: ANN001 - a callable on (model, node)
    """Inject a defect into the INT8 insertion: after each MatMulIntegerToFloat is built, ``damage`` edits it."""
    original = insert._matmul_integer_to_float

    def broken(b, model, matmul, q, w_dq, result):  # noqa: ANN001
        original(b, model, matmul, q, w_dq, result)
        damage(model, b.new_nodes[-1])

    monkeypatch.setattr(insert, "_matmul_integer_to_float", broken)


def test_output_failing_the_checker_is_a_defect_exit_3(tmp_path, capsys, monkeypatch):
    """The original defect, injected: MatMulIntegerToFloat without the com.microsoft opset import."""
    _break_after(monkeypatch, lambda model, node: model.opset_imports.pop("com.microsoft", None))
    src = dense_einsum_classifier(tmp_path / "clf.onnx")
    out = tmp_path / "int8.onnx"
    code, stdout, stderr = _quantize(capsys, src, out, "--reproducer-dir", tmp_path / "repro")
    text = flat(stdout + stderr)
    assert code == 3, text
    assert "the quantized model fails onnx.checker (No opset import for domain 'com.microsoft')" in text
    assert "this is a graphopt defect, nothing was written" in text
    assert not out.exists()
    (folder,) = (tmp_path / "repro").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "pipeline.txt", "rejected.onnx"]
    assert f"graphopt quantize {src}" in (folder / "README.txt").read_text()


def test_output_onnxruntime_refuses_is_a_defect_exit_3(tmp_path, capsys, monkeypatch):
    """A contrib op onnxruntime does not have passes onnx.checker (unknown domain) but not onnxruntime."""
    def rename(model, node):  # noqa: ANN001
        node.op_type = "MatMulIntegerToFloatTypo"

    _break_after(monkeypatch, rename)
    src = dense_einsum_classifier(tmp_path / "clf.onnx")
    out = tmp_path / "int8.onnx"
    code, stdout, stderr = _quantize(capsys, src, out, "--reproducer-dir", tmp_path / "repro")
    text = flat(stdout + stderr)
    assert code == 3, text
    assert "onnxruntime refuses the quantized model" in text and "MatMulIntegerToFloatTypo" in text
    assert not out.exists()
    (folder,) = (tmp_path / "repro").iterdir()
    assert (folder / "rejected.onnx").stat().st_size > 0

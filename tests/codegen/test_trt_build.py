"""Engines built on the CPU with TensorRT for RTX: every model in models/
and each of its ``--target tensorrt`` O2 outputs (with and without
``--opset 23``) parses without errors and builds a non-empty engine whose
sidecar records the profile; the timing cache is read back by a second
build; failed builds leave nothing behind and name the failing nodes."""

from __future__ import annotations

import json

import onnx
import pytest

from conftest import sha256
from graphopt.codegen.tensorrt import BuildOptions, build_engine, check, make_profile, parse_shapes
from graphopt.errors import CodegenError, InputError
from trt_helpers import (  # noqa: F401
    CORPUS, VARIANT_IDS, VARIANTS, _restore_logging, needs_rtx, sidecar, tensorrt_o2, unsupported_model,
)

pytestmark = needs_rtx


def assert_built(model, engine, info):  # noqa: ANN001
    assert engine.stat().st_size == info["engine_bytes"] > 100_000  # tiny models: 2.5-10 MB engines
    assert sidecar(engine) == json.loads(json.dumps(info))
    expected = make_profile(onnx.load(str(model), load_external_data=False)).to_dict()
    assert info["profiles"] == [expected]
    assert info["flavour"] == "tensorrt-rtx" and info["tensorrt_version"].startswith("1.")
    assert info["source_model"]["sha256"] == sha256(model)
    assert info["precision"]["mode"] == "strongly-typed" and info["precision"]["types"] == ["float32"]


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_engine_for_every_committed_model(path, tmp_path):
    before = sha256(path)
    build = build_engine(path, tmp_path / "m.engine")
    assert_built(path, build.engine, build.info)
    assert sha256(path) == before
    assert check(path).ok


@pytest.mark.parametrize(("path", "opset"), VARIANTS, ids=VARIANT_IDS)
def test_engine_for_every_target_tensorrt_output(path, opset, tmp_path):
    model = tensorrt_o2(path, opset)
    report = check(model)
    assert report.ok and report.checker.startswith("tensorrt-rtx") and report.table_issues == []
    build = build_engine(model, tmp_path / "o2.engine")
    assert_built(model, build.engine, build.info)
    ops = {n.op_type for n in onnx.load(str(model), load_external_data=False).graph.node}
    assert build.info["attention_decomposable"] == (2 if "Attention" in ops else 0)


def test_timing_cache_written_then_reused(tmp_path):
    model = tensorrt_o2(CORPUS[0], 23)
    cache = tmp_path / "timing.cache"
    first = build_engine(model, tmp_path / "a.engine", BuildOptions(timing_cache=cache)).info["timing_cache"]
    assert cache.is_file() and cache.stat().st_size == first["written_bytes"] > 0
    assert (first["loaded_bytes"], first["reused"], first["effective"]) == (0, False, False)
    second = build_engine(model, tmp_path / "b.engine", BuildOptions(timing_cache=cache)).info["timing_cache"]
    assert (second["loaded_bytes"], second["reused"]) == (first["written_bytes"], True)
    assert "no-ops" in second["note"]
    assert sidecar(tmp_path / "b.engine")["timing_cache"] == second


def test_options_recorded_in_sidecar(tmp_path):
    model = CORPUS[0]
    options = BuildOptions(shapes=parse_shapes(["input_ids=1x4:2x16:4x32"]), workspace_mib=256,
                           compute_capabilities=["sm86", "SM89"])
    info = build_engine(model, tmp_path / "m.engine", options).info
    assert info["profiles"][0]["attention_mask"] == {"min": [1, 4], "opt": [2, 16], "max": [4, 32],
                                                     "origin": "derived"}
    assert info["workspace_mib"] == 256 and info["precision"]["compute_capabilities"] == ["SM86", "SM89"]
    assert info["timing_cache"] is None and info["build_seconds"] > 0


def test_rtx_refuses_precision_flags_and_unknown_compute_capability(tmp_path):
    with pytest.raises(InputError, match="strongly typed networks only"):
        build_engine(CORPUS[0], tmp_path / "m.engine", BuildOptions(fp16=True))
    with pytest.raises(InputError, match="unknown compute capability SM90"):
        build_engine(CORPUS[0], tmp_path / "m.engine", BuildOptions(compute_capabilities=["SM90"]))
    assert list(tmp_path.iterdir()) == []


def test_parser_rejection_names_every_failing_node_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_model(), path)
    engine = tmp_path / "bad.engine"
    engine.write_bytes(b"old engine")
    with pytest.raises(CodegenError) as e:
        build_engine(path, engine)
    message = str(e.value)
    assert "node 'uniq0' (Unique): Unique is unsupported" in message
    assert "node 'msgelu' (com.microsoft::Gelu): operator of domain 'com.microsoft'" in message
    assert "relu0" not in message
    assert engine.read_bytes() == b"old engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.engine", "bad.onnx"]


def test_parser_check_names_the_nodes(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(unsupported_model(), path)
    report = check(path)
    assert [(i.node, i.source) for i in report.issues] == [("uniq0", "parser"), ("msgelu", "parser")]
    assert "UNSUPPORTED_NODE" in report.issues[0].reason
    table = check(path, backend=None)
    assert table.checker == "operators.md (TensorRT 10.15)" and [i.node for i in table.issues] == ["uniq0", "msgelu"]


def test_builder_failure_quotes_tensorrt(tmp_path):
    """Without decomposable attention, FP32 Attention with 16-wide heads has
    no fused kernel: the build fails with TensorRT's reason, nothing written."""
    model = tensorrt_o2(CORPUS[0], 23)
    with pytest.raises(CodegenError, match="Attention operation was not supported by a dedicated kernel"):
        build_engine(model, tmp_path / "m.engine", BuildOptions(decompose_attention=False))
    assert list(tmp_path.iterdir()) == []


def test_engine_path_over_the_model_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(CORPUS[0].read_bytes())
    with pytest.raises(InputError, match="would overwrite the input model"):
        build_engine(path, path)
    with pytest.raises(InputError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.engine")


def _qdq_model(zero_point: onnx.TensorProto) -> onnx.ModelProto:
    """``x: float[batch, 8]`` -> Q/DQ (per-tensor, scale 0.05) -> MatMul(W: 8x4)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.float32(0.05), "scale"), zero_point,
             numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4) / 32, "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize(("elem_type", "kind"), [(onnx.TensorProto.INT8, "int8"),
                                                 (onnx.TensorProto.FLOAT8E4M3FN, "fp8")])
def test_explicit_qdq_builds_strongly_typed(elem_type, kind, tmp_path):
    """INT8 / FP8 through the model's own Q/DQ nodes: no flags in TensorRT for RTX."""
    path = _write(tmp_path, _qdq_model(onnx.helper.make_tensor("zp", elem_type, [], [0])))
    info = build_engine(path, tmp_path / "qdq.engine").info
    assert info["precision"]["quantized"] == [kind] and info["precision"]["flags"] == []
    assert info["profiles"][0]["x"] == {"min": [1, 8], "opt": [1, 8], "max": [8, 8], "origin": "derived"}


def test_asymmetric_qdq_is_rejected_by_the_table(tmp_path):
    import numpy as np
    from onnx import numpy_helper

    issues = check(_write(tmp_path, _qdq_model(numpy_helper.from_array(np.int8(3), "zp"))), backend=None).issues
    assert [(i.node, i.reason) for i in issues] == [("q", "y_zero_point must be zero (symmetric quantization only)"),
                                                    ("dq", "x_zero_point must be zero (symmetric quantization only)")]


def _write(folder, model):  # noqa: ANN001, ANN202
    path = folder / "m.onnx"
    onnx.save(model, path)
    return path

"""Tests of the ``cse`` pass beyond the golden cases: lazy reading of external
weights, hash-collision guard, graph outputs, stats, and numerics on the corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.passes.cleanup import cse
from graphopt.passmanager import PassContext, PassManager
from graphopt.verify import compare

MODELS = Path(__file__).resolve().parents[2] / "models"


def run(model: ir.Model, pipeline: str = "cse"):
    return PassManager(pipeline, PassContext()).run(model)


def stats(result, name: str = "cse") -> dict:
    return next(r.stats for r in result.report.records if r.name == name)


def _weights_model(tmp_path: Path, weights: dict[str, np.ndarray], graph_inputs: tuple[str, ...] = ()) -> Path:
    """x[4] -> Add(x, sum over MatMul(x, w)) for each weight, saved with external data."""
    nodes, inits, last = [], [], "x"
    for i, (name, array) in enumerate(weights.items()):
        inits.append(numpy_helper.from_array(array, name))
        nodes.append(helper.make_node("MatMul", ["x", name], [f"m{i}"]))
        nodes.append(helper.make_node("ReduceSum", [f"m{i}"], [f"r{i}"], keepdims=1))
        nodes.append(helper.make_node("Add", [last, f"r{i}"], [f"s{i}"]))
        last = f"s{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(weights[n].shape)) for n in graph_inputs]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    return path


def test_duplicate_external_weights_merge_and_unique_shapes_are_never_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    same = rng.standard_normal((64, 64)).astype(np.float32)
    weights = {
        "a": same, "b": same.copy(),                                      # equal: merge
        "c": rng.standard_normal((64, 64)).astype(np.float32),           # same shape, differs
        "u": rng.standard_normal((64, 32)).astype(np.float32),           # unique shape: never read
        "v": rng.standard_normal((64, 16)).astype(np.float32),           # unique shape: never read
    }
    path = _weights_model(tmp_path, weights)
    model = ir.load(path)
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    read: list[str] = []
    original = cse._chunks

    def spy(tensor, limit=None):
        read.append(tensor.name)
        return original(tensor, limit)

    monkeypatch.setattr(cse, "_chunks", spy)
    result = run(model, "cse,dce")
    assert stats(result) == {"nodes": 2, "initializers": 1}  # MatMul and ReduceSum merge; the Adds differ
    assert "u" not in read and "v" not in read
    assert sorted(result.model.graph.initializers) == ["a", "c", "u", "v"]
    report = compare(onnx.load(str(path)), ir.to_proto(result.model), rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()


def test_initializer_that_is_a_graph_input_is_never_merged(tmp_path):
    same = np.ones((64, 8), np.float32)
    path = _weights_model(tmp_path, {"a": same, "b": same.copy()}, graph_inputs=("b",))
    result = run(ir.load(path))
    assert stats(result)["initializers"] == 0
    assert set(result.model.graph.initializers) == {"a", "b"}


def test_equal_digest_but_different_bytes_is_not_merged(monkeypatch):
    """The byte comparison after the hash guards against a collision."""
    monkeypatch.setattr(cse, "_digest", lambda tensor, limit=None: b"same")
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) <float[4] w1 = {1.0, 2.0, 3.0, 4.0}, float[4] w2 = {1.0, 2.0, 3.0, 5.0}> {
          a = Add(x, w1)
          b = Add(x, w2)
          y = Mul(a, b)
        }""")
    result = run(model)
    assert stats(result) == {"nodes": 0, "initializers": 0}
    assert not result.report.records[-1].modified


def test_large_constants_compare_by_content():
    big = np.arange(200, dtype=np.float32)  # 800 bytes: keyed by SHA-256, then compared byte by byte
    other = big.copy()
    other[-1] = -1
    nodes = [helper.make_node("Constant", [], [f"c{i}"], value=numpy_helper.from_array(arr))
             for i, arr in enumerate([big, big.copy(), other])]
    nodes += [helper.make_node("Add", ["x", f"c{i}"], [f"a{i}"]) for i in range(3)]
    nodes += [helper.make_node("Sum", ["a0", "a1", "a2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [200])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [200])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    result = run(ir.from_proto(proto), "cse,dce")
    assert stats(result)["nodes"] == 2  # one Constant and its Add
    ops = [n.op_type for n in result.model.graph]
    assert ops.count("Constant") == 2 and ops.count("Add") == 2
    assert compare(proto, ir.to_proto(result.model), rtol=1e-5, atol=1e-6).ok


def test_multi_output_node_with_one_graph_output_each_stays_but_readers_move():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17]>
        g (float[4, 6] x) => (float[4, 3] p, float[4, 3] q, float[4, 3] y) {
          p, a = Split <axis = 1, num_outputs = 2> (x)
          q, b = Split <axis = 1, num_outputs = 2> (x)
          y = Add(a, b)
        }""")
    result = run(model, "cse,dce")
    assert stats(result)["nodes"] == 0  # both first outputs are graph outputs: both Splits stay
    add = next(n for n in result.model.graph if n.op_type == "Add")
    assert add.inputs[0] is add.inputs[1]  # the second Split's readers read the first's value
    assert [v.name for v in result.model.graph.outputs] == ["p", "q", "y"]


def test_options_turn_parts_off():
    text = """<ir_version: 10, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) <float[4] w1 = {1.0, 2.0, 3.0, 4.0}, float[4] w2 = {1.0, 2.0, 3.0, 4.0}> {
          a = Relu(x)
          b = Relu(x)
          c = Add(a, w1)
          d = Add(b, w2)
          y = Mul(c, d)
        }"""
    assert stats(run(ir.from_text(text), "cse{initializers=false}")) == {"nodes": 1, "initializers": 0}
    assert stats(run(ir.from_text(text), "cse{nodes=false}")) == {"nodes": 0, "initializers": 1}
    assert stats(run(ir.from_text(text))) == {"nodes": 2, "initializers": 1}


def test_non_deterministic_function_is_not_merged():
    model = ir.from_text("""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[4] x) => (float[4] y) {
          a = local.Noise(x)
          b = local.Noise(x)
          y = Add(a, b)
        }
        <domain: "local", opset_import: ["" : 17]>
        Noise (u) => (v) {
          r = RandomUniformLike(u)
          v = Add(u, r)
        }""")
    assert stats(run(model))["nodes"] == 0


@pytest.mark.parametrize("name", ["bert_tiny_ts", "gpt2_tiny_dynamo", "llama_gqa_tiny_ts", "vit_tiny_dynamo"])
def test_corpus_numerics_and_idempotence(name):
    path = MODELS / f"{name}.onnx"
    result = run(ir.load(path), "cse,dce")
    text = ir.to_text(result.model)
    again = run(result.model, "cse,dce")
    assert ir.to_text(again.model) == text
    assert stats(again)["nodes"] == 0 and stats(again)["initializers"] == 0
    report = compare(str(path), ir.to_proto(result.model), rtol=1e-5, atol=1e-6)
    assert report.ok, report.summary()


def test_equal_prefix_then_full_hash_decides():
    """Weights equal in their first 64 KiB are hashed in full: equal ones merge, a late difference keeps them apart."""
    base = np.zeros(40000, np.float32)  # 160 KiB
    late = base.copy()
    late[-1] = 1.0
    inits = [numpy_helper.from_array(a, n) for a, n in [(base, "w0"), (base.copy(), "w1"), (late, "w2")]]
    nodes = [helper.make_node("Add", ["x", f"w{i}"], [f"a{i}"]) for i in range(3)]
    nodes.append(helper.make_node("Sum", ["a0", "a1", "a2"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [40000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [40000])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    result = run(ir.from_proto(proto), "cse,dce")
    assert stats(result) == {"nodes": 1, "initializers": 1}
    assert sorted(result.model.graph.initializers) == ["w0", "w2"]
    assert compare(proto, ir.to_proto(result.model), rtol=1e-5, atol=1e-6).ok


def test_scan_body_is_value_numbered_and_int_attributes_are_not_bodies():
    """Regression (issue 20, backend node cases test_scan*_sum): Scan carries
    an int attribute (num_scan_inputs) beside its body; cse iterated every
    attribute of a node with a subgraph and crashed with "'int' object is not
    iterable". The body is still value-numbered: its two equal Adds merge."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "e"], ["t1"]), helper.make_node("Add", ["s", "e"], ["t2"]),
         helper.make_node("Mul", ["t1", "t2"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["o"])],
        "body",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])])
    scan = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [scan], "g",
        [helper.make_tensor_value_info("init", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("final", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    result = run(ir.from_proto(proto), "cse,dce")
    assert stats(result) == {"nodes": 1, "initializers": 0}
    new_body = next(iter(result.model.graph)).attributes["body"].value
    assert [n.op_type for n in new_body] == ["Add", "Mul", "Identity"]
    inputs = {"init": np.array([0.5, -1.0], np.float32), "xs": np.arange(6, dtype=np.float32).reshape(3, 2)}
    assert compare(proto, ir.to_proto(result.model), inputs=inputs, rtol=0, atol=0).ok

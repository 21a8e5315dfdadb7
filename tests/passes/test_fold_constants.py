"""fold-constants: exact values, dtypes, opset forms, the size cap, subgraphs,
functions, batching and the signature."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.reference
import pytest

from graphopt import ir
from graphopt.passes.folding import evaluate
from graphopt.passes.folding.constants import FoldConstants, FoldConstantsOptions
from graphopt.passmanager import PassContext, PassManager

HEAD = '<ir_version: 10, opset_import: ["" : {opset}]>'


def fold(text: str, opset: int = 17, spec: str = "fold-constants,dce") -> ir.Model:
    model = ir.from_text(HEAD.format(opset=opset) + text)
    return PassManager(spec, PassContext()).run(model).model


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


def output_const(model: ir.Model, index: int = 0) -> np.ndarray:
    """The folded value feeding graph output ``index`` through the one Add with x."""
    value = model.graph.outputs[index]
    if value.is_initializer():
        return value.const_value.numpy()
    add = value.producer()
    return ir.const_array(add.inputs[1])


def test_arith_chain_is_exact_and_keeps_float32():
    m = fold("""g (float[3] x) => (float[3] y) {
      a = Constant<value = float[3] {1.5, -2.0, 4.0}>()
      b = Constant<value_float = 3.0>()
      c = Mul(a, b)
      ab = Abs(c)
      d = Sqrt(ab)
      e = Div(c, d)
      y = Add(x, e)
    }""")
    assert ops(m) == ["Add"]
    got = output_const(m)
    c = np.array([1.5, -2.0, 4.0], np.float32) * np.float32(3.0)
    np.testing.assert_array_equal(got, c / np.sqrt(np.abs(c)))
    assert got.dtype == np.float32


def test_integer_div_truncates_toward_zero_and_mod_follows_divisor():
    m = fold("""g (int64[4] x) => (int64[4] y, int64[4] z) {
      a = Constant<value = int64[4] {7, -7, 7, -7}>()
      b = Constant<value = int64[4] {2, 2, -2, -2}>()
      q = Div(a, b)
      r = Mod(a, b)
      y = Add(x, q)
      z = Add(x, r)
    }""")
    np.testing.assert_array_equal(output_const(m, 0), [3, -3, -3, 3])
    np.testing.assert_array_equal(output_const(m, 1), [1, 1, -1, -1])


def test_pow_keeps_base_dtype():
    m = fold("""g (float[2] x) => (float[2] y) {
      a = Constant<value = float[2] {2.0, 3.0}>()
      e = Constant<value = int64[1] {2}>()
      p = Pow(a, e)
      y = Add(x, p)
    }""")
    got = output_const(m)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [4.0, 9.0])


@pytest.mark.parametrize("opset, squeeze, unsqueeze", [
    (11, "s = Squeeze<axes = [0]>(a)", "u = Unsqueeze<axes = [1]>(s)"),
    (13, "s = Squeeze(a, ax0)", "u = Unsqueeze(s, ax1)"),
])
def test_squeeze_unsqueeze_axes_per_opset(opset, squeeze, unsqueeze):
    m = fold(f"""g (float[3, 1] x) => (float[3, 1] y) {{
      a = Constant<value = float[1, 3] {{1.0, 2.0, 3.0}}>()
      ax0 = Constant<value = int64[1] {{0}}>()
      ax1 = Constant<value = int64[1] {{1}}>()
      {squeeze}
      {unsqueeze}
      y = Add(x, u)
    }}""", opset=opset)
    assert ops(m) == ["Add"]
    got = output_const(m)
    assert got.shape == (3, 1)
    np.testing.assert_array_equal(got.reshape(-1), [1.0, 2.0, 3.0])


def test_slice_attribute_form_before_opset_10_and_negative_steps():
    m9 = fold("""g (float[2] x) => (float[2] y) {
      a = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
      s = Slice<starts = [1], ends = [3]>(a)
      y = Add(x, s)
    }""", opset=9)
    np.testing.assert_array_equal(output_const(m9), [2.0, 3.0])
    m17 = fold("""g (float[4] x) => (float[4] y) {
      a = Constant<value = float[4] {1.0, 2.0, 3.0, 4.0}>()
      st = Constant<value = int64[1] {-1}>()
      en = Constant<value = int64[1] {-9223372036854775807}>()
      ax = Constant<value = int64[1] {0}>()
      sp = Constant<value = int64[1] {-1}>()
      s = Slice(a, st, en, ax, sp)
      y = Add(x, s)
    }""")
    np.testing.assert_array_equal(output_const(m17), [4.0, 3.0, 2.0, 1.0])


def test_shape_gather_concat_reshape_of_constants():
    m = fold("""g (float[2, 6] x) => (float[2, 6] y) {
      w = Constant<value = float[3, 4] {0,1,2,3,4,5,6,7,8,9,10,11}>()
      s = Shape(w)
      i = Constant<value = int64 {0}>()
      d = Gather(s, i)
      two = Constant<value = int64[1] {2}>()
      du = Unsqueeze(d, zero)
      zero = Constant<value = int64[1] {0}>()
      t = Constant<value = int64[1] {-1}>()
      shape = Concat<axis = 0>(two, t)
      r = Reshape(w, shape)
      y = Add(x, r)
    }""".replace("      du = Unsqueeze(d, zero)\n", ""))
    assert ops(m) == ["Add"]
    np.testing.assert_array_equal(output_const(m), np.arange(12, dtype=np.float32).reshape(2, 6))


def test_constant_nodes_become_initializers_keeping_names():
    m = fold("""g (float[2] x) => (float[2] y) {
      c = Constant<value = float[2] {1.0, 2.0}>()
      y = Add(x, c)
    }""", spec="fold-constants")
    assert ops(m) == ["Add"]
    assert list(m.graph.initializers) == ["c"]


def test_equal_constant_nodes_become_one_initializer():
    m = fold("""g (float[2] x) => (float[2] y, float[2] c3) {
      c1 = Constant<value = float[2] {1.0, 2.0}>()
      a = Add(x, c1)
      c2 = Constant<value = float[2] {1.0, 2.0}>()
      b = Mul(a, c2)
      e = Constant<value = float[2] {1.0, 3.0}>()
      c3 = Constant<value = float[2] {1.0, 2.0}>()
      y = Sub(b, e)
    }""", spec="fold-constants")
    assert ops(m) == ["Add", "Mul", "Sub"]
    # c2 is c1's (same dtype, shape and bytes); e differs; c3 is a graph output
    assert list(m.graph.initializers) == ["c1", "e", "c3"]
    add, mul, _ = m.graph
    assert mul.inputs[1] is add.inputs[1]
    assert m.graph.outputs[1].name == "c3" and m.graph.outputs[1].is_initializer()


def test_constant_graph_output_keeps_name_and_declared_shape():
    m = fold("""g (float[2] x) => (float[2] y, int64[2] s) {
      y = Relu(x)
      a = Constant<value = float[2, 3] {1,2,3,4,5,6}>()
      s = Shape(a)
    }""")
    out = m.graph.outputs[1]
    assert out.name == "s" and out.is_initializer()
    np.testing.assert_array_equal(out.const_value.numpy(), [2, 3])
    assert ops(m) == ["Relu"]


def test_three_gigabyte_constant_of_shape_is_not_folded():
    # 768M float32 elements = 3 GiB: refused from the shape input, before allocating.
    m = fold("""g (float[1] x) => (float[1] y) {
      shape = Constant<value = int64[2] {805306368, 1}>()
      big = ConstantOfShape<value = float[1] {1.0}>(shape)
      r = ReduceSum<keepdims = 0>(big)
      y = Add(x, r)
    }""")
    assert "ConstantOfShape" in ops(m)
    sizes = [int(np.prod(v.const_value.shape.numpy())) for v in m.graph.initializers.values()]
    assert max(sizes) <= 2


def test_cap_option_keeps_model_size():
    text = """g (float[1] x) => (float[1024, 1024] y) {
      shape = Constant<value = int64[2] {1024, 1024}>()
      big = ConstantOfShape<value = float[1] {0.5}>(shape)
      y = Add(x, big)
    }"""
    capped = ir.from_text(HEAD.format(opset=17) + text)
    stats = FoldConstants(FoldConstantsOptions(max_output_mb=1.0, max_growth=math.inf)).run(capped, PassContext()).stats
    assert "ConstantOfShape" in ops(capped)  # 4 MiB > 1 MiB and > 16 input bytes
    assert (stats["skipped_size"], stats["skipped_growth"]) == (1, 0)
    folded = ir.from_text(HEAD.format(opset=17) + text)
    FoldConstants(FoldConstantsOptions(max_growth=math.inf)).run(folded, PassContext())
    assert "ConstantOfShape" not in ops(folded)
    assert folded.graph.node(0).inputs[1].const_value.numpy().shape == (1024, 1024)


def test_growth_rule_keeps_constant_of_shape_weights_by_default():
    """The 4 MiB ConstantOfShape is 262144 times its 16-byte shape input: by default (max-growth=1) it stays."""
    text = """g (float[1] x) => (float[1024, 1024] y) {
      shape = Constant<value = int64[2] {1024, 1024}>()
      big = ConstantOfShape<value = float[1] {0.5}>(shape)
      y = Add(x, big)
    }"""
    model = ir.from_text(HEAD.format(opset=17) + text)
    stats = FoldConstants().run(model, PassContext()).stats
    assert ops(model) == ["ConstantOfShape", "Add"]
    assert (stats["folded"], stats["skipped_size"], stats["skipped_growth"]) == (0, 0, 1)


def test_non_growing_fold_is_not_capped():
    model = ir.from_text(HEAD.format(opset=17) + """g (float[4, 2] x) => (float[4, 2] y)
      <float[2, 4] w = {1,2,3,4,5,6,7,8}> {
      t = Transpose(w)
      y = Add(x, t)
    }""")
    result = FoldConstants(FoldConstantsOptions(max_output_mb=0.0)).run(model, PassContext())
    assert result.modified and "Transpose" not in ops(model)


def test_one_dynamic_input_changes_nothing():
    model = ir.from_text(HEAD.format(opset=17) + """g (float[2] x) => (float[2] y)
      <float[2] w = {1.0, 2.0}> {
      y = Add(x, w)
    }""")
    before = ir.to_text(model)
    result = FoldConstants().run(model, PassContext())
    assert not result.modified and ir.to_text(model) == before


def test_random_ops_are_never_folded():
    m = fold("""g (float[2] x) => (float[2] y) {
      r = RandomUniform<shape = [2], dtype = 1>()
      y = Add(x, r)
    }""")
    assert "RandomUniform" in ops(m)


def test_ops_without_kernel_run_in_one_batch(monkeypatch):
    calls = []
    real = evaluate._run_ort
    monkeypatch.setattr(evaluate, "_run_ort", lambda model: calls.append(len(model.graph.node)) or real(model))
    m = fold("""g (float[3] x) => (float[3] y) {
      a = Constant<value = float[3] {0.5, 1.0, -2.0}>()
      e1 = Erf(a)
      s1 = Softmax(e1)
      m1 = Mul(s1, a)
      e2 = Erf(m1)
      y = Add(x, e2)
    }""")
    assert ops(m) == ["Add"]
    assert calls == [4]  # Erf, Softmax, Mul (waits on the batch) and Erf: one session
    ref = onnx.reference.ReferenceEvaluator(onnx.parser.parse_model(HEAD.format(opset=17) + """
      g () => (float[3] y) {
        a = Constant<value = float[3] {0.5, 1.0, -2.0}>()
        e1 = Erf(a)
        s1 = Softmax(e1)
        m1 = Mul(s1, a)
        y = Erf(m1)
      }"""))
    np.testing.assert_allclose(output_const(m), ref.run(None, {})[0], rtol=1e-6)


def test_folds_inside_if_branches_with_outer_constants():
    m = fold("""g (bool c, float[2] x) => (float[2] y) {
      k = Constant<value = float[2] {2.0, 3.0}>()
      y = If(c) <
        then_branch = t () => (float[2] ty) { n = Neg(k)
          ty = Add(x, n) },
        else_branch = e () => (float[2] ey) { ey = Mul(x, k) }
      >
    }""")
    if_node = next(n for n in m.graph if n.op_type == "If")
    then = if_node.attributes["then_branch"].value
    assert [n.op_type for n in then] == ["Add"]
    np.testing.assert_array_equal(ir.const_array(then.node(0).inputs[1]), [-2.0, -3.0])


def test_folded_subgraph_output_stays_a_constant_node():
    m = fold("""g (bool c) => (float[2] y) {
      k = Constant<value = float[2] {2.0, 3.0}>()
      y = If(c) <
        then_branch = t () => (float[2] ty) { ty = Neg(k) },
        else_branch = e () => (float[2] ey) { ey = Abs(k) }
      >
    }""")
    if_node = next(n for n in m.graph if n.op_type == "If")
    for branch, want in (("then_branch", [-2.0, -3.0]), ("else_branch", [2.0, 3.0])):
        body = if_node.attributes[branch].value
        assert [n.op_type for n in body] == ["Constant"]
        np.testing.assert_array_equal(ir.constant_node_tensor(body.node(0)).numpy(), want)


def test_folds_in_function_bodies_as_constant_nodes():
    proto = onnx.parser.parse_model(HEAD.format(opset=17).replace('"" : 17', '"" : 17, "local" : 1') + """
      g (float[2] x) => (float[2] y) { y = local.f(x) }
      <domain: "local", opset_import: ["" : 17]>
      f (a) => (b) {
        k = Constant<value = float[2] {4.0, 9.0}>()
        r = Sqrt(k)
        b = Mul(a, r)
      }""")
    model = ir.from_proto(proto)
    FoldConstants().run(model, PassContext())
    func = next(iter(model.functions.values()))
    body = [n.op_type for n in func]
    assert body.count("Sqrt") == 0 and "Mul" in body
    const = next(n for n in func if n.op_type == "Constant" and n.outputs[0].uses())
    np.testing.assert_array_equal(ir.constant_node_tensor(const).numpy(), [2.0, 3.0])


def test_weights_not_folded_are_not_read(tmp_path):
    # Two lazy weights: one feeds a foldable Transpose, one a MatMul with x.
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 16)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Transpose", ["w1"], ["t"]), onnx.helper.make_node("MatMul", ["x", "w2"], ["m"]),
         onnx.helper.make_node("MatMul", ["m", "t"], ["y"], name="mm")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    loaded = ir.load(path)
    reads = []
    for value in loaded.graph.initializers.values():
        tensor = value.const_value
        original = tensor.numpy
        tensor.numpy = (lambda t=tensor, o=original: reads.append(t.name) or o())  # type: ignore[method-assign]
    FoldConstants().run(loaded, PassContext())
    assert reads == ["w1"]

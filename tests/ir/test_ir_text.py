"""graphopt.ir.text: the canonical text ignores node order and internal names,
and sees every attribute and weight."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.ir import Tensor, from_proto, tensor_text, to_text

W0 = np.array([1.0, 2.5], np.float32)
BIG = np.arange(17, dtype=np.float32)  # 17 elements: one over SMALL_TENSOR


def _model(nodes, initializers, inputs=None, outputs=None, functions=(), opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2]),
                    helper.make_tensor_value_info("z", TensorProto.FLOAT, [17])],
        initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                             ir_version=10, functions=list(functions))


def _graph(order=(0, 1, 2, 3), names=("t", "u"), axis=0, w0=W0, node_names=("mul", "add", "sm", "relu")):
    t, u = names
    nodes = [helper.make_node("Mul", ["x", "w0"], [t], name=node_names[0], doc_string="scale"),
             helper.make_node("Add", [t, t], [u], name=node_names[1]),
             helper.make_node("Softmax", [u], ["y"], axis=axis, name=node_names[2]),
             helper.make_node("Relu", ["big"], ["z"], name=node_names[3])]
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(BIG, "big")]
    return _model([nodes[i] for i in order], inits)


BIG_DIGEST = hashlib.sha256(BIG.tobytes()).hexdigest()[:16]

EXPECTED = f"""\
opset ai.onnx=17
graph {{
  input %x: float[n,2]
  init %w0: float[2] = [1.0, 2.5]
  init %w1: float[17] sha256:{BIG_DIGEST}
  %0 = Mul(%x, %w0)
  %1 = Add(%0, %0)
  %y = Softmax{{axis=0}}(%1)
  %z = Relu(%w1)
  output %y: float[n,2]
  output %z: float[17]
}}
"""


def text(proto: onnx.ModelProto) -> str:
    return to_text(from_proto(proto))


def test_exact_text():
    assert text(_graph()) == EXPECTED
    assert BIG_DIGEST == "b578392a98eb1802"


def test_node_order_does_not_matter():
    orders = [(3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)]
    assert all(text(_graph(order=o)) == EXPECTED for o in orders)
    shuffled = list(range(4))
    random.Random(7).shuffle(shuffled)
    assert text(_graph(order=tuple(shuffled))) == EXPECTED


def test_internal_names_node_names_and_docs_do_not_matter():
    assert text(_graph(names=("zz_last", "aa_first"), node_names=("", "n2", "n3", "n4"))) == EXPECTED
    # initializer names are internal too: they print as %w<i> in order of first use
    proto = _graph()
    for t in proto.graph.initializer:
        t.name = "renamed_" + t.name
    for node in proto.graph.node:
        node.input[:] = ["renamed_" + i if i in ("w0", "big") else i for i in node.input]
    assert text(proto) == EXPECTED


def test_attribute_change_changes_text():
    changed = text(_graph(axis=1))
    assert changed != EXPECTED
    assert "  %y = Softmax{axis=1}(%1)\n" in changed


def test_initializer_value_changes_text():
    changed = text(_graph(w0=np.array([1.0, 2.0], np.float32)))
    assert "  init %w0: float[2] = [1.0, 2.0]\n" in changed
    big = BIG.copy()
    big[16] = 0.5
    proto = _graph()
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(big, "big"))
    changed = text(proto)
    digest = hashlib.sha256(big.tobytes()).hexdigest()[:16]
    assert digest != BIG_DIGEST
    assert f"  init %w1: float[17] sha256:{digest}\n" in changed


def test_tensor_text_small_and_large():
    assert tensor_text(Tensor(np.array([1, -2, 3], np.int64))) == "int64[3] = [1, -2, 3]"
    assert tensor_text(Tensor(np.array([0.1, 1e-8], np.float32))) == "float[2] = [0.1, 1e-08]"
    assert tensor_text(Tensor(np.array([True, False]))) == "bool[2] = [true, false]"
    assert tensor_text(Tensor(np.arange(16, dtype=np.int32).reshape(4, 4))) == (
        "int32[4,4] = [" + ", ".join(str(i) for i in range(16)) + "]")
    large = np.ones((4, 5), np.float16)
    assert tensor_text(Tensor(large)) == f"float16[4,5] sha256:{hashlib.sha256(large.tobytes()).hexdigest()[:16]}"
    assert tensor_text(Tensor(np.array(3.5, np.float32))) == "float[] = [3.5]"


def _if_model(then_op="Relu") -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node(then_op, ["x"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])])
    return _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], [],
                  inputs=[helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                          helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                  outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


def test_if_subgraphs():
    assert text(_if_model()) == """\
opset ai.onnx=17
graph {
  input %c: bool[]
  input %x: float[2]
  %y = If{else_branch={
      %0 = Neg(%x)
      output %0: float[2]
    }, then_branch={
      %1 = Relu(%x)
      output %1: float[2]
    }}(%c)
  output %y: float[2]
}
"""
    assert "%1 = Sigmoid(%x)" in text(_if_model("Sigmoid"))


def test_functions_printed():
    double = helper.make_function("custom", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                  [helper.make_opsetid("", 17)])
    scale = helper.make_function("custom", "Scale", ["a"], ["b"],
                                 [helper.make_node("Mul", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)],
                                 attributes=["alpha"])
    proto = _model([helper.make_node("Double", ["x"], ["t"], domain="custom"),
                    helper.make_node("Scale", ["t"], ["y"], domain="custom")], [],
                   inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                   outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                   functions=[scale, double], opsets=(("", 17), ("custom", 1)))
    assert text(proto) == """\
opset ai.onnx=17 custom=1
graph {
  input %x: float[2]
  %0 = custom::Double(%x)
  %y = custom::Scale(%0)
  output %y: float[2]
}
function custom::Double {
  input %0: ?
  %1 = Add(%0, %0)
  output %1: ?
}
function custom::Scale attrs[alpha] {
  input %0: ?
  %1 = Mul(%0, %0)
  output %1: ?
}
"""


def _dead(names=("p", "q"), order=(0, 1, 2, 3, 4)) -> onnx.ModelProto:
    """y = Relu(x), plus two dead chains Relu(Neg(x)) and Relu(Exp(x))."""
    p, q = names
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("Neg", ["x"], [p]), helper.make_node("Relu", [p], ["d1"]),
             helper.make_node("Exp", ["x"], [q]), helper.make_node("Relu", [q], ["d2"])]
    return _model([nodes[i] for i in order], [], outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])


def test_dead_nodes_do_not_depend_on_names_or_order():
    expected = text(_dead())
    assert expected.count("= Relu(") == 3
    assert text(_dead(names=("q", "p"))) == expected
    assert text(_dead(names=("zz", "aa"))) == expected
    assert text(_dead(order=(4, 3, 2, 1, 0))) == expected


def _loop_with_dead_body_node(names=("i", "cond", "a", "b")) -> onnx.ModelProto:
    """A Loop whose body has dead Neg(a) and Neg(b) besides a + 1 and b: body
    input names are internal (printed %0, %1, ...), so they must not order the
    dead nodes."""
    i, cond, a, b = names
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    body = helper.make_graph(
        [helper.make_node("Neg", [a], ["dead_a"]), helper.make_node("Neg", [b], ["dead_b"]),
         helper.make_node("Constant", [], ["c1"], value=one), helper.make_node("Add", [a, "c1"], ["a_out"]),
         helper.make_node("Identity", [b], ["b_out"]), helper.make_node("Identity", [cond], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info(i, TensorProto.INT64, []), helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
         helper.make_tensor_value_info(a, TensorProto.FLOAT, []), helper.make_tensor_value_info(b, TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("a_out", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("b_out", TensorProto.FLOAT, [])])
    return _model([helper.make_node("Loop", ["n", "", "x0", "x1"], ["y0", "y1"], body=body)], [],
                  inputs=[helper.make_tensor_value_info("n", TensorProto.INT64, []),
                          helper.make_tensor_value_info("x0", TensorProto.FLOAT, []),
                          helper.make_tensor_value_info("x1", TensorProto.FLOAT, [])],
                  outputs=[helper.make_tensor_value_info("y0", TensorProto.FLOAT, []),
                           helper.make_tensor_value_info("y1", TensorProto.FLOAT, [])])


def test_dead_nodes_in_subgraph_do_not_depend_on_input_names():
    expected = text(_loop_with_dead_body_node())
    assert "      %8 = Neg(%3)\n      %9 = Neg(%2)\n" in expected
    assert text(_loop_with_dead_body_node(("i", "cond", "b", "a"))) == expected
    assert text(_loop_with_dead_body_node(("zi", "c", "zz", "aa"))) == expected

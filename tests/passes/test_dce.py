"""dce: dead chains go in one run, in any node order."""

from __future__ import annotations

from graphopt import ir
from graphopt.passmanager import PassContext, PassManager

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def _dce(model: ir.Model) -> dict:
    result = PassManager("dce", PassContext()).run(model)
    return result.report.records[-1].stats


def test_dead_chain_removed_in_one_walk():
    model = ir.from_text(HEAD + """g (float[4] x) => (float[4] y) {
      a = Relu(x)
      b = Neg(a)
      c = Abs(b)
      y = Sigmoid(x)
    }""")
    assert _dce(model)["nodes"] == 3
    assert [n.op_type for n in model.graph] == ["Sigmoid"]


def test_dead_chain_removed_when_nodes_are_out_of_order():
    model = ir.from_text(HEAD + """g (float[4] x) => (float[4] y) {
      a = Relu(x)
      b = Neg(a)
      c = Abs(b)
      y = Sigmoid(x)
    }""")
    nodes = list(model.graph)
    model.graph.remove(nodes[:3])
    model.graph.extend([nodes[2], nodes[1], nodes[0]])  # readers before their producers
    assert _dce(model)["nodes"] == 3
    assert [n.op_type for n in model.graph] == ["Sigmoid"]


def test_live_nodes_and_graph_outputs_stay():
    model = ir.from_text(HEAD + """g (float[4] x) => (float[4] y, float[4] z) {
      a = Relu(x)
      y = Neg(a)
      z = Abs(a)
    }""")
    assert _dce(model) == {"nodes": 0, "initializers": 0, "functions": 0, "opsets": 0}
    assert len(model.graph) == 3

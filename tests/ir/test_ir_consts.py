"""Creating initializers with names unique in their graph."""

from __future__ import annotations

import numpy as np

from graphopt import ir

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def _model() -> ir.Model:
    return ir.from_text(HEAD + """g (float[4] x, float[4] w) => (float[4] y) {
      w_bn = Relu(x)
      y = Add(w_bn, w)
    }""")


def test_value_names_lists_outputs_initializers_and_inputs():
    model = _model()
    ir.add_initializer(model.graph, np.zeros(2, np.float32), "c")
    assert ir.value_names(model.graph) == {"w_bn", "y", "c", "x", "w"}


def test_add_initializer_avoids_every_name_in_use():
    model = _model()
    first = ir.add_initializer(model.graph, np.ones(4, np.float32), "w_bn")  # a node output has it
    second = ir.add_initializer(model.graph, np.ones(4, np.float32), "x")  # an input has it
    assert (first.name, second.name) == ("w_bn_1", "x_1")
    assert first.const_value.name == "w_bn_1" and first.is_initializer()


def test_add_initializer_with_kept_names_adds_each_new_one():
    model = _model()
    taken = ir.value_names(model.graph)
    names = [ir.add_initializer(model.graph, np.ones(1, np.float32), "w_bn", taken).name for _ in range(3)]
    assert names == ["w_bn_1", "w_bn_2", "w_bn_3"]
    assert {"w_bn_1", "w_bn_2", "w_bn_3"} <= taken
    # an initializer registered behind the set's back is still avoided
    ir.add_initializer(model.graph, np.ones(1, np.float32), "z")
    assert ir.add_initializer(model.graph, np.ones(1, np.float32), "z", taken).name == "z_1"

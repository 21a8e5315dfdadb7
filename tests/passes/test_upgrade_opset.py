"""upgrade-opset: only when asked, with ONNX's version converter, weights kept as they are."""

from __future__ import annotations

import pytest

from conftest import MODELS
from graphopt import ir
from graphopt.errors import PassError
from graphopt.passmanager import PassContext, PassManager
from helpers import check_numerics, pass_stats


def run(model: ir.Model, spec: str, **config):  # noqa: ANN003, ANN201
    return PassManager(spec, PassContext(config=config)).run(model)


def test_nothing_happens_unless_asked():
    model = ir.load(MODELS / "bert_tiny_ts.onnx")
    result = run(model, "upgrade-opset")
    assert pass_stats(result, "upgrade-opset") == {"from": 17, "to": 17}
    assert model.opset_imports[""] == 17


def test_upgrade_from_config_keeps_numerics_and_weight_tensors():
    model = ir.load(MODELS / "llama_gqa_tiny_dynamo.onnx")
    before = ir.clone(model)
    tensors = {name: v.const_value for name, v in model.graph.initializers.items()}
    result = run(model, "upgrade-opset", **{"opset.upgrade": 23})
    assert pass_stats(result, "upgrade-opset") == {"from": 18, "to": 23}
    assert model.opset_imports[""] == 23
    after = {name: v.const_value for name, v in model.graph.initializers.items()}
    big = [n for n, t in tensors.items() if t.nbytes > 1024]
    assert big and all(after[n] is tensors[n] for n in big)  # the same (unread) tensors, not copies
    check_numerics(before, model)


def test_option_wins_and_a_lower_version_is_a_no_op():
    model = ir.load(MODELS / "bert_tiny_opset14_ts.onnx")
    run(model, "upgrade-opset{version=17}", **{"opset.upgrade": 23})
    assert model.opset_imports[""] == 17
    run(model, "upgrade-opset{version=16}")
    assert model.opset_imports[""] == 17


def test_above_the_supported_opset_is_refused():
    model = ir.load(MODELS / "bert_tiny_ts.onnx")
    with pytest.raises(PassError, match="opset 24 is above 23, the highest graphopt upgrades to"):
        run(model, "upgrade-opset{version=24}")

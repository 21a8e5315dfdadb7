"""Optimization profiles: ``--shapes`` syntax, defaults from dim names,
shared dims, and the errors for names, ranks, ranges and static dims."""

from __future__ import annotations

import logging

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import MODELS
from graphopt.codegen.tensorrt import ShapeRange, make_profile, parse_shapes
from graphopt.errors import InputError


def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / name), load_external_data=False)


def ranges(profile) -> dict:  # noqa: ANN001
    return {name: r.text() for name, r in profile.shapes.items()}


def test_parse_shapes_forms():
    assert parse_shapes(["input_ids=1x1:1x128:8x512"]) == {"input_ids": ShapeRange((1, 1), (1, 128), (8, 512))}
    assert parse_shapes(["a=1x128,b=2X3:2x3:2x3"]) == {"a": ShapeRange((1, 128), (1, 128), (1, 128)),
                                                       "b": ShapeRange((2, 3), (2, 3), (2, 3))}
    assert parse_shapes(None) == {}


@pytest.mark.parametrize(("item", "message"), [
    ("input_ids", "expects NAME=MIN:OPT:MAX or NAME=SHAPE"),
    ("x=1x2:1x3", "has 2 shapes"),
    ("x=1xa", "'1xa' in 'x=1xa' is not a shape"),
    ("x=1x1:1x2x3:1x1", "different ranks"),
    ("x=1x8:1x4:1x16", "axis 1 of 'x' has min 8, opt 4, max 16"),
    ("x=1x1:1x8:1x4", "axis 1 of 'x' has min 1, opt 8, max 4"),
])
def test_parse_shapes_errors(item, message):
    with pytest.raises(InputError, match=message):
        parse_shapes([item])


def test_parse_shapes_refuses_a_name_twice():
    with pytest.raises(InputError, match="gives input 'x' twice"):
        parse_shapes(["x=1x1", "x=1x2"])


def test_defaults_for_text_models_batch_and_sequence(caplog):
    # bert_tiny's position table has 128 rows: the default sequence max (512) is capped there, with a warning
    p = make_profile(load("bert_tiny_ts.onnx"))
    assert ranges(p) == {n: "1x1:1x128:8x128" for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert set(p.origin.values()) == {"derived"}
    assert [r.getMessage() for r in caplog.records] == [
        "input 'input_ids' axis 1 (sequence): the model's position table inner.embeddings.position_embeddings.weight "
        "has 128 rows, so the default sequence range 1:128:512 is capped at 128; give --shapes input_ids=MIN:OPT:MAX "
        "to choose"]


def test_defaults_for_images_static_and_unnamed_dims():
    assert ranges(make_profile(load("vit_tiny_ts.onnx"))) == {"pixel_values": "1x3x32x32:1x3x32x32:8x3x32x32"}
    # paddleocr_cls: x[-1, 3, '?', '?'] (unnamed batch, unnamed NCHW height/width)
    assert ranges(make_profile(load("paddleocr_cls.onnx"))) == {"x": "1x3x32x32:1x3x224x224:8x3x1024x1024"}
    # paddleocr_det: p2o.DynamicDimension.0..2 (an exporter's names: axis 0 is the batch, 2 and 3 spatial)
    assert ranges(make_profile(load("paddleocr_det.onnx"))) == {"x": "1x3x32x32:1x3x224x224:8x3x1024x1024"}


def test_given_shape_binds_shared_dim_names():
    p = make_profile(load("bert_tiny_ts.onnx"), parse_shapes(["input_ids=1x1:2x64:4x128"]))
    assert ranges(p) == {n: "1x1:2x64:4x128" for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert p.origin == {"input_ids": "given", "attention_mask": "derived", "token_type_ids": "derived"}
    assert p.to_dict()["input_ids"] == {"min": [1, 1], "opt": [2, 64], "max": [4, 128], "origin": "given"}


def test_unknown_input_name_lists_inputs_and_suggests():
    with pytest.raises(InputError, match=r"'input_id', which is not an input of the model. Did you mean "
                                         r"'input_ids'\? Inputs: input_ids, attention_mask, token_type_ids"):
        make_profile(load("bert_tiny_ts.onnx"), parse_shapes(["input_id=1x1"]))


def test_wrong_rank():
    with pytest.raises(InputError, match=r"gives 'input_ids' 3 dims, but the input has rank 2 \[batch, sequence\]"):
        make_profile(load("bert_tiny_ts.onnx"), parse_shapes(["input_ids=1x1x1"]))


def test_static_dim_contradicted():
    with pytest.raises(InputError, match=r"axis 1 of 'pixel_values' 4:4:4, but the model fixes it to 3"):
        make_profile(load("vit_tiny_ts.onnx"), parse_shapes(["pixel_values=1x4x32x32"]))


def test_shared_dim_given_two_ranges():
    with pytest.raises(InputError, match="inputs 'input_ids' and 'attention_mask' share dim 'batch'"):
        make_profile(load("bert_tiny_ts.onnx"), parse_shapes(["input_ids=1x8", "attention_mask=2x8"]))


def test_other_dims_are_fixed_to_one_with_a_warning(caplog):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "channels"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with caplog.at_level(logging.WARNING):
        p = make_profile(helper.make_model(graph))
    assert ranges(p) == {"x": "1x1:1x1:8x1"}  # a dynamic axis 0 no rule matches is the batch
    assert "axis 1 (channels) matches no default rule" in caplog.text


def test_inputs_without_shape_are_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(InputError, match="input 'x' declares no shape"):
        make_profile(helper.make_model(graph))

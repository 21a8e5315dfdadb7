"""The sample binding of image inputs: a model that runs only at its trained height (as PaddleOCR's recognizer
runs only at 48) is analysed at the image size the caller gives (``find_groups(images=...)``; ``prune`` takes it
from the first calibration batch), where the default 224 x 160 binding leaves the channels that a Reshape merges
with the height refused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.analysis.groups import KINDS, find_groups
from graphopt.analysis.groups.dims import concrete_dims
from graphopt.calibrate.data import CalibrationData
from graphopt.passes.pruning import PruneOptions, prune


def fixed_height() -> ir.Model:
    """x [batch, 3, height, width] -> Conv 3->16 -> Relu -> Conv 16->8 -> Reshape to [batch, 8 * 4, width] (so only
    height 4 runs) -> Conv1d 32->10 -> out."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    consts = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("i0", 0), ("i3", 3), ("c32", 32))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv1"),
             helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y2"], name="conv2"),
             helper.make_node("Shape", ["y2"], ["s2"], name="shape2"),
             helper.make_node("Gather", ["s2", "i0"], ["n"], axis=0, name="g0"),
             helper.make_node("Gather", ["s2", "i3"], ["w"], axis=0, name="g3"),
             helper.make_node("Concat", ["n", "c32", "w"], ["target"], axis=0, name="cat"),
             helper.make_node("Reshape", ["y2", "target"], ["z"], name="reshape_h4"),
             helper.make_node("Conv", ["z", "w3", "b3"], ["out"], name="conv3")]
    inits = [init("w1", (16, 3, 1, 1)), init("b1", (16,)), init("w2", (8, 16, 1, 1)), init("b2", (8,)),
             init("w3", (10, 32, 1)), init("b3", (10,)), *consts]
    graph = helper.make_graph(nodes, "fixed_height", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 10, "width"])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_sample_binding_takes_the_image_size():
    model = fixed_height()
    assert concrete_dims(model)["y2"] == (3, 8, 224, 160)
    assert concrete_dims(model, images={"x": (4, 8)})["y2"] == (3, 8, 4, 8)
    default = find_groups(model, KINDS)
    assert [(g.name, g.size) for g in default.groups] == [("conv:conv1", 16)]
    assert [(r.site, r.reason) for r in default.refused] == [
        ("Conv:conv2", "Reshape reshape_h4: the channel axis is mixed with others")]
    given = find_groups(fixed_height(), KINDS, images={"x": (4, 8)})
    assert [(g.name, g.size) for g in given.groups] == [("conv:conv1", 16), ("conv:conv2", 8)]
    assert given.refused == []


def test_prune_binds_images_from_calibration():
    rng = np.random.default_rng(1)
    calib = CalibrationData.from_arrays([{"x": rng.standard_normal((1, 3, 4, 8)).astype(np.float32)}
                                         for _ in range(8)])
    model = fixed_height()
    report = prune(model, PruneOptions(ratio=0.5, align=4, method="magnitude"), calib)
    assert [(g.name, g.kept, g.size) for g in report.groups] == [("conv:conv1", 8, 16), ("conv:conv2", 4, 8)]
    assert report.refused == []
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": next(iter(calib))["x"]})[0].shape == (1, 10, 8)
    assert [n.inputs[1].const_value.shape.dims for n in model.graph if n.op_type == "Conv"] == [
        (8, 3, 1, 1), (4, 8, 1, 1), (10, 16, 1)]


def test_plan_counts_conv_positions_from_the_sample_binding():
    """A Conv's unit FLOPs count its output positions: from its static shape, else from the analysis's sample
    binding (the calibration batch's image size); before, symbolic shapes counted 1 position and a CNN's units
    looked thousands of times cheaper than they are."""
    from graphopt.passes.pruning.plan import build_plan

    model = fixed_height()
    plans, _ = build_plan(model, find_groups(model, KINDS, images={"x": (4, 8)}), ("channels",), align=4)
    # conv1: 3 input channels in, 8 consumers' rows (conv2 1x1, 8 out) per unit, 32 positions: 2 * (3 + 8) * 32
    # conv2: 16 inputs per unit; its consumer conv3 reads 4 rows (the height) per channel, 10 outputs, 8 positions
    assert [(p.name, p.unit_flops) for p in plans] == [("conv:conv1", 2.0 * (3 + 8) * 32),
                                                      ("conv:conv2", 2.0 * 16 * 32 + 2.0 * 4 * 10 * 8)]
    default = build_plan(model, find_groups(model, KINDS), ("channels",), align=4)[0]
    assert [(p.name, p.unit_flops) for p in default] == [("conv:conv1", 2.0 * (3 + 8) * 224 * 160)]

"""A ConvTranspose consumer (the upsampling of PaddleOCR det's DB head: Conv -> BN -> Relu -> ConvTranspose 2x2
stride 2): it is a site like a Conv, with its input channels on the weight's axis 0. Before, it was no site at all:
its groups got no importance, no reconstruction and a zero error curve, so `error` cut them first and for free,
and the plan counted 1 position for its FLOPs. With strides equal to its kernel its taps do not overlap, each tap
is a 1x1 map, and least squares on the channel Gram is exact."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt import ir
from graphopt.analysis.groups import KINDS, find_groups
from graphopt.analysis.stats import flops
from graphopt.calibrate.data import CalibrationData
from graphopt.passes.pruning import PruneOptions, prune
from graphopt.passes.pruning.plan import build_plan


def upsampler(dead: tuple[int, ...] = (1, 3, 4, 6), kernel: int = 2, stride: int = 2) -> ir.Model:
    """x [1, 3, 6, 8] -> Conv 3->8 (3x3, pad 1) -> Relu -> ConvTranspose 8->4 (kernel x kernel, stride) -> out.
    The Conv's ``dead`` output channels have zero weights and a negative bias: Relu makes them exactly 0."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = np.abs(rng.standard_normal(8)).astype(np.float32)
    w1[list(dead)] = 0.0
    b1[list(dead)] = -1.0
    w2 = rng.standard_normal((8, 4, kernel, kernel)).astype(np.float32)
    b2 = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["y1"], ["r1"], name="relu"),
             helper.make_node("ConvTranspose", ["r1", "w2", "b2"], ["out"], strides=[stride, stride], name="up")]
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = helper.make_graph(nodes, "upsampler", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [1, 3, 6, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def _calib(count: int = 16, seed: int = 1) -> CalibrationData:
    rng = np.random.default_rng(seed)
    return CalibrationData.from_arrays([{"x": rng.standard_normal((1, 3, 6, 8)).astype(np.float32)}
                                        for _ in range(count)])


def _run(model: ir.Model, batches: CalibrationData) -> list[np.ndarray]:
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(None, dict(b))[0] for b in batches]


def test_flops_count_conv_transpose_over_its_input_positions():
    # Conv: 2 * prod(output 1x8x6x8) * 3 * 3 * 3; ConvTranspose: 2 * prod(input 1x8x6x8) * 4 * 2 * 2
    assert flops(upsampler()) == (2 * 6 * 8 * 8 * 3 * 9 + 2 * 8 * 6 * 8 * 4 * 2 * 2, 0, 0)


def test_plan_makes_conv_transpose_a_site_and_counts_its_input_positions():
    model = upsampler()
    plans, sites = build_plan(model, find_groups(model, KINDS), ("channels",), align=1)
    assert [(p.name, p.size) for p in plans] == [("conv:conv", 8)]
    # per channel: the Conv's 3 x 3 x 3 weights at 48 output positions, the ConvTranspose's 4 x 2 x 2 at 48 input
    assert plans[0].unit_flops == 2 * 27 * 48 + 2 * 16 * 48
    site = sites["up"]
    assert (site.op, site.in_axis, site.data_axis, site.pointwise, site.intercept, site.channels) == (
        "ConvTranspose", 0, 1, True, False, 8)
    overlapping = upsampler(kernel=3, stride=2)
    _, sites = build_plan(overlapping, find_groups(overlapping, KINDS), ("channels",), align=1)
    assert sites["up"].pointwise is False


def test_dead_channels_go_first_and_least_squares_keeps_the_output_exact():
    calib = _calib()
    model = upsampler()
    reference = _run(model, calib)
    report = prune(model, PruneOptions(ratio=0.5, align=1, method="wanda", reconstruction="least-squares", ridge=0.0),
                   calib)
    assert [(g.name, g.kept, g.size) for g in report.groups] == [("conv:conv", 4, 8)]
    assert [(r.node, r.how, r.channels_before, r.channels_after) for r in report.refits] == [
        ("up", "least-squares", 8, 4)]
    assert {n.name: ir.const_array(n.inputs[1]).shape for n in model.graph if n.name != "relu"} == {
        "conv": (4, 3, 3, 3), "up": (4, 4, 2, 2)}
    for got, want in zip(_run(model, calib), reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def two_branches() -> ir.Model:
    """x -> Conv A 3->8 (3x3) -> Relu -> ConvTranspose 8->4 (2x2, stride 2) -> up; x -> Conv B 3->8 (3x3) -> Relu ->
    Conv 8->4 (1x1) -> side: two channel groups of 8, the same weights, one read by each kind of consumer."""
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32) * np.linspace(0.2, 2.0, 8, dtype=np.float32)[:, None,
                                                                                                           None, None]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             helper.make_node("ConvTranspose", ["ra", "wt", "bt"], ["up"], strides=[2, 2], name="up"),
             helper.make_node("Conv", ["x", "w1b", "b1b"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
             helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("Conv", ["rb", "wc", "bc"], ["side"], name="conv_c")]
    wt = np.repeat(np.repeat(w2, 2, axis=2), 2, axis=3)  # each tap the 1x1 weight: the same per-tap map
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w1), ("b1", b1), ("w1b", w1.copy()), ("b1b", b1.copy()), ("wt", wt), ("bt", np.zeros(4, np.float32)),
        ("wc", np.ascontiguousarray(w2.transpose(1, 0, 2, 3))), ("bc", np.zeros(4, np.float32)))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("up", "side")]
    return ir.from_proto(helper.make_model(helper.make_graph(nodes, "two_branches", [x], outs, inits),
                                           opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_error_allocation_weighs_conv_transpose_consumers():
    """The same channels and the same map behind both consumers, once per tap of the ConvTranspose: its output
    error is 4x the 1x1 Conv's for 4128 / 2976 of its FLOPs per unit, so `error` cuts the 1x1 Conv's group deeper.
    Before, the ConvTranspose's curve was zero and `error` cut its group to one step first."""
    calib = _calib()
    model = two_branches()
    report = prune(model, PruneOptions(ratio=0.5, align=1, method="obs", allocation="error",
                                       reconstruction="least-squares"), calib)
    assert [(g.name, g.kept, g.size) for g in report.groups] == [("conv:conv_a", 5, 8), ("conv:conv_b", 2, 8)]

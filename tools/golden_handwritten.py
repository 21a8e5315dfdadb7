#!/usr/bin/env python3
"""Write the hand-built golden cases of the fusion rules: the "nothing
changes" (``kept_``) cases, each with the ``graphopt explain`` reason it
asserts, and the positive cases no committed model has (targets onnx at
opsets 20/23, Gemm + LeakyRelu). The ONNX text in each ``.golden`` file is
the test input; this script is how it was made (random weights, seed 0).
After running it, ``pytest --update-golden`` fills the expected sections.

Usage::

    python tools/golden_handwritten.py
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
rng = np.random.default_rng(0)
G = REPO / "tests" / "golden" / "fusion"

def const(name, arr):
    return h.make_node("Constant", [], [name], value=nh.from_array(np.asarray(arr), name))

def model(nodes, inputs, outputs, opset=18):
    from graphopt.ir.check import check_model_proto
    g = h.make_graph(nodes, "g", inputs, outputs)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=10)
    check_model_proto(m)
    return onnx.printer.to_text(m)

def vi(name, shape, t=T.FLOAT):
    return h.make_tensor_value_info(name, t, shape)

def write(path, pipeline, explain, text, reasons, target="ort", rtol="1e-4"):
    head = f"# pipeline: {pipeline}\n# explain: {explain}\n# target: {target}\n# rtol: {rtol}\n"
    head += "".join(f"# reason: {r}\n" for r in reasons)
    (G / path).write_text(head + "--- input\n" + text + "\n")

def attention(variant):
    D, N, H = 8, 2, 4
    n = [const("wq", rng.standard_normal((D, D)).astype(np.float32) * .3),
         const("wk", rng.standard_normal((D, D)).astype(np.float32) * .3),
         const("wv", rng.standard_normal((D, D)).astype(np.float32) * .3),
         const("shape4", np.array([0, 0, N, H], np.int64)), const("shape3", np.array([0, 0, D], np.int64))]
    for p in "qkv":
        n += [h.make_node("MatMul", ["x", f"w{p}"], [f"{p}3"]), h.make_node("Reshape", [f"{p}3", "shape4"], [f"{p}r"])]
    n += [h.make_node("Transpose", ["qr"], ["q4"], perm=[0, 2, 1, 3]), h.make_node("Transpose", ["kr"], ["kt4"], perm=[0, 2, 3, 1]),
          h.make_node("Transpose", ["vr"], ["v4"], perm=[0, 2, 1, 3]), h.make_node("MatMul", ["q4", "kt4"], ["s0"])]
    inputs = [vi("x", ["batch", "seq", D]), vi("mask", ["batch", 1, "seq", "seq"])]
    outputs = [vi("y", ["batch", "seq", D])]
    if variant == "scale_input":
        inputs.append(vi("scale", []))
        n.append(h.make_node("Mul", ["s0", "scale"], ["s1"]))
    else:
        n += [const("scale", np.array(0.5, np.float32)), h.make_node("Mul", ["s0", "scale"], ["s1"])]
    if variant == "mask_shape":
        inputs[1] = vi("mask", ["batch", 1, 1, "seq"])
    n += [h.make_node("Add", ["s1", "mask"], ["s2"]), h.make_node("Softmax", ["s2"], ["p"], axis=-1),
          h.make_node("MatMul", ["p", "v4"], ["o4"]), h.make_node("Transpose", ["o4"], ["o"], perm=[0, 2, 1, 3]),
          h.make_node("Reshape", ["o", "shape3"], ["y"])]
    if variant == "escape":
        outputs.append(vi("p", ["batch", N, "seq", "seq"]))
    return model(n, inputs, outputs)

write("fuse-attention/kept_probabilities_escape.golden", "fuse-attention,dce",
      "nothing changes: the attention probabilities are also a graph output, so the core cannot be replaced",
      attention("escape"), ["attention: %p (output of Softmax) is a graph output inside the match"])
write("fuse-attention/kept_scale_not_constant.golden", "fuse-attention,dce",
      "nothing changes: the scores are scaled by a graph input, not a constant", attention("scale_input"),
      ["attention: the scale is not a finite non-zero constant scalar"])
write("fuse-attention/kept_mask_shape.golden", "fuse-attention,dce",
      "nothing changes: a [B, 1, 1, S] key-padding mask is not the [B|1, N|1, S, L] attention_bias the fused ops take",
      attention("mask_shape"), ["attention: the mask has shape ['batch', 1, 1, 'seq'], not [B|1, N|1, S, L]"])
write("fuse-attention/kept_target_onnx_opset18.golden", "fuse-attention,dce",
      "nothing changes for target onnx at opset 18: ONNX Attention needs opset 23", attention("plain"),
      ["attention: Attention needs opset 23 for target onnx; the model has opset 18"], target="onnx")

def layernorm(variant):
    n = [h.make_node("ReduceMean", ["x"], ["mean"], axes=[1 if variant == "axis" else -1]),
         h.make_node("Sub", ["x", "mean"], ["d"]), const("two", np.array(2.0, np.float32)),
         h.make_node("Pow", ["d", "two"], ["sq"]), h.make_node("ReduceMean", ["sq"], ["var"], axes=[1 if variant == "axis" else -1]),
         const("eps", np.array(1e-5, np.float32)), h.make_node("Add", ["var", "eps"], ["ve"]), h.make_node("Sqrt", ["ve"], ["std"]),
         h.make_node("Div", ["d", "std"], ["nrm"]), const("g", (1 + .1 * rng.standard_normal(6)).astype(np.float32)),
         h.make_node("Mul", ["nrm", "g"], ["sc"]), const("b", (.1 * rng.standard_normal(6)).astype(np.float32)),
         h.make_node("Add", ["sc", "b"], ["y"])]
    outputs = [vi("y", [2, 3, 6])]
    if variant == "escape":
        outputs.append(vi("var", [2, 3, 1]))
    if variant == "axis":
        outputs = [vi("y", [2, 3, 6])]
    return model(n, [vi("x", [2, 3, 6])], outputs, opset=17)

write("fuse-norm/kept_layernorm_variance_escapes.golden", "fuse-norm,dce",
      "nothing changes: the variance is also a graph output (neither layernorm nor rmsnorm may remove it)",
      layernorm("escape"), ["layernorm: [pow_div_scale_bias] %var (output of ReduceMean) is a graph output inside the match"])
write("fuse-norm/kept_layernorm_not_last_axis.golden", "fuse-norm,dce",
      "nothing changes: the statistics are over axis 1, LayerNormalization(axis=-1) normalizes the last",
      layernorm("axis"), ["layernorm: the mean is over axes [1], not the last axis only"])

def rms(opset):
    n = [const("two", np.array(2.0, np.float32)), h.make_node("Pow", ["x", "two"], ["sq"]),
         const("ax", np.array([-1], np.int64)), h.make_node("ReduceMean", ["sq", "ax"], ["ms"]),
         const("eps", np.array(1e-6, np.float32)), h.make_node("Add", ["ms", "eps"], ["me"]),
         h.make_node("Sqrt", ["me"], ["r"]), h.make_node("Reciprocal", ["r"], ["inv"]), h.make_node("Mul", ["x", "inv"], ["nrm"]),
         const("w", (1 + .1 * rng.standard_normal(6)).astype(np.float32)), h.make_node("Mul", ["w", "nrm"], ["y"])]
    return model(n, [vi("x", ["batch", "seq", 6])], [vi("y", ["batch", "seq", 6])], opset=opset)

write("fuse-norm/kept_rmsnorm_target_onnx_opset18.golden", "fuse-norm,dce",
      "nothing changes for target onnx at opset 18: RMSNormalization needs opset 23", rms(18),
      ["rmsnorm: RMSNormalization needs opset 23 for target onnx; the model has opset 18"], target="onnx")
write("fuse-norm/rmsnorm_target_onnx_opset23.golden", "fuse-norm,dce",
      "target onnx at opset 23: RMSNorm becomes ONNX RMSNormalization", rms(23), [], target="onnx")

def gelu(div):
    n = [const("s2", np.array(div, np.float32)), h.make_node("Div", ["x", "s2"], ["a"]), h.make_node("Erf", ["a"], ["e"]),
         const("one", np.array(1.0, np.float32)), h.make_node("Add", ["e", "one"], ["ep"]), h.make_node("Mul", ["x", "ep"], ["m"]),
         const("half", np.array(0.5, np.float32)), h.make_node("Mul", ["m", "half"], ["y"])]
    return model(n, [vi("x", ["batch", 16])], [vi("y", ["batch", 16])], opset=18)

write("fuse-gelu/kept_wrong_constant.golden", "fuse-gelu,dce",
      "nothing changes: the erf argument is x / 1.5, not x / sqrt(2)", gelu(1.5),
      ["gelu-erf: [outer_div] input 1 of Div: expected the constant 1.41421, found 1.5"])
write("fuse-gelu/gelu_erf_target_onnx_opset20.golden", "fuse-gelu,dce",
      "target onnx at opset 20: the erf GELU becomes ONNX Gelu", gelu(float(np.sqrt(2))).replace('"" : 18', '"" : 20'),
      [], target="onnx")

def skip(skip_shape):
    n = [h.make_node("Add", ["x", "s"], ["sum"]), const("g", (1 + .1 * rng.standard_normal(8)).astype(np.float32)),
         const("b", (.1 * rng.standard_normal(8)).astype(np.float32)),
         h.make_node("LayerNormalization", ["sum", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]
    return model(n, [vi("x", ["batch", "seq", 8]), vi("s", skip_shape)], [vi("y", ["batch", "seq", 8])])

write("fuse-skip-norm/kept_skip_broadcast.golden", "fuse-skip-norm,dce",
      "nothing changes: a [batch, 1, 8] skip broadcasts over the sequence, which SkipLayerNormalization does not",
      skip(["batch", 1, 8]), ["skip-layernorm: the skip shape ['batch', 1, 8] is neither the input's"])
write("fuse-skip-norm/kept_target_onnx.golden", "fuse-skip-norm,dce",
      "nothing changes for target onnx: there is no standard SkipLayerNormalization", skip(["batch", "seq", 8]),
      ["skip-layernorm: rule 'skip-layernorm' does not apply to target onnx (targets: ort)"], target="onnx")

# ---- more rules: one "nothing changes" case each -------------------------------------------
def bias_gelu(bias_shape):
    n = [const("b", (.1 * rng.standard_normal(bias_shape)).astype(np.float32)), h.make_node("Add", ["x", "b"], ["a"]),
         h.make_node("Gelu", ["a"], ["y"], domain="com.microsoft")]
    g = h.make_graph(n, "g", [vi("x", [4, 16])], [vi("y", [4, 16])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)], ir_version=10)
    return onnx.printer.to_text(m)

write("fuse-bias-gelu/kept_bias_not_per_channel.golden", "fuse-bias-gelu,dce",
      "nothing changes: a [4, 16] addend varies along the rows, BiasGelu's bias is one value per channel",
      bias_gelu([4, 16]), ["bias-gelu: the bias has shape [4, 16], not [16]"])

def tanh_gelu(coef):
    n = [const("half", np.array(0.5, np.float32)), h.make_node("Mul", ["x", "half"], ["xh"]),
         const("three", np.array(3.0, np.float32)), h.make_node("Pow", ["x", "three"], ["x3"]),
         const("c", np.array(coef, np.float32)), h.make_node("Mul", ["x3", "c"], ["cx3"]),
         h.make_node("Add", ["x", "cx3"], ["inner"]), const("k", np.array(0.7978846, np.float32)),
         h.make_node("Mul", ["inner", "k"], ["ki"]), h.make_node("Tanh", ["ki"], ["t"]),
         const("one", np.array(1.0, np.float32)), h.make_node("Add", ["t", "one"], ["tp"]),
         h.make_node("Mul", ["xh", "tp"], ["y"])]
    return model(n, [vi("x", ["batch", 16])], [vi("y", ["batch", 16])])

write("fuse-gelu/kept_tanh_wrong_coefficient.golden", "fuse-gelu,dce",
      "nothing changes: the cubic coefficient is 0.05, not GELU's 0.044715", tanh_gelu(0.05),
      ["gelu-tanh: [x_pow] input 1 of Mul: expected the constant 0.044715, found 0.05"])

def rope(cos_input):
    H = 8
    n = [const("st1", np.array([4], np.int64)), const("en1", np.array([2**62], np.int64)), const("ax", np.array([-1], np.int64)),
         const("st2", np.array([0], np.int64)), const("en2", np.array([4], np.int64)),
         h.make_node("Slice", ["x", "st1", "en1", "ax"], ["upper"]), h.make_node("Neg", ["upper"], ["nu"]),
         h.make_node("Slice", ["x", "st2", "en2", "ax"], ["lower"]), h.make_node("Concat", ["nu", "lower"], ["rot"], axis=-1),
         h.make_node("Mul", ["x", "cos"], ["xc"]), h.make_node("Mul", ["rot", "sin"], ["rs"]), h.make_node("Add", ["xc", "rs"], ["y"])]
    inputs = [vi("x", ["batch", 2, "seq", H]), vi("cos", [1, 1, "seq", H]), vi("sin", [1, 1, "seq", H])]
    return model(n, inputs, [vi("y", ["batch", 2, "seq", H])])

write("fuse-rotary/kept_tables_not_known_halves.golden", "fuse-rotary,dce",
      "nothing changes: cos/sin are graph inputs, so their halves cannot be shown equal (RotaryEmbedding's caches hold one half)",
      rope(True), ["rotary: the two halves of the rotary table %cos are not known to be equal"])

def nan_guard():
    n = [h.make_node("Add", ["s", "m"], ["a"]), h.make_node("Softmax", ["a"], ["p"], axis=-1), h.make_node("IsNaN", ["p"], ["nan"]),
         const("zero", np.array(0.0, np.float32)), h.make_node("Where", ["nan", "zero", "p"], ["y"])]
    return model(n, [vi("s", ["batch", 2, 4, 4]), vi("m", ["batch", 1, 4, 4])], [vi("y", ["batch", 2, 4, 4])])

write("canonicalize-fusion/kept_nan_guard_unknown_mask.golden", "canonicalize-fusion,dce",
      "nothing changes: the mask is a graph input that may hold -inf, so the NaN guard stays", nan_guard(),
      ["softmax-nan-guard: the scores are masked by a value that may hold -inf or NaN"])

def scaled_matmul():
    n = [h.make_node("Mul", ["q", "a"], ["qa"]), h.make_node("MatMul", ["qa", "k"], ["y"])]
    return model(n, [vi("q", ["batch", 2, 4, 8]), vi("k", ["batch", 2, 8, 4]), vi("a", [])], [vi("y", ["batch", 2, 4, 4])])

write("canonicalize-fusion/kept_scale_not_constant.golden", "canonicalize-fusion,dce",
      "nothing changes: the query is scaled by a graph input", scaled_matmul(),
      ["scale-after-matmul: a scale is not a finite non-zero constant scalar"])

def reshape_changes():
    n = [const("t", np.array([0, 0, 8], np.int64)), h.make_node("Reshape", ["x", "t"], ["r"]), h.make_node("Relu", ["r"], ["y"])]
    return model(n, [vi("x", ["batch", "seq", 2, 4])], [vi("y", ["batch", "seq", 8])])

write("canonicalize-fusion/kept_reshape_changes_shape.golden", "canonicalize-fusion,dce",
      "nothing changes: the Reshape merges the last two axes", reshape_changes(),
      ["reshape-to-same-shape: the Reshape changes ['batch', 'seq', 2, 4] into ['batch', 'seq', 8]"])

def gemm_trans_a():
    n = [const("t1", np.array([-1, 8], np.int64)), h.make_node("Reshape", ["x", "t1"], ["x2"]),
         const("w", (rng.standard_normal((8, 6)) * .3).astype(np.float32)), const("c", (rng.standard_normal(6) * .1).astype(np.float32)),
         h.make_node("Gemm", ["x2", "w", "c"], ["g"], alpha=0.5), const("t2", np.array([2, 3, 6], np.int64)),
         h.make_node("Reshape", ["g", "t2"], ["y"])]
    return model(n, [vi("x", [2, 3, 8])], [vi("y", [2, 3, 6])])

write("canonicalize-fusion/kept_gemm_alpha.golden", "canonicalize-fusion,dce",
      "nothing changes: Gemm with alpha 0.5 is not a plain x @ W + b", gemm_trans_a(),
      ["gemm-as-matmul: the Gemm has alpha/beta != 1 or transA"])

def conv_clip(bound_input):
    n = [const("w", (rng.standard_normal((4, 3, 3, 3)) * .3).astype(np.float32)), h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         const("lo", np.array(0.0, np.float32)), h.make_node("Clip", ["c", "lo", "hi"], ["y"])]
    return model(n, [vi("x", [1, 3, 8, 8]), vi("hi", [])], [vi("y", [1, 4, 8, 8])])

write("fuse-activation/kept_clip_bound_not_constant.golden", "fuse-activation,dce",
      "nothing changes: Clip's max is a graph input; FusedConv takes constant activation_params", conv_clip(True),
      ["conv-activation: the Clip bounds are not constant scalars"])

def gemm_relu():
    n = [const("w", (rng.standard_normal((8, 6)) * .3).astype(np.float32)), const("c", (rng.standard_normal(6) * .1).astype(np.float32)),
         h.make_node("Gemm", ["x", "w", "c"], ["g"]), h.make_node("LeakyRelu", ["g"], ["y"], alpha=0.2)]
    return model(n, [vi("x", ["batch", 8])], [vi("y", ["batch", 6])])

write("fuse-activation/gemm_leaky_relu.golden", "fuse-activation,dce",
      "Gemm + LeakyRelu(0.2) becomes FusedGemm(activation=LeakyRelu, activation_alpha=0.2)", gemm_relu(), [])

def skip_rms(skip_shape):
    n = [h.make_node("Add", ["x", "s"], ["sum"]), const("g", (1 + .1 * rng.standard_normal(8)).astype(np.float32)),
         h.make_node("SimplifiedLayerNormalization", ["sum", "g"], ["y"], axis=-1, epsilon=1e-6)]
    return model(n, [vi("x", ["batch", "seq", 8]), vi("s", skip_shape)], [vi("y", ["batch", "seq", 8])])

write("fuse-skip-norm/kept_rms_skip_broadcast.golden", "fuse-skip-norm,dce",
      "nothing changes: a [batch, 1, 8] skip broadcasts over the sequence", skip_rms(["batch", 1, 8]),
      ["skip-rmsnorm: the skip shape ['batch', 1, 8] is neither the input's"])
print(f"wrote the hand-built cases under {G.relative_to(REPO)}")

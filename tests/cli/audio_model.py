"""A constructed streaming-audio model with the input signature that
generated inputs used to get wrong (issue 20, item 4): ``input: float[?, ?]``
(unnamed batch and signal length), ``state: float[2, ?, 128]`` (unnamed
batch), ``sr: int64`` scalar (the sample rate, which picks an ``If`` branch).

The graph rejects short signals in onnxruntime: a Conv with a 64-tap kernel
over the signal needs length >= 64 (length 1 fails "Invalid input shape"),
and the state's batch must equal the signal's (a Concat of the two).
``If(Equal(sr, 16000))`` doubles the features at 16 kHz and negates them
otherwise.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KERNEL = 64


def audio_model() -> onnx.ModelProto:
    """The model described in the module doc (opset 18, IR 10); outputs
    ``out: float[?, 6]`` and ``new_state: float[2, ?, 128]``."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 1, KERNEL)).astype(np.float32), "conv_w")
    axes1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes1")
    axes2 = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes2")
    rate = numpy_helper.from_array(np.array(16000, dtype=np.int64), "rate16k")
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    then_branch = helper.make_graph([helper.make_node("Mul", ["feat", "two"], ["then_out"])], "then", [],
                                    [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Neg", ["feat"], ["else_out"])], "else", [],
                                    [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Unsqueeze", ["input", "axes1"], ["signal"]),            # [B, 1, L]
        helper.make_node("Conv", ["signal", "conv_w"], ["conv"]),                 # [B, 4, L-63]
        helper.make_node("ReduceMean", ["conv", "axes2"], ["pooled"], keepdims=0),  # [B, 4]
        helper.make_node("ReduceMean", ["state", "axes2"], ["state_mean"], keepdims=0),  # [2, B]
        helper.make_node("Transpose", ["state_mean"], ["state_t"], perm=[1, 0]),  # [B, 2]
        helper.make_node("Concat", ["pooled", "state_t"], ["feat"], axis=1),      # [B, 6]
        helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["out"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Add", ["state", "one"], ["new_state"]),
    ]
    graph = helper.make_graph(
        nodes, "streaming_audio",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 128]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 6]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, None, 128])],
        initializer=[weight, axes1, axes2, rate, one, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model

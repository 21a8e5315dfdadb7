"""A streaming-VAD-like ONNX model with nested control flow, for
``tools/bench_nested_if.py`` and ``tests/passes/test_nested_if.py``.

The shape follows the TorchScript exports of streaming voice-activity
detectors (Silero VAD v4/v5 style, opset 18): inputs ``input: float[?, ?]``
(an audio chunk with unnamed dynamic dims), ``state: float[2, ?, H]`` and a
scalar ``sr: int64``; the top-level ``If(Equal(sr, 16000))`` picks one of two
copies of the network (16 kHz and 8 kHz). Each branch is full of the guards a
scripted ``forward`` leaves behind, each an ``If`` nested in the branch:

* rank guards on the input: ``If(Equal(Size(Shape(x)), 1))`` (unsqueeze a
  1-D chunk), ``If(Greater(Size(Shape(x)), 2))`` and
  ``If(Equal(Shape(Shape(x))[0], 3))``, chained: each reads the previous
  If's output;
* a rank guard on the outer-scope ``state``
  (``If(Equal(Size(Shape(state)), 3))``);
* a rank guard on an intermediate of the branch (the spectrogram after the
  STFT convolution: ``If(Equal(Size(Shape(spec)), 3))``) and one on the
  encoder's output (``If(Not(Equal(Size(Shape(enc)), 3)))``);
* the decoder's: ``If(Equal(Shape(enc)[-1], [1]))`` squeezes a length-1
  time axis or passes the rank-3 tensor on (the exporter's traced
  ``value_info`` says rank 2), then two Ifs on ``Not(Equal(Size(Shape(.)),
  2))`` unsqueeze the LSTM's input and state: only the rank-2 world can run
  (the LSTM's ``X`` must be rank 3), so on every input the model runs, the
  squeeze is taken and the two rank guards are not;
* two guards decided only at run time (``If(Equal(Shape(x)[-1], chunk))``,
  the chunk-length check, and ``If(Equal(Shape(state)[1], Shape(x)[0]))``,
  the batch check): their dims are dynamic.

Each branch has 11 Ifs, 22 in all (+ the top-level one); 18 are decided
(9 per branch: 6 by the shapes alone, 3 by the LSTM's rank), 4 at run
time. The compute is small, like the real models: a reflect Pad, an STFT
as a strided Conv, four Conv+Relu encoder layers, an LSTM and a MatMul
head, so the guards' overhead is a visible part of a run (about 0.15 ms
per chunk with onnxruntime on two cores).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build_vad_model", "GUARD_IFS", "DECIDED_IFS"]

GUARD_IFS = 22
"""Nested Ifs in the model (both branches)."""
DECIDED_IFS = 18
"""Nested Ifs whose condition the input shapes decide (on every input the model runs)."""

_OPSET = 18


class _Branch:
    """Builds one branch graph with unique value names (a prefix)."""

    def __init__(self, prefix: str) -> None:
        self.p = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{self.p}{base}_{self.n}"

    def const(self, array: np.ndarray, base: str = "c") -> str:
        """A Constant node (as TorchScript exports write them inside branches)."""
        out = self.name(base)
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(array, out)))
        return out

    def weight(self, array: np.ndarray, base: str = "w") -> str:
        out = self.name(base)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), out))
        return out

    def op(self, op_type: str, inputs: list[str], base: str | None = None, **attrs: object) -> str:
        out = self.name(base or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def rank(self, x: str) -> str:
        """``Size(Shape(x))``: the rank, int64 scalar."""
        return self.op("Size", [self.op("Shape", [x])], "rank")

    def guard(self, cond: str, then_nodes, else_nodes, base: str = "g"):  # noqa: ANN001, ANN201
        """``If(cond)`` whose branches are built by ``then_nodes(b)`` /
        ``else_nodes(b)`` (each returns its output name, or a tuple of
        names); outputs float, shapes undeclared. Returns the output name
        (or a list of them)."""
        out = self.name(base)
        graphs, count = [], 1
        for tag, build in (("then", then_nodes), ("else", else_nodes)):
            sub = _Branch(f"{out}_{tag}_")
            res = build(sub)
            res = (res,) if isinstance(res, str) else tuple(res)
            count = len(res)
            graphs.append(helper.make_graph(sub.nodes, f"{out}_{tag}", [],
                                            [helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in res],
                                            initializer=sub.inits))
        outs = [out] if count == 1 else [out] + [f"{out}_{i}" for i in range(1, count)]
        self.nodes.append(helper.make_node("If", [cond], outs, then_branch=graphs[0], else_branch=graphs[1]))
        return out if count == 1 else outs


def _network(b: _Branch, rng: np.random.Generator, chunk: int, context: int, hidden: int, fft: int) -> tuple[str, str]:
    """One branch: guards + STFT conv + encoder + LSTM cell + head. Returns
    (probability [B, 1], new state [2, B, hidden])."""
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    x = "input"
    # rank guards on the chunk (TorchScript: if x.dim() == 1: x = x.unsqueeze(0))
    x = b.guard(b.op("Equal", [b.rank(x), b.const(np.array(1, np.int64))]),
                lambda s, x=x: s.op("Unsqueeze", [x, s.const(i64(0))]), lambda s, x=x: s.op("Identity", [x]), "x1d")
    x = b.guard(b.op("Greater", [b.rank(x), b.const(np.array(2, np.int64))]),
                lambda s, x=x: s.op("Reshape", [x, s.const(i64(1, -1))]), lambda s, x=x: s.op("Identity", [x]), "x3d")
    rank_1d = b.op("Gather", [b.op("Shape", [b.op("Shape", [x])]), b.const(np.array(0, np.int64))], "rank1d")
    x = b.guard(b.op("Equal", [rank_1d, b.const(np.array(3, np.int64))]),
                lambda s, x=x: s.op("Squeeze", [x, s.const(i64(1))]), lambda s, x=x: s.op("Identity", [x]), "xsq")
    # run-time guard: the chunk length (dynamic dim)
    last = b.op("Gather", [b.op("Shape", [x]), b.const(np.array(-1, np.int64))], "len")
    x = b.guard(b.op("Equal", [last, b.const(np.array(chunk, np.int64))]),
                lambda s, x=x: s.op("Identity", [x]),
                lambda s, x=x: s.op("Slice", [x, s.const(i64(0)), s.const(i64(chunk)), s.const(i64(1))]), "xlen")
    # rank guard on the outer-scope state, and a run-time batch guard
    state = b.guard(b.op("Equal", [b.rank("state"), b.const(np.array(3, np.int64))]),
                    lambda s: s.op("Identity", ["state"]),
                    lambda s: s.op("Reshape", ["state", s.const(i64(2, -1, hidden))]), "st3")
    batch = b.op("Gather", [b.op("Shape", [x]), b.const(np.array(0, np.int64))], "batch")
    state_batch = b.op("Gather", [b.op("Shape", [state]), b.const(np.array(1, np.int64))], "sbatch")
    state = b.guard(b.op("Equal", [state_batch, batch]),
                    lambda s, st=state: s.op("Identity", [st]),
                    lambda s, st=state: s.op("Mul", [st, s.const(np.array(0.0, np.float32))]), "stb")
    # context + reflect pad + STFT as a strided Conv
    zeros = b.op("ConstantOfShape", [b.op("Concat", [b.op("Unsqueeze", [batch, b.const(i64(0))]),
                                                     b.const(i64(context))], axis=0)],
                 value=numpy_helper.from_array(np.zeros(1, np.float32)))
    x = b.op("Concat", [zeros, x], axis=1)
    x = b.op("Pad", [x, b.const(i64(0, 0, 0, fft // 4))], mode="reflect")
    x = b.op("Unsqueeze", [x, b.const(i64(1))])
    bins = fft // 2 + 1
    spec = b.op("Conv", [x, b.weight(rng.standard_normal((2 * bins, 1, fft)) * 0.05)], strides=[fft // 2])
    spec = b.guard(b.op("Equal", [b.rank(spec), b.const(np.array(3, np.int64))]),
                   lambda s, v=spec: s.op("Identity", [v]),
                   lambda s, v=spec: s.op("Unsqueeze", [v, s.const(i64(0))]), "spec3")
    re = b.op("Slice", [spec, b.const(i64(0)), b.const(i64(bins)), b.const(i64(1))])
    im = b.op("Slice", [spec, b.const(i64(bins)), b.const(i64(2 * bins)), b.const(i64(1))])
    mag = b.op("Sqrt", [b.op("Add", [b.op("Mul", [re, re]), b.op("Mul", [im, im])])])
    # encoder
    h, cin = mag, bins
    for cout, stride in ((hidden, 1), (hidden // 2, 2), (hidden // 2, 2), (hidden, 1)):
        w = b.weight(rng.standard_normal((cout, cin, 3)) * (1.0 / np.sqrt(3 * cin)))
        bias = b.weight(rng.standard_normal(cout) * 0.1)
        h = b.op("Relu", [b.op("Conv", [h, w, bias], pads=[1, 1], strides=[stride])])
        cin = cout
    h = b.guard(b.op("Not", [b.op("Equal", [b.rank(h), b.const(np.array(3, np.int64))])]),
                lambda s, v=h: s.op("Unsqueeze", [v, s.const(i64(0))]),
                lambda s, v=h: s.op("Identity", [v]), "enc3")
    # decoder (Silero VAD): squeeze a length-1 time axis, decided at run time
    # (rank 2 or 3), then the LSTM's rank guards on the result: only the
    # rank-2 branch can run (the LSTM's X must be rank 3)
    minus1 = b.const(i64(-1))
    t_len = b.op("Gather", [b.op("Shape", [h]), minus1], "tlen")
    d = b.guard(b.op("Equal", [t_len, b.const(i64(1))]),
                lambda s, v=h: s.op("Squeeze", [v, s.const(i64(-1))]),
                lambda s, v=h: s.op("Identity", [v]), "dsq")
    b.value_info.append(helper.make_tensor_value_info(d, TensorProto.FLOAT, [None, hidden]))  # the exporter's trace
    h0 = b.op("Gather", [state, b.const(np.array(0, np.int64))], axis=0)
    c0 = b.op("Gather", [state, b.const(np.array(1, np.int64))], axis=0)
    unbatched = b.op("Not", [b.op("Equal", [b.rank(d), b.const(np.array(2, np.int64))])], "unbatched")
    x = b.guard(unbatched, lambda s: s.op("Unsqueeze", [d, s.const(i64(0))]), lambda s: s.op("Identity", [d]), "rnn")
    hx, cx = b.guard(unbatched,
                     lambda s: (s.op("Unsqueeze", [h0, s.const(i64(0))]), s.op("Unsqueeze", [c0, s.const(i64(0))])),
                     lambda s: (s.op("Identity", [h0]), s.op("Identity", [c0])), "rnnst")
    zero = b.const(i64(0))
    w = b.weight(rng.standard_normal((1, 4 * hidden, hidden)) / np.sqrt(hidden))
    r = b.weight(rng.standard_normal((1, 4 * hidden, hidden)) / np.sqrt(hidden))
    bias = b.weight(rng.standard_normal((1, 8 * hidden)) * 0.1)
    outs = [b.name("lstm_y"), b.name("lstm_h"), b.name("lstm_c")]
    b.nodes.append(helper.make_node("LSTM", [b.op("Unsqueeze", [x, zero]), w, r, bias, "",
                                             b.op("Unsqueeze", [hx, zero]), b.op("Unsqueeze", [cx, zero])], outs,
                                    hidden_size=hidden))
    h1 = b.op("Squeeze", [outs[1], zero])
    c1 = b.op("Squeeze", [outs[2], zero])
    new_state = b.op("Concat", [b.op("Unsqueeze", [h1, b.const(i64(0))]), b.op("Unsqueeze", [c1, b.const(i64(0))])],
                     axis=0)
    head = b.op("Relu", [h1])
    prob = b.op("Sigmoid", [b.op("Add", [b.op("MatMul", [head, b.weight(rng.standard_normal((hidden, 1)) * 0.1)]),
                                         b.weight(np.zeros(1))])])
    return prob, new_state


def build_vad_model(hidden: int = 128, seed: int = 0) -> onnx.ModelProto:
    """The model described in the module docstring (opset 18, IR 10).

    Args:
        hidden: the LSTM state width and encoder channels (Silero VAD: 128).
        seed: seed of the random weights.

    Returns:
        A checked ``onnx.ModelProto``: inputs ``input: float[?, ?]``,
        ``state: float[2, ?, hidden]``, ``sr: int64[]``; outputs ``output``
        (``[?, 1]``) and ``stateN`` (``[2, ?, hidden]``). It runs for a
        ``[1, 512]`` chunk at ``sr=16000`` and a ``[1, 256]`` one at
        ``sr=8000`` (any other length is cut to the chunk).
    """
    rng = np.random.default_rng(seed)
    branches = []
    for tag, chunk, context, fft in (("k16_", 512, 64, 256), ("k8_", 256, 32, 128)):
        b = _Branch(tag)
        prob, state = _network(b, rng, chunk, context, hidden, fft)
        outs = [b.op("Identity", [prob], "prob"), b.op("Identity", [state], "state_out")]
        branches.append(helper.make_graph(b.nodes, f"{tag}branch", [], [
            helper.make_tensor_value_info(outs[0], TensorProto.FLOAT, None),
            helper.make_tensor_value_info(outs[1], TensorProto.FLOAT, None)], initializer=b.inits,
            value_info=b.value_info))
    nodes = [helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["output", "stateN"], then_branch=branches[0],
                              else_branch=branches[1])]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, hidden]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, None, hidden])],
        initializer=[numpy_helper.from_array(np.array(16000, np.int64), "sr16k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def vad_inputs(sr: int, hidden: int = 128, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs for one run at ``sr`` (16000: 512 samples, else 256)."""
    rng = np.random.default_rng(sr)
    n = 512 if sr == 16000 else 256
    return {"input": rng.standard_normal((batch, n)).astype(np.float32),
            "state": (rng.standard_normal((2, batch, hidden)) * 0.5).astype(np.float32),
            "sr": np.array(sr, np.int64)}

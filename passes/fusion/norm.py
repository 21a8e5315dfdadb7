"""LayerNorm and RMSNorm fusions, and their Skip (residual Add) forms.

Sources of the decomposed forms:

- LayerNorm as ``ReduceMean / Sub / Pow(2) / ReduceMean / Add(eps) / Sqrt /
  Div`` then ``Mul(scale) / Add(bias)``: PyTorch's TorchScript exporter below
  opset 17 (``torch.nn.LayerNorm``), paddle2onnx (PaddleOCR's SVTR), tf2onnx;
  ``Mul(d, d)`` for the square and ``Mul(d, Reciprocal(std))`` for the
  division are the other spellings. Target op: ``LayerNormalization``
  (ONNX opset 17; onnxruntime also registers it in the default domain at
  version 1, so ``--target ort`` fuses at any opset).
- RMSNorm (LLaMA's ``LlamaRMSNorm``): ``x * 1/sqrt(mean(x^2) + eps) * w``;
  the TorchScript exporter writes ``Div(1, Sqrt)``, the dynamo exporter
  ``Reciprocal(Sqrt)``; ``Div(x, Sqrt)`` also occurs. Target op:
  ``SimplifiedLayerNormalization`` (onnxruntime, default domain) for ort,
  ``RMSNormalization`` (ONNX opset 23) for onnx and tensorrt.
- Skip forms (onnxruntime only): ``SimplifiedLayerNormalization(Add(x,
  skip))`` -> ``com.microsoft.SkipSimplifiedLayerNormalization``, and for
  the CUDA execution provider (``fuse-skip-norm{for-provider=cuda}``)
  ``LayerNormalization(Add(x, skip))`` -> ``SkipLayerNormalization``; a
  constant bias added first (``Add(Add(MatMul, bias), skip)``, BERT's dense
  output) goes into the op's bias input, and the sum is the op's 4th output
  when the residual stream reads it. onnxruntime's transformers optimizer
  emits the same ops (``fusion_skiplayernorm.py``).
- LayerNorm's CPU form (``for-provider=cpu``, the default): the
  residual ``Add`` read only by a ``LayerNormalization`` becomes ``Sum(x,
  [bias,] skip)``. onnxruntime's fp32 CPU SkipLayerNormalization kernel
  (``contrib_ops/cpu/skip_layer_norm.cc``) is a scalar loop with a division
  per element: 265 us per [1, 128, 768] block against 91 us for Sum +
  LayerNormalization (its MLAS kernel). At ORT_ENABLE_ALL its
  ``SkipLayerNormFusion`` (which matches an ``Add`` that nothing else reads)
  would rebuild that kernel from Add + LayerNormalization; it does not
  match ``Sum``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.pattern import CheckContext, CheckResult, Rule
from graphopt.passes.fusion.common import (
    FLOAT_TYPES, ORT_DOMAIN, FusionPass, last_axis, last_dim, needs_opset, vector,
)
from graphopt.passmanager import for_provider, register_pass

__all__ = ["LayerNormRule", "RMSNormRule", "SkipLayerNormRule", "SkipRMSNormRule", "ResidualSumRule", "FuseNorm",
           "FuseSkipNorm", "FuseSkipNormOptions"]

_AFFINE = ("scale_bias", "scale", "plain")


def _affine(op: Any, normalized: Any, scale: Any, bias: Any, affine: str) -> Any:
    if affine == "plain":
        return normalized
    scaled = op.Mul(normalized, scale)
    return op.Add(scaled, bias) if affine == "scale_bias" else scaled


def _layernorm_variant(square: str, divide: str, affine: str):  # noqa: ANN202 - a pattern method
    def pattern(self, op, x, eps, scale, bias):  # noqa: ANN001, ANN202
        mean = op.ReduceMean(x, axes=op.capture("axes1"), keepdims=1)
        d = op.Sub(x, mean)
        sq = op.Pow(d, 2.0) if square == "pow" else op.Mul(d, d)
        var = op.ReduceMean(sq, axes=op.capture("axes2"), keepdims=1)
        std = op.Sqrt(op.Add(var, eps))
        normalized = op.Div(d, std) if divide == "div" else op.Mul(d, op.Reciprocal(std))
        return _affine(op, normalized, scale, bias, affine)

    pattern.__name__ = f"{square}_{divide}_{affine}"
    return pattern


def _rms_variant(square: str, inverse: str, affine: str):  # noqa: ANN202 - a pattern method
    def pattern(self, op, x, eps, scale, bias):  # noqa: ANN001, ANN202
        sq = op.Pow(x, 2.0) if square == "pow" else op.Mul(x, x)
        rms = op.Sqrt(op.Add(op.ReduceMean(sq, axes=op.capture("axes1"), keepdims=1), eps))
        if inverse == "div":
            normalized = op.Div(x, rms)
        else:
            inv = op.Div(1.0, rms) if inverse == "one_div" else op.Reciprocal(rms)
            normalized = op.Mul(x, inv)
        return _affine(op, normalized, scale, bias, affine)

    pattern.__name__ = f"{square}_{inverse}_{affine}"
    return pattern


class _NormBase(Rule):
    """Checks shared by the LayerNorm and RMSNorm rules."""

    labels = frozenset({"fusion", "normalization"})

    def _common(self, ctx: CheckContext, x: ir.Value, eps: ir.Value, scale: Any, bias: Any,
                axes: list) -> tuple[dict | None, CheckResult]:
        if x.dtype not in FLOAT_TYPES:
            return None, ctx.fail(f"the input is {x.dtype}, not a float type", at=x)
        for a in axes:
            if not last_axis(ctx, x, a):
                return None, ctx.fail(f"the mean is over axes {a}, not the last axis only", at=x)
        epsilon = ctx.scalar(eps)
        if epsilon is None or not epsilon >= 0:
            return None, ctx.fail("epsilon is not a non-negative constant scalar", at=eps)
        size = last_dim(ctx, x)
        if size is None:
            return None, ctx.fail("the normalized (last) axis has no static size", at=x)
        found: dict[str, Any] = {"epsilon": epsilon, "size": size}
        for name, value in (("scale", scale), ("bias", bias)):
            if value is None:
                continue
            array, ok = vector(ctx, value, size, name)
            if not ok:
                return None, ok
            if array.dtype != x.dtype.numpy():
                return None, ctx.fail(f"the {name} is {array.dtype}, the input {x.dtype}", at=value)
            found[name] = array
        return found, ctx.ok()


class LayerNormRule(_NormBase):
    """Decomposed LayerNorm -> ``LayerNormalization(x, scale, bias, axis=-1, epsilon)``.

    Matches ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)`` over the
    last axis (ReduceMean ``axes`` as attribute or input), with the square as
    ``Pow(d, 2)`` or ``Mul(d, d)``, the division as ``Div`` or
    ``Mul(Reciprocal)``, followed by ``* scale + bias``, ``* scale`` or
    nothing (ones / zeros are supplied). ``scale`` and ``bias`` must be
    constants with one value per channel of the last axis, in x's dtype.
    Sources: the TorchScript exporter below opset 17, paddle2onnx, tf2onnx.
    """

    name = "layernorm"
    variants = tuple(f"{s}_{d}_{a}" for s in ("pow", "mul") for d in ("div", "reciprocal") for a in _AFFINE)
    benefit = 2

    def patterns(self):  # noqa: ANN201 - list[Pattern]
        for name in self.variants:
            if not hasattr(type(self), name):
                square, divide, affine = name.split("_", 2)
                setattr(type(self), name, _layernorm_variant(square, divide, affine))
        return super().patterns()

    def check(self, ctx: CheckContext, x: ir.Value, eps: ir.Value, scale: Any = None, bias: Any = None,
              axes1: Any = None, axes2: Any = None, **_: Any) -> CheckResult:
        found, ok = self._common(ctx, x, eps, scale, bias, [axes1, axes2])
        if not ok:
            return ok
        if ctx.target != "ort":
            return needs_opset(ctx, "LayerNormalization", 17)
        return ctx.ok()

    def rewrite(self, op: Any, x: ir.Value, eps: ir.Value, scale: Any = None, bias: Any = None, **_: Any) -> Any:
        epsilon = float(np.asarray(ir.const_array(eps)).reshape(()))
        size = int(np.asarray(ir.const_array(bias)).size) if bias is not None else _last_size(op, x)
        if scale is None:
            scale = op.initializer(np.ones(size, x.dtype.numpy()), "layernorm_scale")
        else:
            scale = _flat(op, scale)
        if bias is None:  # no "" bias input: onnxruntime 1.32 crashes on it at ORT_ENABLE_ALL (fuzz seed 2)
            return op.LayerNormalization(x, scale, axis=-1, epsilon=epsilon)
        return op.LayerNormalization(x, scale, _flat(op, bias), axis=-1, epsilon=epsilon)


class RMSNormRule(_NormBase):
    """RMSNorm -> ``SimplifiedLayerNormalization`` (ort) or ``RMSNormalization`` (ONNX 23).

    Matches ``x / sqrt(mean(x^2) + eps)`` over the last axis (``Mul(x,
    Div(1, Sqrt))``: TorchScript exporter; ``Mul(x, Reciprocal(Sqrt))``:
    dynamo exporter; ``Div(x, Sqrt)``), optionally ``* scale`` (a constant
    per channel, LLaMA's ``weight``). Source: ``LlamaRMSNorm`` in
    Hugging Face transformers; Zhang & Sennrich, "Root Mean Square Layer
    Normalization" (2019).
    """

    name = "rmsnorm"
    variants = tuple(f"{s}_{i}_{a}" for s in ("pow", "mul") for i in ("one_div", "reciprocal", "div")
                     for a in ("scale", "plain"))
    benefit = 2

    def patterns(self):  # noqa: ANN201 - list[Pattern]
        for name in self.variants:
            if not hasattr(type(self), name):
                square, rest = name.split("_", 1)
                inverse, affine = rest.rsplit("_", 1)
                setattr(type(self), name, _rms_variant(square, inverse, affine))
        return super().patterns()

    def check(self, ctx: CheckContext, x: ir.Value, eps: ir.Value, scale: Any = None, axes1: Any = None,
              **_: Any) -> CheckResult:
        found, ok = self._common(ctx, x, eps, scale, None, [axes1])
        if not ok:
            return ok
        if ctx.target != "ort":
            return needs_opset(ctx, "RMSNormalization", 23)
        return ctx.ok()

    def rewrite(self, op: Any, x: ir.Value, eps: ir.Value, scale: Any = None, **_: Any) -> Any:
        epsilon = float(np.asarray(ir.const_array(eps)).reshape(()))
        size = None if scale is not None else _last_size(op, x)
        scale = _flat(op, scale) if scale is not None else op.initializer(np.ones(size, x.dtype.numpy()), "rms_scale")
        if op.target == "ort":
            return op.SimplifiedLayerNormalization(x, scale, axis=-1, epsilon=epsilon, stash_type=1)
        return op.RMSNormalization(x, scale, axis=-1, epsilon=epsilon)


def _last_size(op: Any, x: ir.Value) -> int:
    """x's static last dim, read as ``CheckContext.dim`` reads it in the
    check: the IR's shape first, then the symbolic shapes (which may keep a
    symbol where the IR knows the number, e.g. ``S2`` broadcast with 2: fuzz
    seed 864)."""
    for dims in (x.shape, op.env.shapes.shape(x)):
        if dims is not None and len(dims) and isinstance(dims[-1], int):
            return int(dims[-1])
    raise ValueError(f"the last dim of {x.name!r} is not static, though the rule's check required it")


def _flat(op: Any, value: ir.Value) -> ir.Value:
    """``value`` itself when it is already 1-D, else a flattened copy."""
    array = ir.const_array(value)
    if array.ndim == 1:
        return value
    return op.initializer(array.reshape(-1), f"{value.name or 'vector'}_1d")


def provider(options: Any) -> str:
    """The onnxruntime execution provider ``fuse-skip-norm``'s rules rewrite
    for: ``cpu`` or ``cuda`` (the pass resolves ``auto`` from the context
    before its rules run; outside a pass, ``auto`` is ``cpu``)."""
    value = getattr(options, "for_provider", "auto")
    return "cpu" if value == "auto" else value


class _SkipBase(Rule):
    """``Norm(Add(x, skip))`` -> the com.microsoft Skip form (ort only)."""

    targets = frozenset({"ort"})
    labels = frozenset({"fusion", "normalization", "residual"})
    variants = ("with_bias", "plain")

    def _check(self, ctx: CheckContext, x: ir.Value, skip: ir.Value, bias: Any, norm: ir.Node) -> CheckResult:
        """The shapes, dtypes and constants every Skip rule needs (the Add's
        operand with the norm's shape is the input, the other the skip)."""
        if ctx.shape(x) != ctx.shape(norm.outputs[0]) and ctx.shape(skip) == ctx.shape(norm.outputs[0]):
            x, skip = skip, x
        axis = norm.attributes["axis"].as_int() if "axis" in norm.attributes else -1
        if not last_axis(ctx, x, axis):
            return ctx.fail(f"the norm is over axis {axis}, not the last axis", at=norm)
        xs, ss = ctx.shape(x), ctx.shape(skip)
        if xs is None or ss is None or len(xs) != 3:
            return ctx.fail("the input is not known to be 3-D [batch, sequence, hidden]", at=x)
        if not all(isinstance(d, (int, str)) for d in xs) or not isinstance(xs[-1], int):
            return ctx.fail(f"the input shape {xs} is not fully known", at=x)
        if ss != xs and ss not in ([1, *xs[1:]], xs[1:]):
            return ctx.fail(f"the skip shape {ss} is neither the input's {xs} nor [1|-, sequence, hidden]", at=skip)
        if x.dtype != skip.dtype or x.dtype not in FLOAT_TYPES:
            return ctx.fail("input and skip are not the same float type", at=skip)
        if bias is not None:
            _, ok = vector(ctx, bias, xs[-1], "bias")
            if not ok:
                return ok
        for i in range(1, len(norm.inputs)):
            if norm.inputs[i] is not None:
                _, ok = vector(ctx, norm.inputs[i], xs[-1], "scale" if i == 1 else "shift")
                if not ok:
                    return ok
        return ctx.ok()


class SkipLayerNormRule(_SkipBase):
    """``LayerNormalization(Add([Add(x, bias)], skip))`` -> ``com.microsoft.SkipLayerNormalization``.

    The Add's operand with the norm's full 3-D shape is the input, the
    other the skip (shapes ``[B, S, D]``, ``[1, S, D]`` or ``[S, D]``); a
    constant per-channel ``bias`` added first becomes the op's bias; when
    the sum is read elsewhere (the residual stream) it is output 3. Source:
    BERT/GPT-2/ViT residual blocks; onnxruntime's ``fusion_skiplayernorm.py``.
    """

    name = "skip-layernorm"
    benefit = 3

    def with_bias(self, op, x, bias, skip, scale, shift):  # noqa: ANN001, ANN201
        s = op.Add(op.Add(x, bias), skip)
        return op.LayerNormalization(s, scale, op.opt("shift"), _label="norm"), s

    def plain(self, op, x, skip, scale, shift):  # noqa: ANN001, ANN201
        s = op.Add(x, skip)
        return op.LayerNormalization(s, scale, op.opt("shift"), _label="norm"), s

    def check(self, ctx: CheckContext, x: ir.Value, skip: ir.Value, norm: ir.Node, bias: Any = None,
              **_: Any) -> CheckResult:
        if provider(ctx.options) == "cpu":
            return ctx.fail("for-provider=cpu: onnxruntime's CPU SkipLayerNormalization is slower than Add + "
                            "LayerNormalization (rule residual-sum applies instead)", at=norm)
        return self._check(ctx, x, skip, bias, norm)

    def rewrite(self, op: Any, x: ir.Value, skip: ir.Value, norm: ir.Node, bias: Any = None,
                shift: Any = None, **_: Any) -> Any:
        shapes = op.env.shapes
        if shapes.shape(x) != shapes.shape(norm.outputs[0]):
            x, skip = skip, x
        eps = norm.attributes["epsilon"].as_float() if "epsilon" in norm.attributes else 1e-5
        scale = _flat(op, norm.inputs[1])
        shift = _flat(op, shift) if shift is not None else None
        bias = _flat(op, bias) if bias is not None else None
        keep = op.used_outside(1)
        outs = op.SkipLayerNormalization(x, skip, scale, shift, bias, epsilon=eps, _domain=ORT_DOMAIN,
                                         _outputs=4 if keep else 1)
        return (outs[0], outs[3]) if keep else (outs, None)


class SkipRMSNormRule(_SkipBase):
    """``SimplifiedLayerNormalization(Add([Add(x, bias)], skip))`` ->
    ``com.microsoft.SkipSimplifiedLayerNormalization`` (sum as output 3 when
    read elsewhere). Source: LLaMA's residual + RMSNorm; onnxruntime's
    ``fusion_skip_group_norm``/``fusion_simplified_layernorm.py``. Fused for
    either ``for-provider``: onnxruntime's CPU kernel took 0.78x the time of
    Add + SimplifiedLayerNormalization at hidden size 1536 (1.36x at 768),
    and LLaMA 600M (hidden 1536) ran equally fast either way.
    """

    name = "skip-rmsnorm"
    benefit = 3

    def with_bias(self, op, x, bias, skip, scale):  # noqa: ANN001, ANN201
        s = op.Add(op.Add(x, bias), skip)
        return op.SimplifiedLayerNormalization(s, scale, _label="norm"), s

    def plain(self, op, x, skip, scale):  # noqa: ANN001, ANN201
        s = op.Add(x, skip)
        return op.SimplifiedLayerNormalization(s, scale, _label="norm"), s

    def check(self, ctx: CheckContext, x: ir.Value, skip: ir.Value, norm: ir.Node, bias: Any = None,
              **_: Any) -> CheckResult:
        return self._check(ctx, x, skip, bias, norm)

    def rewrite(self, op: Any, x: ir.Value, skip: ir.Value, norm: ir.Node, bias: Any = None, **_: Any) -> Any:
        shapes = op.env.shapes
        if shapes.shape(x) != shapes.shape(norm.outputs[0]):
            x, skip = skip, x
        eps = norm.attributes["epsilon"].as_float() if "epsilon" in norm.attributes else 1e-5
        bias = _flat(op, bias) if bias is not None else None
        keep = op.used_outside(1)
        outs = op.SkipSimplifiedLayerNormalization(x, skip, _flat(op, norm.inputs[1]), bias, epsilon=eps,
                                                   _domain=ORT_DOMAIN, _outputs=4 if keep else 1)
        return (outs[0], outs[3]) if keep else (outs, None)


class ResidualSumRule(SkipLayerNormRule):
    """``LayerNormalization(Add([Add(x, bias)], skip))`` -> ``LayerNormalization(Sum(x, [bias,] skip))``
    (target ort, ``for-provider=cpu``), where nothing else reads the sum.

    onnxruntime's fp32 CPU SkipLayerNormalization kernel
    (``contrib_ops/cpu/skip_layer_norm.cc``: a scalar loop, a division per
    element) is slower than the Add and the MLAS LayerNormalization kernel it
    replaces; its ``SkipLayerNormFusion`` (``core/optimizer/
    skip_layer_norm_fusion.cc``, ORT_ENABLE_EXTENDED and above) would still
    build it from an ``Add`` that only the norm reads. ``Sum`` is the same
    sum (``(x + bias) + skip``, in that order) and that fusion does not
    match it. Where the residual stream reads the sum too (pre-LN GPT-2,
    ViT), the Add is left: onnxruntime does not fuse it. Shapes as
    :class:`SkipLayerNormRule`.
    """

    name = "residual-sum"

    def check(self, ctx: CheckContext, x: ir.Value, skip: ir.Value, norm: ir.Node, bias: Any = None,
              **_: Any) -> CheckResult:
        if provider(ctx.options) != "cpu":
            return ctx.fail(f"for-provider={provider(ctx.options)}: rule skip-layernorm fuses the residual Add",
                            at=norm)
        if ctx.match.used_outside(1):
            return ctx.fail("the residual sum is read elsewhere too, so onnxruntime keeps the Add and "
                            "LayerNormalization apart as they are", at=norm)
        return self._check(ctx, x, skip, bias, norm)

    def rewrite(self, op: Any, x: ir.Value, skip: ir.Value, norm: ir.Node, bias: Any = None, **_: Any) -> Any:
        total = op.Sum(*(v for v in (x, bias, skip) if v is not None))
        attrs = {name: attr.value for name, attr in norm.attributes.items()}
        return op.LayerNormalization(total, *norm.inputs[1:], **attrs), None


@register_pass("fuse-norm")
class FuseNorm(FusionPass):
    """Fuse decomposed LayerNorm and RMSNorm into LayerNormalization / SimplifiedLayerNormalization / RMSNormalization.

    Rules ``layernorm`` and ``rmsnorm`` (see :mod:`graphopt.passes.fusion.norm`).
    LayerNormalization: any opset for target ort (onnxruntime's default-domain
    registration), opset 17+ otherwise. RMSNorm: ort's
    SimplifiedLayerNormalization, or ONNX RMSNormalization at opset 23+.
    """

    rules = (LayerNormRule(), RMSNormRule())


@dataclass(frozen=True)
class FuseSkipNormOptions:
    """Options of ``fuse-skip-norm``."""

    for_provider: str = field(default="auto", metadata={"doc": (
        "the onnxruntime execution provider the model is for: cuda fuses SkipLayerNormalization; cpu keeps "
        "the faster Add + LayerNormalization kernels, the residual Add written as Sum so that onnxruntime's own "
        "SkipLayerNormFusion leaves it (SkipSimplifiedLayerNormalization is fused for both); auto: the "
        "ort.provider config (graphopt --provider; default cpu)")})


@register_pass("fuse-skip-norm")
class FuseSkipNorm(FusionPass):
    """The residual Add + LayerNorm/RMSNorm in the form the onnxruntime execution provider runs fastest (target ort).

    Rule ``skip-rmsnorm`` fuses into com.microsoft
    SkipSimplifiedLayerNormalization. ``for-provider=cuda``: rule
    ``skip-layernorm`` fuses into SkipLayerNormalization.
    ``for-provider=cpu`` (what ``auto`` means unless the context's
    ``ort.provider`` says cuda): rule ``residual-sum`` writes the Add
    read only by a LayerNormalization as ``Sum`` instead (see
    :class:`ResidualSumRule`; on BERT-base 0.974 of the fused model's
    latency). Run after ``fuse-norm``. A no-op for targets onnx and tensorrt.

    Raises:
        InputError: ``for-provider`` is not auto, cpu or cuda (or
            ``ort.provider`` not cpu or cuda).
    """

    Options = FuseSkipNormOptions
    rules = (SkipLayerNormRule(), SkipRMSNormRule(), ResidualSumRule())

    def rule_options(self, ctx: Any) -> FuseSkipNormOptions:
        """The options with ``for-provider`` resolved (``auto``: the context's
        ``ort.provider``, see :func:`graphopt.passmanager.for_provider`)."""
        return replace(self.options, for_provider=for_provider(ctx, self.options.for_provider, self.name))

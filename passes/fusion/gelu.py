"""GELU fusions: the erf and tanh forms, and the bias Add before them.

Sources of the decomposed forms (Hendrycks & Gimpel, "Gaussian Error Linear
Units", 2016):

- erf form ``0.5 * x * (1 + erf(x / sqrt(2)))``: BERT/ViT ``GELUActivation``
  exported by the TorchScript exporter as ``Mul(Mul(x, Add(Erf(Div(x,
  1.4142)), 1)), 0.5)`` and by the dynamo exporter as ``Mul(x, Mul(0.5,
  Add(Erf(Div(x, 1.4142)), 1)))``; ``Mul(x, 0.7071)`` instead of the Div and
  ``Mul(Mul(x, 0.5), ...)`` are the tf2onnx / Keras spellings.
- tanh form ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``: GPT-2's
  ``NewGELUActivation`` (both exporters: ``Mul(Mul(x, 0.5), Add(Tanh(Mul(Add(x,
  Mul(Pow(x, 3), 0.044715)), 0.7978846)), 1))``).

Targets: ``com.microsoft.Gelu`` / ``FastGelu`` (ort), ONNX ``Gelu`` (opset 20,
``approximate="tanh"`` for the tanh form) for onnx and tensorrt. The bias
forms (``fuse-bias-gelu``): ``Gelu(Add(x, b))`` with a constant per-channel b
-> ``com.microsoft.BiasGelu(x, b)``, ``FastGelu(Add(x, b))`` -> ``FastGelu(x, b)``
(onnxruntime's transformers optimizer: ``fusion_biasgelu.py``).
"""

from __future__ import annotations

import math
from typing import Any

from graphopt import ir
from graphopt.pattern import CheckContext, CheckResult, Literal, Rule
from graphopt.passes.fusion.common import FLOAT_TYPES, ORT_DOMAIN, FusionPass, last_dim, needs_opset, vector
from graphopt.passmanager import register_pass

__all__ = ["GeluErfRule", "GeluTanhRule", "BiasGeluRule", "FuseGelu", "FuseBiasGelu"]

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf_arg(op: Any, x: Any, scaling: str) -> Any:
    return op.Div(x, _SQRT2) if scaling == "div" else op.Mul(x, 1.0 / _SQRT2)


def _tanh_core(op: Any, x: Any, cube: str) -> Any:
    x3 = op.Pow(x, 3.0) if cube == "pow" else op.Mul(x, op.Mul(x, x))
    inner = op.Add(x, op.Mul(x3, 0.044715))
    return op.Add(op.Tanh(op.Mul(inner, Literal(_SQRT_2_OVER_PI, 1e-3))), 1.0)


def _gelu_variant(core: str, grouping: str, form: str):  # noqa: ANN202 - a pattern method
    """``grouping``: where the 0.5 goes: ``outer`` ``(x * (1 + t)) * 0.5``,
    ``inner`` ``x * (0.5 * (1 + t))``, ``x`` ``(x * 0.5) * (1 + t)``."""

    def pattern(self, op, x):  # noqa: ANN001, ANN202
        one_plus = op.Add(op.Erf(_erf_arg(op, x, form)), 1.0) if core == "erf" else _tanh_core(op, x, form)
        if grouping == "outer":
            return op.Mul(op.Mul(x, one_plus), 0.5)
        if grouping == "inner":
            return op.Mul(x, op.Mul(one_plus, 0.5))
        return op.Mul(op.Mul(x, 0.5), one_plus)

    pattern.__name__ = f"{grouping}_{form}"
    return pattern


class _GeluBase(Rule):
    labels = frozenset({"fusion", "activation"})
    core = ""
    forms: tuple[str, ...] = ()

    def patterns(self):  # noqa: ANN201 - list[Pattern]
        for name in self.variants:
            if not hasattr(type(self), name):
                grouping, form = name.split("_", 1)
                setattr(type(self), name, _gelu_variant(self.core, grouping, form))
        return super().patterns()

    def check(self, ctx: CheckContext, x: ir.Value, **_: Any) -> CheckResult:
        if x.dtype not in FLOAT_TYPES:
            return ctx.fail(f"the input is {x.dtype}, not a float type", at=x)
        if ctx.target != "ort":
            return needs_opset(ctx, "Gelu", 20)
        return ctx.ok()


class GeluErfRule(_GeluBase):
    """``0.5 * x * (1 + erf(x / sqrt(2)))`` (any grouping of the 0.5, ``Div``
    by sqrt(2) or ``Mul`` by 1/sqrt(2)) -> ``com.microsoft.Gelu`` (ort) or
    ``Gelu`` (ONNX opset 20). Exact GELU; sources in the module docstring."""

    name = "gelu-erf"
    opsets = (9, None)  # Erf
    core = "erf"
    variants = tuple(f"{g}_{f}" for g in ("outer", "inner", "x") for f in ("div", "mul"))

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        if op.target == "ort":
            return op.Gelu(x, _domain=ORT_DOMAIN)
        return op.Gelu(x)


class GeluTanhRule(_GeluBase):
    """``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (``Pow(x, 3)``
    or ``x * x * x``) -> ``com.microsoft.FastGelu`` (ort) or
    ``Gelu(approximate="tanh")`` (ONNX opset 20). Source: GPT-2's
    ``NewGELUActivation``; FastGelu computes the same formula."""

    name = "gelu-tanh"
    core = "tanh"
    variants = tuple(f"{g}_{f}" for g in ("outer", "inner", "x") for f in ("pow", "mul"))

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        if op.target == "ort":
            return op.FastGelu(x, _domain=ORT_DOMAIN)
        return op.Gelu(x, approximate="tanh")


class BiasGeluRule(Rule):
    """``Gelu(Add(x, b))`` / ``FastGelu(Add(x, b))`` (com.microsoft, no bias
    yet) with b a constant per-channel vector -> ``BiasGelu(x, b)`` /
    ``FastGelu(x, b)`` (ort). Source: the MatMul + bias + GELU of every
    BERT/GPT-2/ViT FFN; onnxruntime's ``fusion_biasgelu.py``."""

    name = "bias-gelu"
    targets = frozenset({"ort"})
    labels = frozenset({"fusion", "activation", "bias"})
    variants = ("erf", "tanh")

    def erf(self, op, x, b):  # noqa: ANN001, ANN201
        return op.Gelu(op.Add(x, b), _domain=ORT_DOMAIN)

    def tanh(self, op, x, b):  # noqa: ANN001, ANN201
        return op.FastGelu(op.Add(x, b), _domain=ORT_DOMAIN, _label="fast")

    def check(self, ctx: CheckContext, x: ir.Value, b: ir.Value, **_: Any) -> CheckResult:
        if ir.const_tensor(x) is not None:
            return ctx.fail("both Add operands are constant", at=x)
        size = last_dim(ctx, x)
        if size is None:
            return ctx.fail("the input's last axis has no static size", at=x)
        _, ok = vector(ctx, b, size, "bias")
        if not ok:
            return ok
        return ctx.require(b.dtype == x.dtype, "the bias and the input differ in dtype", at=b)

    def rewrite(self, op: Any, x: ir.Value, b: ir.Value, fast: Any = None, **_: Any) -> Any:
        array = ir.const_array(b)
        if array.ndim != 1:
            b = op.initializer(array.reshape(-1), f"{b.name or 'bias'}_1d")
        if fast is not None:
            return op.FastGelu(x, b, _domain=ORT_DOMAIN)
        return op.BiasGelu(x, b, _domain=ORT_DOMAIN)


@register_pass("fuse-gelu")
class FuseGelu(FusionPass):
    """Fuse the erf and tanh GELU forms into Gelu / FastGelu (ort) or ONNX Gelu (opset 20).

    Rules ``gelu-erf`` and ``gelu-tanh`` (see :mod:`graphopt.passes.fusion.gelu`).
    """

    rules = (GeluErfRule(), GeluTanhRule())


@register_pass("fuse-bias-gelu")
class FuseBiasGelu(FusionPass):
    """Fuse the bias Add before a com.microsoft Gelu / FastGelu into BiasGelu / FastGelu's bias (target ort).

    Rule ``bias-gelu``; run after ``fuse-gelu``.
    """

    rules = (BiasGeluRule(),)

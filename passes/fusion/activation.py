"""Conv / Gemm + activation -> ``com.microsoft.FusedConv`` / ``FusedGemm`` (target ort).

onnxruntime's CPU kernels for FusedConv and FusedGemm apply the activation
in the same pass over the output (MLAS activation in the GEMM epilogue);
onnxruntime's own ``ConvActivationFusion`` / ``GemmActivationFusion`` build
the same nodes at session creation, so the fused model keeps its speed with
any session optimization level. Activations: ``Relu``, ``Sigmoid``, ``Tanh``,
``LeakyRelu(alpha)``, ``HardSigmoid(alpha, beta)`` and ``Clip`` with constant
min/max (``activation_params``), as onnxruntime's fusion accepts them.
TensorRT fuses these itself; standard ONNX has no fused form.
"""

from __future__ import annotations

from typing import Any

from graphopt import ir
from graphopt.pattern import CheckContext, CheckResult, Rule, Var, attribute_value
from graphopt.passes.fusion.common import ORT_DOMAIN, FusionPass
from graphopt.passmanager import register_pass

__all__ = ["ConvActivationRule", "GemmActivationRule", "FuseActivation"]

_SIMPLE = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip")


def _activation_params(act: ir.Node, opset: int) -> tuple[list[float] | None, str]:
    """The ``activation_params`` of an activation node, or (None, reason)."""
    if act.op_type == "LeakyRelu":
        return [float(attribute_value(act, "alpha", opset))], ""
    if act.op_type == "HardSigmoid":
        return [float(attribute_value(act, "alpha", opset)), float(attribute_value(act, "beta", opset))], ""
    if act.op_type == "Clip":
        if "min" in act.attributes or "max" in act.attributes:  # opset < 11
            return [float(attribute_value(act, "min", opset)), float(attribute_value(act, "max", opset))], ""
        bounds = []
        for i, default in ((1, -3.4028234663852886e38), (2, 3.4028234663852886e38)):
            if len(act.inputs) > i and act.inputs[i] is not None:
                array = ir.const_array(act.inputs[i], max_elements=1)
                if array is None:
                    return None, "the Clip bounds are not constant scalars"
                bounds.append(float(array.reshape(())))
            else:
                bounds.append(default)
        return bounds, ""
    return [], ""


class _ActivationBase(Rule):
    targets = frozenset({"ort"})
    labels = frozenset({"fusion", "activation"})
    producer = ""
    fused = ""
    variants = tuple(a.lower() for a in _SIMPLE)

    def patterns(self):  # noqa: ANN201 - list[Pattern]
        for act in _SIMPLE:
            name = act.lower()
            if not hasattr(type(self), name):
                setattr(type(self), name, _variant(self.producer, act))
        return super().patterns()

    def check(self, ctx: CheckContext, x: ir.Value, node: ir.Node, act: ir.Node, **_: Any) -> CheckResult:
        if x.dtype != ir.DataType.FLOAT:
            return ctx.fail(f"{self.fused} runs float32 only; the input is {x.dtype}", at=x)
        params, reason = _activation_params(act, ctx.opset)
        return ctx.require(params is not None, reason, at=act)

    def rewrite(self, op: Any, node: ir.Node, act: ir.Node, **_: Any) -> Any:
        params, _ = _activation_params(act, op.opset)
        attrs = {a.name: a.value for a in node.attributes.values()}
        attrs["activation"] = act.op_type
        if params:
            attrs.update(self.params(params))
        return getattr(op, self.fused)(*node.inputs, _domain=ORT_DOMAIN, **attrs)

    def params(self, params: list[float]) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


def _variant(producer: str, act: str):  # noqa: ANN202 - a pattern method
    def pattern(self, op, x):  # noqa: ANN001, ANN202
        inputs = (x, Var("w"), op.opt("b"))
        if act == "Clip":
            return op.Clip(getattr(op, producer)(*inputs, _label="node"), op.opt("lo"), op.opt("hi"), _label="act")
        return getattr(op, act)(getattr(op, producer)(*inputs, _label="node"), _label="act")

    pattern.__name__ = act.lower()
    return pattern


class ConvActivationRule(_ActivationBase):
    """``Act(Conv(x, W[, B]))`` -> ``com.microsoft.FusedConv(x, W[, B], activation=Act)``."""

    name = "conv-activation"
    producer = "Conv"
    fused = "FusedConv"

    def params(self, params: list[float]) -> dict[str, Any]:
        return {"activation_params": params}


class GemmActivationRule(_ActivationBase):
    """``Act(Gemm(A, B[, C]))`` -> ``com.microsoft.FusedGemm(..., activation=Act)``
    (``activation_alpha``/``activation_beta`` carry LeakyRelu's alpha,
    HardSigmoid's alpha/beta, Clip's min/max)."""

    name = "gemm-activation"
    producer = "Gemm"
    fused = "FusedGemm"

    def params(self, params: list[float]) -> dict[str, Any]:
        return dict(zip(("activation_alpha", "activation_beta"), params))


@register_pass("fuse-activation")
class FuseActivation(FusionPass):
    """Fuse Conv/Gemm + Relu/Clip/Sigmoid/Tanh/LeakyRelu/HardSigmoid into com.microsoft FusedConv/FusedGemm (target ort).

    Rules ``conv-activation`` and ``gemm-activation``.
    """

    rules = (ConvActivationRule(), GemmActivationRule())

"""Canonicalization before fusion: put what exporters spell differently into
one form, so the fusion patterns need one spelling.

- ``softmax-nan-guard``: ``Where(IsNaN(Softmax(s)), 0, Softmax(s))`` ->
  ``Softmax(s)``. PyTorch's SDPA decomposition (both exporters, Hugging Face
  ``attn_implementation="sdpa"``) guards fully masked rows, which produce NaN
  only when the mask holds ``-inf``. The guard is dropped when the scores are
  unmasked or masked by finite constants (the dynamo export's ``finfo.min``
  mask ``Where(cond, 0, -3.4e38)``), where Softmax cannot produce NaN from the
  mask; the TorchScript export's ``Where(cond, 0, -inf)`` is first rebuilt
  with ``finfo.min`` (option ``finite-masks``, see :class:`CanonicalizeOptions`).
- ``scale-after-matmul``: ``MatMul(Mul(q, a), Mul(k, b))`` (SDPA's
  ``sqrt(scale)`` on both operands), ``MatMul(Mul(q, a), k)`` (PaddleOCR's
  pre-scaled query) and the ``Div`` forms -> ``Mul(MatMul(q, k), a * b)``: one
  scalar scale on the scores, where the attention pattern expects it.
- ``transpose-via-reshape``: ``Reshape(Transpose(Reshape(k, [-1, S, H]),
  [0, 2, 1]), [B, N, H, S])`` -> ``Transpose(k, [0, 1, 3, 2])`` (the dynamo
  exporter's ``k.transpose(-2, -1)`` inside SDPA), proven with symbolic shapes.
- ``reshape-to-same-shape``: a Reshape whose output has its input's symbolic
  shape (``Reshape(o, [B, -1, S, H])`` after SDPA in the TorchScript export).
- ``gemm-as-matmul``: ``Reshape(Gemm(Reshape(x, [-1, K]), W, b), [B, S, N])``
  with ``x: [B, S, K]`` -> ``Add(MatMul(x, W), b)``: GPT-2's ``Conv1D``
  (both exporters) flattens to 2-D for Gemm; in 3-D the projection joins the
  attention and bias fusions like every other model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.pattern import CheckContext, CheckResult, Rule
from graphopt.passes.fusion.common import FLOAT_TYPES, FusionPass
from graphopt.passmanager import register_pass

__all__ = ["CanonicalizeOptions", "SoftmaxNanGuard", "mask_kind", "ScaleAfterMatMul", "TransposeViaReshape", "ReshapeToSameShape", "GemmAsMatMul",
           "CanonicalizeFusion"]


def _where_branches(value: ir.Value | None) -> list[ir.Value] | None:
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Where" or len(producer.inputs) != 3:
        return None
    return list(producer.inputs[1:])


def mask_kind(value: ir.Value | None) -> str:
    """``finite`` for a finite constant or ``Where(c, a, b)`` of finite
    constants, ``neg-inf`` when such constants also hold ``-inf`` (but no
    NaN or ``+inf``), ``unknown`` otherwise."""
    arrays = []
    array = ir.const_array(value, max_elements=1 << 20)
    if array is not None:
        arrays = [array]
    else:
        branches = _where_branches(value)
        if branches is None:
            return "unknown"
        arrays = [ir.const_array(b, max_elements=1 << 20) for b in branches]
        if any(a is None for a in arrays):
            return "unknown"
    if all(np.isfinite(a).all() for a in arrays):
        return "finite"
    if any(np.isnan(a).any() or np.isposinf(a).any() for a in arrays):
        return "unknown"
    return "neg-inf"


@dataclass(frozen=True)
class CanonicalizeOptions:
    """Options of ``canonicalize-fusion``."""

    finite_masks: bool = field(default=True, metadata={"doc": (
        "replace -inf in an attention mask Where(cond, 0, -inf) by the dtype's lowest finite value so SDPA's NaN "
        "guard can be dropped; outputs change only in query rows whose every key is masked (the guard gave zeros, "
        "the fused kernels give the mean of V): padding rows")})


class SoftmaxNanGuard(Rule):
    """``Where(IsNaN(p), 0, p)`` with ``p = Softmax(s)`` -> ``p`` when ``s`` is
    unmasked or masked by finite values (see the module docstring); with
    option ``finite-masks``, a ``Where(c, 0, -inf)`` mask is rebuilt with the
    lowest finite value first."""

    name = "softmax-nan-guard"
    opsets = (9, None)  # IsNaN
    labels = frozenset({"canonicalize", "attention"})
    variants = ("masked", "unmasked")

    def masked(self, op, x, m):  # noqa: ANN001, ANN201
        p = op.Softmax(op.Add(x, m), axis=op.capture("axis"), _label="softmax")
        return op.Where(op.IsNaN(p), 0.0, p)

    def unmasked(self, op, s):  # noqa: ANN001, ANN201
        p = op.Softmax(s, _label="softmax")
        return op.Where(op.IsNaN(p), 0.0, p)

    def check(self, ctx: CheckContext, m: Any = None, s: Any = None, **_: Any) -> CheckResult:
        if m is None:
            producer = s.producer()
            return ctx.require(producer is None or producer.op_type != "Add",
                               "the scores are an Add the masked form did not match", at=s)
        kind = mask_kind(m)
        if kind == "neg-inf" and not getattr(ctx.options, "finite_masks", True):
            return ctx.fail("the mask holds -inf (option finite-masks=false keeps the guard)", at=m)
        return ctx.require(kind != "unknown", "the scores are masked by a value that may hold -inf or NaN", at=m)

    def rewrite(self, op: Any, softmax: ir.Node, x: Any = None, m: Any = None, **_: Any) -> Any:
        if m is None or mask_kind(m) == "finite":
            return softmax.outputs[0]
        lowest = np.finfo(m.dtype.numpy()).min
        where = m.producer()
        branches = []
        for i, branch in enumerate(where.inputs[1:]):
            array = ir.const_array(branch)
            fixed = np.where(np.isneginf(array), lowest, array).astype(array.dtype)
            branches.append(op.initializer(fixed, f"finite_mask_{i}"))
        mask = op.Where(where.inputs[0], *branches)
        return op.Softmax(op.Add(x, mask), axis=softmax.attributes["axis"].as_int()
                          if "axis" in softmax.attributes else None)


def _scale_variant(left: str, right: str):  # noqa: ANN202 - a pattern method
    def pattern(self, op, q, k, a, b):  # noqa: ANN001, ANN202
        lhs = {"mul": lambda: op.Mul(q, a), "div": lambda: op.Div(q, a), "none": lambda: q}[left]()
        rhs = {"mul": lambda: op.Mul(k, b), "div": lambda: op.Div(k, b), "none": lambda: k}[right]()
        return op.MatMul(lhs, rhs)

    pattern.__name__ = f"{left}_{right}"
    return pattern


class ScaleAfterMatMul(Rule):
    """``MatMul(q * a, k * b)`` -> ``MatMul(q, k) * (a * b)`` for scalar
    constants a, b (either may be absent, or a divisor) and non-constant q, k."""

    name = "scale-after-matmul"
    labels = frozenset({"canonicalize", "attention"})
    variants = tuple(f"{l}_{r}" for l in ("mul", "div", "none") for r in ("mul", "div", "none")
                     if (l, r) != ("none", "none"))

    def patterns(self):  # noqa: ANN201 - list[Pattern]
        for name in self.variants:
            if not hasattr(type(self), name):
                setattr(type(self), name, _scale_variant(*name.split("_")))
        return super().patterns()

    def check(self, ctx: CheckContext, q: ir.Value, k: ir.Value, a: Any = None, b: Any = None,
              **_: Any) -> CheckResult:
        if ir.const_tensor(q) is not None or ir.const_tensor(k) is not None:
            return ctx.fail("an operand is constant (a weight MatMul, not attention scores)", at=q)
        if q.dtype not in FLOAT_TYPES:
            return ctx.fail(f"the operands are {q.dtype}", at=q)
        for v in (a, b):
            if v is not None and (ctx.scalar(v) is None or not math.isfinite(ctx.scalar(v)) or ctx.scalar(v) == 0):
                return ctx.fail("a scale is not a finite non-zero constant scalar", at=v)
        return ctx.ok()

    def rewrite(self, op: Any, q: ir.Value, k: ir.Value, a: Any = None, b: Any = None, **_: Any) -> Any:
        name = op.match.pattern.name
        left, right = name.split("_")
        scale = 1.0
        for side, v in ((left, a), (right, b)):
            if v is not None:
                s = float(np.asarray(ir.const_array(v)).reshape(()))
                scale *= s if side == "mul" else 1.0 / s
        c = op.initializer(np.asarray(scale, dtype=q.dtype.numpy()), "attention_scale")
        return op.Mul(op.MatMul(q, k), c)


def _known(shape: list | None) -> bool:
    return shape is not None and all(isinstance(d, (int, str)) for d in shape)


class TransposeViaReshape(Rule):
    """``Reshape(Transpose(Reshape(x, t1), [0, 2, 1]), t2)`` -> ``Transpose(x, [0, 1, 3, 2])``
    when ``x: [a, b, c, d]``, the inner Reshape gives ``[*, c, d]`` and the
    outer one ``[a, b, d, c]`` (symbolic shapes)."""

    name = "transpose-via-reshape"
    opsets = (5, None)  # Reshape with a shape input
    labels = frozenset({"canonicalize", "attention"})

    def pattern(self, op, x, t1, t2):  # noqa: ANN001, ANN201
        inner = op.Reshape(x, t1, _label="inner")
        return op.Reshape(op.Transpose(inner, perm=[0, 2, 1]), t2, _label="outer")

    def check(self, ctx: CheckContext, x: ir.Value, inner: ir.Node, outer: ir.Node, **_: Any) -> CheckResult:
        xs, ins, outs = ctx.shape(x), ctx.shape(inner.outputs[0]), ctx.shape(outer.outputs[0])
        if not (_known(xs) and _known(ins) and _known(outs)) or len(xs) != 4 or len(ins) != 3 or len(outs) != 4:
            return ctx.fail(f"shapes {xs} -> {ins} -> {outs} are not a known 4-D -> 3-D -> 4-D chain", at=x)
        a, b, c, d = xs
        return ctx.require(ins[1:] == [c, d] and outs == [a, b, d, c],
                           f"shapes {xs} -> {ins} -> {outs} do not swap the last two axes", at=x)

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        return op.Transpose(x, perm=[0, 1, 3, 2])


class ReshapeToSameShape(Rule):
    """``Reshape(x, t)`` whose output has x's symbolic shape -> ``x``."""

    name = "reshape-to-same-shape"
    opsets = (5, None)
    labels = frozenset({"canonicalize"})

    def pattern(self, op, x, t):  # noqa: ANN001, ANN201
        return op.Reshape(x, t, _label="reshape")

    def check(self, ctx: CheckContext, x: ir.Value, reshape: ir.Node, **_: Any) -> CheckResult:
        xs, ys = ctx.shape(x), ctx.shape(reshape.outputs[0])
        if not _known(xs) or not _known(ys):
            return ctx.fail(f"shapes {xs} -> {ys} are not fully known", at=x)
        if reshape.outputs[0].is_graph_output() and (x.is_graph_input() or x.is_initializer()):
            return ctx.fail("a graph output cannot be replaced by a graph input", at=x)
        return ctx.require(xs == ys, f"the Reshape changes {xs} into {ys}", at=x)

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> Any:
        return op.Identity(x) if op.match.outputs[0].is_graph_output() else x


class GemmAsMatMul(Rule):
    """``Reshape(Gemm(Reshape(x, [-1, K]), W[, b]), t)`` with x ``[B, S, K]`` and
    output ``[B, S, N]`` -> ``Add(MatMul(x, W), b)`` (``W`` transposed once
    under ``transB``). Requires alpha = beta = 1, transA = 0, a constant 2-D W
    and a per-column b. Source: GPT-2's ``Conv1D`` in both exporters."""

    name = "gemm-as-matmul"
    opsets = (7, None)  # Gemm broadcasting C
    labels = frozenset({"canonicalize"})
    variants = ("with_bias", "plain")

    def with_bias(self, op, x, t1, w, c, t2):  # noqa: ANN001, ANN201
        return op.Reshape(op.Gemm(op.Reshape(x, t1), w, c, _label="gemm"), t2, _label="outer")

    def plain(self, op, x, t1, w, t2):  # noqa: ANN001, ANN201
        return op.Reshape(op.Gemm(op.Reshape(x, t1), w, _label="gemm"), t2, _label="outer")

    def check(self, ctx: CheckContext, x: ir.Value, w: ir.Value, gemm: ir.Node, outer: ir.Node, c: Any = None,
              **_: Any) -> CheckResult:
        attrs = gemm.attributes
        get = lambda name, default: attrs[name].value if name in attrs else default  # noqa: E731
        if get("alpha", 1.0) != 1.0 or get("beta", 1.0) != 1.0 or get("transA", 0) != 0:
            return ctx.fail("the Gemm has alpha/beta != 1 or transA", at=gemm)
        weight = ir.const_tensor(w)
        if weight is None or len(weight.shape) != 2 or x.dtype not in FLOAT_TYPES:
            return ctx.fail("the Gemm's B is not a constant 2-D float matrix", at=w)
        xs, ys = ctx.shape(x), ctx.shape(outer.outputs[0])
        n = weight.shape[0] if get("transB", 0) else weight.shape[1]
        if not _known(xs) or not _known(ys) or len(xs) != 3 or len(ys) != 3 or ys != [xs[0], xs[1], n]:
            return ctx.fail(f"the Reshapes do not flatten {xs} to 2-D and back to [B, S, {n}] ({ys})", at=x)
        if c is not None:
            bias = ctx.const(c)
            if bias is None or bias.size != n or (bias.ndim == 2 and bias.shape[0] != 1):
                return ctx.fail("C is not a constant row of N values", at=c)
        return ctx.ok()

    def rewrite(self, op: Any, x: ir.Value, w: ir.Value, gemm: ir.Node, c: Any = None, **_: Any) -> Any:
        attrs = gemm.attributes
        if "transB" in attrs and attrs["transB"].as_int():
            w = op.initializer(np.ascontiguousarray(ir.const_array(w).T), f"{w.name or 'weight'}_t")
        y = op.MatMul(x, w)
        if c is None:
            return y
        bias = ir.const_array(c)
        if bias.ndim != 1:
            c = op.initializer(bias.reshape(-1), f"{c.name or 'bias'}_1d")
        return op.Add(y, c)


@register_pass("canonicalize-fusion")
class CanonicalizeFusion(FusionPass):
    """Put exporter variants into the one form the fusion patterns match.

    Rules ``softmax-nan-guard``, ``scale-after-matmul``, ``transpose-via-reshape``,
    ``reshape-to-same-shape``, ``gemm-as-matmul`` (see
    :mod:`graphopt.passes.fusion.canonicalize`). Exact up to float rounding of
    the merged attention scale. Runs before the fusion passes in ``O2``.
    """

    Options = CanonicalizeOptions
    rules = (SoftmaxNanGuard(), ScaleAfterMatMul(), TransposeViaReshape(), ReshapeToSameShape(), GemmAsMatMul())

"""Rotary position embedding fusion (Su et al., "RoFormer", 2021).

Matches Hugging Face's ``apply_rotary_pos_emb`` with ``rotate_half`` (the
non-interleaved form) on ``[B, N, S, H]`` heads, ``x * cos + cat(-x2, x1) *
sin`` with ``[1, 1, S, H]`` tables whose halves are equal
(``LlamaRotaryEmbedding``), as both torch exporters emit it. Rotary
embeddings that ``fuse-attention`` already took into a GroupQueryAttention
are gone by then; this pass fuses the rest:

- ort: ``com.microsoft.RotaryEmbedding(x, position_ids=[0], cos_cache,
  sin_cache)``: one-element position ids are an offset, so token ``i`` reads
  row ``i`` of the ``[S, H/2]`` caches sliced from the model's own tables;
- onnx / tensorrt (opset 23): ``RotaryEmbedding(x, cos_cache, sin_cache)``
  with ``[B, S, H/2]`` caches (no position ids), expanded over the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphopt import ir
from graphopt.pattern import CheckContext, CheckResult, Rule
from graphopt.passes.fusion.attention_parts import _rope, rotary_of
from graphopt.passes.fusion.common import FLOAT_TYPES, ORT_DOMAIN, FusionPass, needs_opset
from graphopt.passmanager import register_pass

__all__ = ["RotaryRule", "FuseRotary"]


class RotaryRule(Rule):
    """``x * cos + rotate_half(x) * sin`` -> RotaryEmbedding (module docstring)."""

    name = "rotary"
    opsets = (10, None)  # Slice with starts/ends/axes inputs
    labels = frozenset({"fusion", "attention", "rotary"})

    def pattern(self, op, x, cos, sin, s1, e1, a1, s2, e2, a2):  # noqa: ANN001, ANN201
        return _rope(op, x, cos, sin, s1, e1, a1, s2, e2, a2)

    def check(self, ctx: CheckContext, x: ir.Value, **_: Any) -> CheckResult:
        if x.dtype not in FLOAT_TYPES:
            return ctx.fail(f"the input is {x.dtype}, not a float type", at=x)
        if ctx.rank(x) != 4:
            return ctx.fail("the rotated value is not 4-D [B, N, S, H]", at=x)
        found = rotary_of(ctx, ctx.match.outputs[0])
        if found is None or isinstance(found, str):
            return ctx.fail(found or "not a rotary embedding", at=x)
        if ctx.target != "ort":
            return needs_opset(ctx, "RotaryEmbedding", 23)
        return ctx.ok()

    def rewrite(self, op: Any, x: ir.Value, cos: ir.Value, sin: ir.Value, **_: Any) -> Any:
        h = op.env.shapes.shape(x)[-1]
        half = h // 2
        ints = lambda v, name: op.initializer(np.array(v, np.int64), name)  # noqa: E731
        starts, ends, axes = ints([0], "rope_start"), ints([half], "rope_half"), ints([-1], "rope_axis")
        if op.target == "ort":
            shape = ints([-1, half], "rope_cache_shape")
            caches = [op.Reshape(op.Slice(t, starts, ends, axes), shape) for t in (cos, sin)]
            return op.RotaryEmbedding(x, ints([0], "rope_offset"), *caches, interleaved=0, _domain=ORT_DOMAIN)
        batch = op.Gather(op.Shape(x), ints([0], "batch_axis"), axis=0)
        shape = ints([1, -1, half], "rope_cache_shape3")
        expand_to = op.Concat(batch, ints([1, 1], "rope_ones"), axis=0)  # [B, 1, 1] broadcasts [1, S, H/2]
        caches = [op.Expand(op.Reshape(op.Slice(t, starts, ends, axes), shape), expand_to) for t in (cos, sin)]
        return op.RotaryEmbedding(x, *caches, interleaved=0)


@register_pass("fuse-rotary")
class FuseRotary(FusionPass):
    """Fuse rotary position embeddings into com.microsoft RotaryEmbedding (ort) or ONNX RotaryEmbedding (opset 23).

    Rule ``rotary``; run after ``fuse-attention`` (which takes rotary
    embeddings into GroupQueryAttention for ort).
    """

    rules = (RotaryRule(),)

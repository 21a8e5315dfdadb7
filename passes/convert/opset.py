"""upgrade-opset: raise the model's default-domain opset, when the user allows it.

Fusions for ``--target onnx`` and ``tensorrt`` need newer operators than
exporters write (``Gelu``: opset 20; ``RMSNormalization``, ``Attention``,
``RotaryEmbedding``: 23). graphopt never changes a model's opset on its own:
this pass runs only with an explicit version (its option, or the config key
``opset.upgrade`` that ``graphopt optimize --opset N`` sets).

The conversion is ONNX's own version converter
(``onnx.version_converter.convert_version``, the operator adapters of the
ONNX repository) on the model's graph with every initializer over 1 KiB
replaced by a data-less external reference, so weights are neither read nor
copied; they are put back by name afterwards, still memory-mapped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx
from onnx import version_converter

from graphopt import ir
from graphopt.errors import PassError
from graphopt.pattern import default_opset
from graphopt.passmanager import Pass, PassResult, register_pass

__all__ = ["UpgradeOpset", "UpgradeOpsetOptions", "MAX_OPSET"]

_LOG = logging.getLogger(__name__)

MAX_OPSET = 23
"""Highest default-domain opset graphopt upgrades to: the fused operators it
emits are defined by then, and onnxruntime 1.32 and TensorRT 10.15 run it."""

_PLACEHOLDER = "__graphopt_upgrade_opset__"


@dataclass(frozen=True)
class UpgradeOpsetOptions:
    """Options of ``upgrade-opset``."""

    version: int = field(default=0, metadata={"doc": (
        f"the opset to upgrade to (at most {MAX_OPSET}); 0 takes the config key opset.upgrade, "
        "and nothing happens when that is 0 too or not above the model's opset")})


@register_pass("upgrade-opset")
class UpgradeOpset(Pass):
    """Upgrade the default-domain opset with ONNX's version converter (only when asked to).

    Weights stay where they are (see :mod:`graphopt.passes.convert.opset`).
    Models with model-local functions are left alone (the converter does not
    convert function bodies). Stats: ``from``, ``to``.

    Raises:
        PassError: a version above :data:`MAX_OPSET`, or the converter has no
            adapter for an operator of the model (the message names it).
    """

    Options = UpgradeOpsetOptions

    def run(self, model: ir.Model, ctx: object) -> PassResult:
        target = self.options.version or (ctx.get("opset.upgrade") if hasattr(ctx, "get") else 0)
        current = default_opset(model)
        if not target or target <= current:
            return PassResult(modified=False, stats={"from": current, "to": current})
        if target > MAX_OPSET:
            raise PassError(f"upgrade-opset: opset {target} is above {MAX_OPSET}, the highest graphopt upgrades to",
                            self.name)
        if model.functions:
            _LOG.warning("upgrade-opset: the model has local functions; opset %d kept", current)
            return PassResult(modified=False, stats={"from": current, "to": current})
        saved = _stub_weights(model)
        try:
            proto = ir.serde.serialize_model(model)
        finally:
            for value, tensor in saved.items():
                value.const_value = tensor
        try:
            converted = version_converter.convert_version(proto, target)
        except (RuntimeError, onnx.checker.ValidationError) as e:
            raise PassError(f"upgrade-opset: ONNX's version converter cannot take this model from opset {current} to "
                            f"{target}: {e}", self.name) from e
        new = ir.serde.deserialize_model(converted)
        tensors = {v.name: t for v, t in saved.items()}
        for graph in ir.all_graphs(new):
            for name, value in graph.initializers.items():
                if name in tensors:
                    value.const_value = tensors[name]
        model.graph = new.graph  # the opset imports live on the graph (onnx-ir)
        return PassResult(modified=True, stats={"from": current, "to": target})


def _stub_weights(model: ir.Model) -> dict[ir.Value, ir.TensorProtocol]:
    """Replace initializers over 1 KiB by data-less external references;
    returns what to put back."""
    saved: dict[ir.Value, ir.TensorProtocol] = {}
    for graph in ir.all_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.nbytes <= 1024 or tensor.dtype == ir.DataType.STRING:
                continue
            saved[value] = tensor
            value.const_value = ir.ExternalTensor(_PLACEHOLDER, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape,
                                                  name=value.name)
    return saved

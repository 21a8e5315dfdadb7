"""qdq: calibrated static INT8 quantization by QuantizeLinear/DequantizeLinear
insertion, placed for the target runtime, with mixed precision under an
accuracy budget.

Steps: plan the sites for ``ctx.target``
(:mod:`~graphopt.passes.quantization.placement`), calibrate the ranges of
their activations in one pass over ``ctx.calibration``
(:mod:`~graphopt.passes.quantization.collect`), optionally keep the most
sensitive sites float until the budget holds
(:mod:`~graphopt.passes.quantization.sensitivity`), insert the pairs
(:mod:`~graphopt.passes.quantization.insert`), and record every tensor's
choice in the model's metadata (``graphopt.quantization``, JSON).
The technique is post-training static quantization as in onnxruntime's
``quantize_static`` (QDQ format) and TensorRT's explicit quantization.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from graphopt import ir
from graphopt.errors import InputError
from graphopt.passes.quantization.insert import QuantConfig, activation_names, insert_qdq
from graphopt.passes.quantization.placement import plan_sites
from graphopt.passmanager import Pass, PassResult, register_pass
from graphopt.passmanager.context import register_config

log = logging.getLogger(__name__)

__all__ = ["QDQ", "QDQOptions", "METADATA_KEY"]

METADATA_KEY = "graphopt.quantization"
"""Model metadata key holding the JSON record of the quantization choices."""

register_config("quantize.progress", bool, False, "show a progress bar over calibration batches")


@dataclass(frozen=True)
class QDQOptions:
    """Options of :class:`QDQ`."""

    method: str = field(default="minmax", metadata={"doc": "activation range calibration: minmax, percentile, "
                                                           "entropy (KL divergence) or mse"})
    percentile: float = field(default=99.999, metadata={"doc": "percentile of |x| kept by method=percentile"})
    activation_type: str = field(default="uint8", metadata={"doc": "uint8 or int8 activations (target tensorrt: "
                                                                    "always symmetric int8)"})
    per_channel: bool = field(default=True, metadata={"doc": "weights per output channel (else per tensor)"})
    exclude_ops: tuple[str, ...] = field(default=(), metadata={"doc": "op types kept float, e.g. Conv|Gemm"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"doc": "node-name glob patterns kept float"})
    min_gemm: int = field(default=4096, metadata={"doc": "MatMul/Gemm weights with fewer elements stay float"})
    report_sqnr: bool = field(default=True, metadata={"doc": "measure each site's output SQNR (all sites "
                                                             "quantized vs float, on the calibration data) into "
                                                             "the metadata record"})
    budget_batches: int = field(default=8, metadata={"doc": "evaluation batches the float fallbacks of a budget "
                                                           "are decided on (the first ones)"})
    budget_cosine: float = field(default=0.0, metadata={"doc": "keep the most sensitive sites float until output "
                                                               "cosine on the evaluation (else calibration) data is at least this "
                                                               "(0: the context's budget, or none)"})


def config_for(target: str, options: QDQOptions) -> QuantConfig:
    """The :class:`QuantConfig` of a target: TensorRT takes symmetric int8 only."""
    if target == "tensorrt":
        return QuantConfig("int8", True, "int8", options.per_channel, True)
    if options.activation_type not in ("uint8", "int8"):
        raise InputError(f"qdq: activation-type must be uint8 or int8, not {options.activation_type!r}")
    return QuantConfig(options.activation_type, False, "int8", options.per_channel, True, fold_bias=target == "ort")


@register_pass("qdq")
class QDQ(Pass):
    """Quantize Conv/MatMul/Gemm (and com.microsoft Attention for target ort) to INT8
    with calibrated QuantizeLinear/DequantizeLinear pairs placed for the target.

    Needs calibration data in the pass context (``PassContext(calibration=...)``,
    ``graphopt quantize --calib``). Activations are per tensor (uint8 asymmetric
    by default; symmetric int8 for TensorRT), weights per channel symmetric int8,
    Conv biases int32. With a budget (``budget-cosine``, or the context's
    ``accuracy_budget={"cosine": c}`` or ``{"argmax": a}`` for top-1
    agreement), the sites whose quantization alone hurts
    the outputs most stay float until the budget holds; ``accuracy_budget=
    {"metric": fn, "threshold": t}`` uses a task metric instead, where
    ``fn(outputs, reference) -> float`` (higher is better) gets per-batch
    output dicts (see :data:`~graphopt.passes.quantization.sensitivity.Metric`).
    The budget is measured on the context's ``evaluation`` data when it has
    some (held-out inputs: ranges fitted to the calibration data score better
    on it than on new inputs), else on the calibration data.

    Raises:
        InputError: no calibration data, calibration data that does not fit the
            model, an unknown method or type, or a default-domain opset below 13.
    """

    Options = QDQOptions
    requires = frozenset({"topo-sorted", "shapes-inferred"})
    lossy = True

    def run(self, model: ir.Model, ctx) -> PassResult:  # noqa: ANN001 - PassContext
        from graphopt.passes.quantization.collect import collect_ranges
        from graphopt.passes.quantization.sensitivity import METRICS, keep_float_for_budget, layer_sqnr

        opts = self.options
        if ctx.calibration is None:
            raise InputError("the qdq pass needs calibration data: give graphopt quantize --calib PATH (an .npz, a "
                             "folder of .npz or input_N.pb files) or --calib generate, or PassContext(calibration=...)")
        config = config_for(ctx.target, opts)
        if ctx.target == "ort":  # onnxruntime's CPU QDQ fusion takes MatMul, not Gemm with a float output
            from graphopt.passes.quantization.gemm import unfuse_gemms

            unfuse_gemms(model.graph, opts.min_gemm)
        plan = plan_sites(model, ctx.target, opts.exclude_ops, opts.exclude_nodes, opts.min_gemm)
        if not plan.sites:
            return PassResult(False, {"sites": 0, **{f"skipped {k}": v for k, v in plan.skipped.items()}})
        names = activation_names(plan)
        observer_options = {"percentile": opts.percentile} if opts.method == "percentile" else {}
        ranges = collect_ranges(model, names, ctx.calibration, method=opts.method, options=observer_options,
                                progress=bool(ctx.get("quantize.progress")))
        kept: list[str] = []
        budget = dict(ctx.accuracy_budget or {})
        held_out = ctx.calibration if ctx.evaluation is None else ctx.evaluation
        if opts.budget_cosine:
            budget = {"cosine": opts.budget_cosine}
        if "metric" in budget:
            if "threshold" not in budget or not callable(budget["metric"]):
                raise InputError("accuracy_budget with a metric needs {'metric': callable(outputs, reference) -> "
                                 "float, 'threshold': float}")
            kept = keep_float_for_budget(model, plan, ranges, config, held_out, float(budget["threshold"]),
                                         budget["metric"], max_batches=opts.budget_batches)
        elif len(budget) == 1 and next(iter(budget)) in METRICS:
            name, threshold = next(iter(budget.items()))
            kept = keep_float_for_budget(model, plan, ranges, config, held_out, float(threshold),
                                         METRICS[name], max_batches=opts.budget_batches)
        elif budget:
            raise InputError(f"unknown accuracy budget {sorted(budget)}; give one of {{'cosine': 0.99}}, "
                             "{'argmax': 0.99} or {'metric': callable, 'threshold': value}")
        sqnr = layer_sqnr(model, plan, ranges, config, ctx.calibration) if opts.report_sqnr and plan.sites else {}
        result = insert_qdq(model, plan, ranges, config)
        record = {
            "target": ctx.target, "method": opts.method, "activation_type": config.activation_type,
            "symmetric_activations": config.symmetric_activations, "weight_type": config.weight_type,
            "per_channel": config.per_channel, "kept_float": kept, "activations": result.activations,
            "sqnr_db": {k: (round(v, 3) if v != float("inf") else "inf") for k, v in sqnr.items()},
        }
        model.metadata_props[METADATA_KEY] = json.dumps(record, sort_keys=True)
        stats = {"sites": len(plan.sites), "weights": result.weights, "biases": result.biases,
                 "qattention": result.attention, "bias into MatMulIntegerToFloat": result.folded_biases, "activations": len(result.activations), "kept float": len(kept)}
        stats.update({f"skipped {k}": v for k, v in sorted(plan.skipped.items())})
        return PassResult(True, stats)

"""Mixed precision under an accuracy budget: measure each site's sensitivity
and keep the most sensitive sites in float until the budget holds.

Sensitivity of a site = the output cosine on the calibration data when only
that site is quantized (the "one layer at a time" analysis of Wu et al.,
"Integer Quantization for Deep Learning Inference", NVIDIA 2020, section 6,
and ModelOpt's/AIMET's per-layer sensitivity). All configurations run in one
onnxruntime session of the *switched* model
(:func:`~graphopt.passes.quantization.insert.insert_qdq` with
``switches=True``): a boolean input per site picks its quantized or float
inputs, so no model is rebuilt per configuration.

The search is greedy: quantize every site; while the budget fails, return the
most sensitive remaining site to float.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.deadline import check
from graphopt.errors import InputError
from graphopt.calibrate.metrics import METRICS, Metric, argmax_agreement, output_cosine
from graphopt.passes.quantization.insert import QuantConfig, insert_qdq
from graphopt.passes.quantization.placement import Plan

log = logging.getLogger(__name__)

__all__ = ["Metric", "METRICS", "argmax_agreement", "output_cosine", "Sensitivity", "site_sensitivity", "keep_float_for_budget", "plan_sites_like",
           "layer_sqnr"]

MAX_BATCHES = 8
"""Calibration batches the sensitivity analysis uses at most."""


@dataclass(frozen=True)
class Sensitivity:
    """One site's score when it alone is quantized (``metric`` of the outputs)."""

    site: str
    op_type: str
    score: float


class _Switched:
    """The switched model of a plan and a session over it."""

    def __init__(self, model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig,
                 batches: list[Mapping[str, np.ndarray]], expose: Sequence[str] = ()) -> None:
        import tempfile
        from pathlib import Path

        from graphopt.passes.quantization.activations import activation_session

        copy = ir.clone(model)
        copy_plan = plan_sites_like(copy, plan)
        result = insert_qdq(copy, copy_plan, ranges, config, switches=True)
        self.flags = [result.switches[f"site{i}"] for i in range(len(plan.sites))]
        self._workdir = tempfile.TemporaryDirectory(prefix="graphopt-sensitivity-")
        self.session, self.outputs = activation_session(copy, list(expose), Path(self._workdir.name), "basic")
        self.batches = batches
        names = {i.name for i in self.session.get_inputs()}
        self.feeds = [{k: np.asarray(v) for k, v in b.items() if k in names} for b in batches]

    def run(self, on: set[int]) -> list[dict[str, np.ndarray]]:
        return [self.run_batch(on, i) for i in range(len(self.feeds))]

    def run_batch(self, on: set[int], index: int) -> dict[str, np.ndarray]:
        """The outputs on batch ``index`` with the sites ``on`` quantized."""
        check("INT8 sensitivity")
        flags = {name: np.array(i in on) for i, name in enumerate(self.flags)}
        return dict(zip(self.outputs, self.session.run(self.outputs, {**self.feeds[index], **flags})))

    def close(self) -> None:
        self._workdir.cleanup()


def plan_sites_like(model: ir.Model, plan: Plan) -> Plan:
    """The same sites as ``plan`` (made on another copy of the model) in ``model``,
    matched by position among the nodes of the main graph."""
    nodes = list(model.graph)
    positions = {id(n): i for i, n in enumerate(plan.sites[0].node.graph)} if plan.sites else {}
    copy = Plan(skipped=plan.skipped.copy())
    for site in plan.sites:
        node = nodes[positions[id(site.node)]]
        output = None
        if site.output is not None:
            producer = site.output.producer()
            output = nodes[positions[id(producer)]].outputs[site.output.index()]
        copy.sites.append(type(site)(node, site.activations, site.weight, site.bias, output))
    copy.residuals = [(nodes[positions[id(add)]], idx) for add, idx in plan.residuals]
    return copy


def site_sensitivity(model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig,
                     data: Iterable[Mapping[str, np.ndarray]], metric: Metric = output_cosine) -> list[Sensitivity]:
    """Score every site of ``plan`` quantized alone, most sensitive (lowest score) first.

    Args:
        model: the float model (not modified).
        plan, ranges, config: as for :func:`insert_qdq`.
        data: calibration batches (the first :data:`MAX_BATCHES` are used).
        metric: see :data:`Metric`; default :func:`output_cosine`.

    Raises:
        InputError: no calibration batches.
    """
    switched = _switched(model, plan, ranges, config, data)
    try:
        reference = switched.run(set())
        scores = [Sensitivity(s.name, s.node.op_type, metric(switched.run({i}), reference))
                  for i, s in enumerate(plan.sites)]
    finally:
        switched.close()
    return sorted(scores, key=lambda s: s.score)


def layer_sqnr(model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig,
               data: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """SQNR in dB of each site's output with every site quantized against the
    float model, ``10 log10(sum x^2 / sum (x - x')^2)`` over the first
    :data:`MAX_BATCHES` batches (``inf`` when equal). Keys: the sites' output names.

    Raises:
        InputError: no calibration batches.
    """
    names = [s.node.outputs[0].name for s in plan.sites]
    switched = _switched(model, plan, ranges, config, data, names)
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    every = set(range(len(plan.sites)))
    try:  # batch by batch: every layer's output of one batch alive at a time, not of all of them
        for i in range(len(switched.feeds)):
            ref, out = switched.run_batch(set(), i), switched.run_batch(every, i)
            for name in names:
                r = ref[name].astype(np.float64)
                signal[name] += float(np.sum(np.square(r)))
                noise[name] += float(np.sum(np.square(r - out[name])))
    finally:
        switched.close()
    return {name: 10.0 * np.log10(signal[name] / noise[name]) if noise[name] > 0 and signal[name] > 0
            else float("inf") for name in names}


def _switched(model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig,
              data: Iterable[Mapping[str, np.ndarray]], expose: Sequence[str] = (),
              max_batches: int = MAX_BATCHES) -> _Switched:
    batches = []
    for batch in data:
        batches.append(batch)
        if len(batches) == max_batches:
            break
    if not batches:
        raise InputError("the accuracy budget needs at least one calibration batch")
    return _Switched(model, plan, ranges, config, batches, expose)


def keep_float_for_budget(model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig,
                          data: Iterable[Mapping[str, np.ndarray]], threshold: float,
                          metric: Metric = output_cosine, max_batches: int = MAX_BATCHES) -> list[str]:
    """Remove from ``plan`` (in place) the fewest most-sensitive sites so that
    ``metric`` of the quantized outputs is at least ``threshold``.

    The greedy search runs on the switched model (float compute on
    dequantized values). Its answer is then checked on the model as it will be
    written, under onnxruntime's ``ORT_ENABLE_ALL`` (integer kernels, whose
    requantization rounds differently): while that misses the budget, the next
    most sensitive site goes back to float too.

    Decided on the first ``max_batches`` batches of ``data``.

    Returns:
        The names of the sites kept float, most sensitive first (all sites when
        even one quantized site breaks the budget).

    Raises:
        InputError: no calibration batches, or a threshold outside (0, 1] for
            the cosine or argmax metric.
    """
    if metric in METRICS.values() and not 0.0 < threshold <= 1.0:
        raise InputError(f"a {', '.join(METRICS)} budget must be in (0, 1], not {threshold}")
    switched = _switched(model, plan, ranges, config, data, max_batches=max_batches)
    try:
        reference = switched.run(set())
        order = [i for _, i in sorted((metric(switched.run({i}), reference), i) for i in range(len(plan.sites)))]
        on = set(range(len(plan.sites)))
        kept: list[int] = []
        score = metric(switched.run(on), reference)
        log.info("qdq: all %d sites quantized: %.6f (budget %.6f)", len(on), score, threshold)
        for i in order:
            if score >= threshold:
                break
            on.discard(i)
            kept.append(i)
            score = metric(switched.run(on), reference) if on else 1.0
            log.info("qdq: %s kept float: %.6f", plan.sites[i].name, score)
        batches = switched.batches
    finally:
        switched.close()
    real = _RealCheck(model, plan, ranges, config, batches)
    remaining = [i for i in order if i in on]
    while on:
        score = metric(real.run(on), real.reference)
        log.info("qdq: %d sites quantized, with onnxruntime's integer kernels: %.6f", len(on), score)
        if score >= threshold:
            break
        i = remaining.pop(0)
        on.discard(i)
        kept.append(i)
    names = [plan.sites[i].name for i in kept]
    plan.sites[:] = [s for i, s in enumerate(plan.sites) if i not in set(kept)]
    return names


class _RealCheck:
    """Outputs of the float model and of quantized copies (a subset of the
    sites) under ``ORT_ENABLE_ALL``, on fixed batches."""

    def __init__(self, model: ir.Model, plan: Plan, ranges: Mapping[str, Any], config: QuantConfig,
                 batches: list[Mapping[str, np.ndarray]]) -> None:
        self.model, self.plan, self.ranges, self.config, self.batches = model, plan, ranges, config, batches
        self.reference = self._run(model)

    def _run(self, model: ir.Model) -> list[dict[str, np.ndarray]]:
        import tempfile
        from pathlib import Path

        from graphopt.passes.quantization.activations import activation_session

        with tempfile.TemporaryDirectory(prefix="graphopt-budget-") as folder:
            session, outputs = activation_session(model, [], Path(folder), "all")
            names = {i.name for i in session.get_inputs()}
            return [dict(zip(outputs, session.run(outputs, {k: v for k, v in b.items() if k in names})))
                    for b in self.batches]

    def run(self, on: set[int]) -> list[dict[str, np.ndarray]]:
        copy = ir.clone(self.model)
        copy_plan = plan_sites_like(copy, self.plan)
        copy_plan.sites = [s for i, s in enumerate(copy_plan.sites) if i in on]
        insert_qdq(copy, copy_plan, self.ranges, self.config)
        return self._run(copy)

"""Build and measure the candidates of ``graphopt compress``: the O3 order (O1 → prune → low-rank with
reconstruction → O2 for the target, or the INT8 fusions → QDQ) at given levels of each technique.

Intermediate models are kept as files in a work folder and shared between candidates: every candidate with the
same pruning ratio starts from one pruned model, every one with the same (pruning, low-rank) levels from one
factored model, so a search over tens of points prunes each ratio once and factorizes each pair once. Activation
statistics are cached by model content (:class:`graphopt.calibrate.cache.StatsCache`), so the statistics of the
O1 model are collected once for every pruning ratio.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.errors import GraphoptError

__all__ = ["Built", "CandidateBuilder", "TECHNIQUES", "spec_of"]

log = logging.getLogger(__name__)

TECHNIQUES = ("prune", "lowrank", "int8")
"""The techniques ``compress`` searches, in the order O3 applies them."""

Metric = Callable[[Sequence[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]], float]


@dataclass
class Built:
    """One candidate model: its ``path``, the levels it was built at, the steps' reports (``prune``,
    ``factorize``, ``quantize`` documents from the model's metadata), build seconds, and ``float_path``: the
    model before O2/INT8 (its MatMul/Conv FLOPs are the candidate's; INT8 does the same products)."""

    path: Path
    levels: dict[str, Any]
    docs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    float_path: Path | None = None


def spec_of(levels: Mapping[str, Any], target: str, prune: Any = None, lowrank: Any = None,
            fusion: str = "default") -> str:
    """The O3 pipeline spec that rebuilds a candidate at ``levels`` (``{"prune": kept block-FLOP ratio,
    "lowrank": kept parameter ratio, "int8": bool}``), e.g. ``O1,prune{ratio=0.8},factorize{params=0.9},int8``;
    ``prune``/``lowrank``: the options the search used (method, allocation, refit); ``fusion``: the name of the
    :data:`~graphopt.passmanager.pipeline.INT8_FUSION_VARIANTS` entry before QDQ (``default``: the ``int8``
    pipeline)."""
    from graphopt.passmanager.pipeline import INT8_FUSION_VARIANTS

    parts = ["O1"]
    if levels.get("prune", 1.0) < 1.0:
        opts = {"ratio": levels["prune"]}
        if prune is not None:
            opts.update({"method": prune.method, "allocation": prune.allocation,
                         "reconstruction": prune.reconstruction})
        parts.append("prune{" + ",".join(f"{k}={v}" for k, v in opts.items()) + "}")
    if levels.get("lowrank", 1.0) < 1.0:
        opts = {"params": levels["lowrank"]}
        if lowrank is not None:
            opts.update({"method": lowrank.method, "refit": lowrank.refit})
        parts.append("factorize{" + ",".join(f"{k}={v}" for k, v in opts.items()) + "}")
    if levels.get("int8") and fusion != "default":
        parts.append(f"{INT8_FUSION_VARIANTS[fusion]},qdq")
    else:
        parts.append("int8" if levels.get("int8") else "O2")
    return ",".join(parts)


class CandidateBuilder:
    """Builds candidate models of ``source`` into ``work``.

    Args:
        source: the original .onnx path (never modified).
        work: a folder for the intermediate and candidate models.
        target: ``ort``, ``onnx`` or ``tensorrt`` (the O2 fusions and the INT8 placement).
        calibration: calibration batches (a list of input dicts): statistics, reconstruction, INT8 ranges.
        search: the search's evaluation batches (INT8 float fallbacks are decided on them).
        reference: the original's outputs on ``search`` (the metric compares against them).
        metric: ``metric(outputs, reference) -> float``, higher is better.
        threshold: the budget (with ``build(fallback=True)``, INT8 keeps its most sensitive layers float until the
            metric against the original holds on ``search``); None in speedup mode.
        prune, lowrank: base :class:`~graphopt.passes.pruning.prune.PruneOptions` and
            :class:`~graphopt.passes.lowrank.factorize.FactorizeOptions` (the ratio is set per candidate).
        mask: graph input whose zeros drop padded rows from the statistics ('' for none).
        int8_method: the INT8 activation range calibration (the ``qdq`` pass's ``method``: minmax, percentile,
            entropy, mse).
        progress: progress bars of the steps.

    Raises:
        PassError / InputError: O1 fails on the source (at construction).
    """

    def __init__(self, source: str | Path, work: Path, *, target: str, calibration: list[dict], search: list[dict],
                 reference: list[dict], metric: Metric, threshold: float | None, prune: Any, lowrank: Any,
                 mask: str = "", int8_method: str = "minmax", progress: bool = False) -> None:
        from graphopt.calibrate.cache import StatsCache
        from graphopt.passmanager import PassContext, PassManager

        self.source, self.work, self.target = Path(source), Path(work), target
        self.calibration, self.search, self.reference = calibration, search, reference
        self.metric, self.threshold = metric, threshold
        self.prune_options, self.lowrank_options = replace(prune, mask=mask), lowrank
        self.progress, self.int8_method = progress, int8_method
        self.int8_fusion = "default"
        self.cache = StatsCache()
        self._files: dict[tuple, Path] = {}
        self._docs: dict[tuple, dict[str, Any]] = {}
        model = ir.load(self.source)
        PassManager("O1", PassContext(target=target)).run(model)
        self._files[()] = self._save(model, "o1")

    def _save(self, model: ir.Model, name: str) -> Path:
        path = self.work / f"{name}.onnx"
        ir.save(model, path)
        return path

    @staticmethod
    def _tag(value: float) -> str:
        return f"{value:.3f}".replace(".", "")

    def _pruned(self, ratio: float) -> tuple[Path, dict[str, Any]]:
        from graphopt.passes.pruning.prune import prune

        key = ("prune", ratio)
        if key not in self._files:
            if ratio >= 1.0:
                return self._files[()], {}
            model = ir.load(self._files[()])
            report = prune(model, replace(self.prune_options, ratio=ratio), self.calibration, cache=self.cache,
                           progress=self.progress)
            self._files[key] = self._save(model, f"p{self._tag(ratio)}")
            self._docs[key] = {"prune": report.to_dict()}
        return self._files[key], self._docs[key]

    def _factored(self, ratio: float, params: float) -> tuple[Path, dict[str, Any]]:
        from graphopt.passes.lowrank.factorize import factorize

        base, docs = self._pruned(ratio)
        if params >= 1.0:
            return base, docs
        key = ("lowrank", ratio, params)
        if key not in self._files:
            model = ir.load(base)
            report = factorize(model, replace(self.lowrank_options, params=params), self.calibration,
                               cache=self.cache, progress=self.progress)
            self._files[key] = self._save(model, f"p{self._tag(ratio)}_l{self._tag(params)}")
            self._docs[key] = {**docs, "factorize": report.to_dict()}
        return self._files[key], self._docs[key]

    def _budget(self) -> dict[str, Any] | None:
        if self.threshold is None:
            return None
        metric, reference = self.metric, self.reference

        def against_original(outputs: Sequence[Mapping[str, np.ndarray]], _float: Any) -> float:
            # the fallback is decided against the ORIGINAL's outputs, not the pruned float model's: one budget
            return metric(outputs, reference[:len(outputs)])

        against_original.__name__ = getattr(metric, "__name__", "metric")
        return {"metric": against_original, "threshold": self.threshold}

    def fusion_variants(self) -> list[str]:
        """The :data:`~graphopt.passmanager.pipeline.INT8_FUSION_VARIANTS` that fuse this model differently from
        ``default`` (compared by the O1 model's op histogram after each variant's fusions; no calibration),
        ``default`` first. A model none of whose variants changes anything gets ``["default"]``.

        Raises:
            PassError: a fusion pipeline fails on the O1 model.
        """
        from collections import Counter

        from graphopt.passmanager import PassContext, PassManager
        from graphopt.passmanager.pipeline import INT8_FUSION_VARIANTS

        seen: dict[tuple, str] = {}
        for name, spec in INT8_FUSION_VARIANTS.items():
            model = ir.load(self._files[()])
            PassManager(spec, PassContext(target=self.target, config={"opset.upgrade": 13})).run(model)
            ops = tuple(sorted(Counter(f"{n.domain}::{n.op_type}" for n in ir.all_nodes(model.graph)).items()))
            seen.setdefault(ops, name)
        return list(seen.values())

    def build(self, levels: Mapping[str, Any], *, sqnr: bool = False, fallback: bool = False,
              name: str | None = None, fusion: str | None = None) -> Built:
        """The candidate at ``levels`` (``{"prune": ratio, "lowrank": params, "int8": bool}``, absent = off).

        Args:
            sqnr: measure INT8 per-layer SQNR into the quantization record (the final model's report).
            fallback: with INT8 and a threshold, keep the most sensitive layers float until the metric against
                the original holds on the search batches (a sensitivity run per layer: minutes on a Transformer,
                so the walk quantizes every layer and only the final point may fall back).
            name: the file name stem (default from the levels).
            fusion: the INT8 fusion variant (a name of
                :data:`~graphopt.passmanager.pipeline.INT8_FUSION_VARIANTS`; default the builder's
                ``int8_fusion``, which ``compress`` sets to the fastest it measured).

        Raises:
            InputError: a level a technique cannot reach on this model (e.g. nothing prunable).
            PassError: a step failed.
        """
        from graphopt.passes.quantization.qdq import METADATA_KEY as QUANT_KEY
        from graphopt.passmanager import PassContext, PassManager
        from graphopt.passmanager.pipeline import INT8_FUSION_VARIANTS

        start = time.perf_counter()
        ratio, params, int8 = float(levels.get("prune", 1.0)), float(levels.get("lowrank", 1.0)), bool(
            levels.get("int8", False))
        base, docs = self._factored(ratio, params)
        model = ir.load(base)
        if int8:
            # float fallbacks are decided on every search batch (the qdq pass reads its first 8 by default)
            fusion = fusion or self.int8_fusion
            spec = (f"{INT8_FUSION_VARIANTS[fusion]},qdq{{method={self.int8_method},"
                    f"report-sqnr={'true' if sqnr else 'false'},budget-batches={max(len(self.search), 1)}}}")
            ctx = PassContext(target=self.target, config={"opset.upgrade": 13}, calibration=self.calibration,
                              accuracy_budget=self._budget() if fallback else None, evaluation=self.search)
        else:
            spec, ctx = "O2", PassContext(target=self.target)
        PassManager(spec, ctx).run(model)
        docs = dict(docs)
        if int8:
            docs["quantize"] = json.loads(model.metadata_props.get(QUANT_KEY, "{}"))
        kind = ("int8f" if fallback else "int8") if int8 else "fp32"
        if int8:
            docs["int8_fusion"] = fusion
            kind += "" if fusion == "default" else "_" + fusion.replace("+", "_")
        stem = name or f"c_p{self._tag(ratio)}_l{self._tag(params)}_{kind}"
        path = self._save(model, stem)
        return Built(path, dict(levels), docs, time.perf_counter() - start, base)

    def quality(self, path: Path, batches: list[dict] | None = None, reference: list[dict] | None = None,
                metric: Metric | None = None) -> float:
        """``metric`` (default the search's) of the model at ``path`` on ``batches`` (default the search batches)
        against ``reference`` (default the original's outputs on the search batches)."""
        from graphopt.calibrate.evaluate import BudgetCheck

        fn = self.metric if metric is None else metric
        check = BudgetCheck(getattr(fn, "__name__", "metric"), fn, self.threshold or 0.0,
                            self.search if batches is None else batches,
                            self.reference if reference is None else reference)
        return check.score(str(path))


def failure(error: BaseException) -> str:
    """The one-line reason a candidate could not be built (a graphopt error's message)."""
    if isinstance(error, GraphoptError):
        return str(error).splitlines()[0]
    return f"{type(error).__name__}: {error}"

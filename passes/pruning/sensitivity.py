"""Output-sensitivity importance of pruning units: how much an output changes when only that unit is removed.

Two levels, one score per unit (higher = the output moves more = keep), for :func:`sensitivity_scores`:

- **at the consumer** (method ``sensitivity``, every group; :func:`consumer_scores`): the exact change of the
  consumer's output on the calibration rows when the unit's input rows are zeroed,
  ``||X_u W_u||_F^2 = sum_k W_u[:, k]^T G_uu W_u[:, k]`` (:func:`output_change_scores`), ``G = X^T X`` the
  *uncentered* Gram of the consumer's input (:attr:`~graphopt.calibrate.stats.ChannelStats.gram`; zeroing a
  unit removes ``X_u W_u`` mean included), summed over the group's consumer sites. The consumer is the last
  product of the block's branch, so this is the block output's change before the residual Add (which passes
  it on unchanged) and the norm after it. Unlike Wanda's ``sum_j ||X_j|| ||W_j||`` it sees the correlations
  between the rows of one unit (a head's ``head_dim`` rows): rows that cancel score 0. A site without a Gram
  uses its diagonal (``||X_j||^2``). For a ``k x k`` Conv the per-pixel Gram makes it an estimate (spatial
  shifts are ignored), as in :func:`~graphopt.passes.pruning.refit.error_curve`;
- **at the model output** (method ``ablation``: groups of at most :data:`MAX_UNITS` units, attention heads
  first, while the masks stay within :data:`MAX_MASKS`; the wider groups at the consumer;
  :func:`model_output_scores`): ``1 - cos`` of the model's float outputs against the unmasked model, per row
  (the last axis: a token's hidden state, a sentence embedding, a row of logits), averaged over rows and then
  over outputs, on the first :data:`MAX_BATCHES` calibration batches, with that unit alone masked: Michel et
  al. 2019 ("Are Sixteen Heads Really Better than One?")'s head ablation, with Kwon et al. 2022 ("A Fast
  Post-Training Pruning Framework for Transformers")'s mask variables. All masks run in one onnxruntime
  session of a copy of the model where each masked consumer input is multiplied by a float graph input of
  ``[channels]`` ones (the *switch inputs*, as :mod:`graphopt.passes.quantization.sensitivity` switches
  quantized sites), so no model is rebuilt per unit.

Measured on all-MiniLM-L6-v2 (heads + FFN, least squares, 256 calibration / 512 evaluation sentences): the
consumer level ranks heads better than the model-output ablation (rank fidelity 0.899 against 0.886 at 0.6 of
the block FLOPs, 0.868 against 0.844 at 0.5; the ablation with 64 batches, with the squared error or with the
sentence embedding alone did no better): a head's effect on the output of the unpruned model, alone, misjudges
its share once half the heads of every layer go and least squares refits the rest. Hence ``sensitivity`` is
the consumer level and the ablation a method of its own.

The two levels have different scales; under ``ablation`` a group is scored by one level only, and every
allocation compares scores within a group (``uniform`` and ``error`` use only the order; ``global``
standardizes per group), so the scales never meet. On all-MiniLM-L6-v2 ``ablation`` measures the 6 head
groups (12 heads each, 72 masks) at the model output and the 6 FFN groups (1536 neurons) at the consumer.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graphopt import ir
from graphopt.calibrate.activations import activation_session, values_by_name
from graphopt.calibrate.data import track
from graphopt.errors import InputError
from graphopt.passes.pruning.plan import GroupPlan, Site, weight_rows

__all__ = ["MAX_BATCHES", "MAX_UNITS", "MAX_MASKS", "MaskedSession", "output_change", "output_change_scores",
           "consumer_scores", "model_output_scores", "sensitivity_scores"]

log = logging.getLogger(__name__)

MAX_BATCHES = 16
"""Calibration batches each mask runs on at the model output, at most (the first ones)."""

MAX_UNITS = 64
"""Groups of at most this many units are scored at the model output (one masked run per unit)."""

MAX_MASKS = 512
"""Masked runs (units) at the model output per call, at most; further groups are scored at the consumer."""

_HEADS = ("heads", "kv-heads")


def output_change_scores(rows: np.ndarray, gram: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``||X_u W_u||_F^2`` per unit from the Gram: ``sum_k W[r_u, k]^T G[r_u, r_u] W[r_u, k]``.

    Args:
        rows: ``[C, N]`` the consumer's weight, input channels first (:func:`~.plan.weight_rows`), any float.
        gram: ``[C, C]`` ``X^T X`` of the consumer's input over the calibration rows (uncentered, float64), or
            ``[C]`` its diagonal ``||X_j||^2`` (the rows' correlations then ignored).
        units: ``[U, unit]`` int: the input rows of each unit.

    Returns:
        ``[U]`` float64, the squared Frobenius norm of the consumer-output change with each unit's rows zeroed
        alone (exact for a MatMul / Gemm / 1x1 Conv).

    Raises:
        InputError: shapes disagree.
    """
    w = np.asarray(rows, dtype=np.float64)
    g = np.asarray(gram, dtype=np.float64)
    idx = np.asarray(units, dtype=np.int64)
    if w.ndim != 2 or idx.ndim != 2:
        raise InputError(f"output_change_scores needs rows [C, N] and units [U, unit], got {w.shape}, {idx.shape}")
    c = w.shape[0]
    if g.shape not in ((c, c), (c,)):
        raise InputError(f"the Gram has shape {g.shape}, the weight {c} input rows: give [C, C] or [C]")
    if idx.size and (idx.min() < 0 or idx.max() >= c):
        raise InputError(f"unit rows out of range [0, {c})")
    blocks = w[idx]  # [U, unit, N]
    if g.ndim == 1:
        return np.einsum("uj,ujn,ujn->u", g[idx], blocks, blocks)
    g_blocks = g[idx[:, :, None], idx[:, None, :]]  # [U, unit, unit]
    return np.einsum("uin,uin->u", blocks, np.matmul(g_blocks, blocks))  # batched G_uu W_u by BLAS


def consumer_scores(plan: GroupPlan, sites: Mapping[str, Site], stats: Mapping[str, Any]) -> np.ndarray | None:
    """The consumer-level sensitivity of ``plan``'s units: :func:`output_change_scores` summed over its sites.

    Args:
        plan: a planned group (``plan.rows``: ``{site node: [size, unit]}``).
        sites: consumer sites by node name.
        stats: ``{site data value: ChannelStats}`` (Grams where collected, else the diagonal ``sq_sum`` is read).

    Returns:
        ``[size]`` float64, or None when no site of the group has statistics.
    """
    total = None
    for node, idx in plan.rows.items():
        site = sites[node]
        st = stats.get(site.data)
        if st is None or st.channels != site.channels:
            continue
        gram = st.gram if st.gram is not None else st.sq_sum
        s = output_change_scores(weight_rows(site.array, site.in_axis), gram, idx)
        total = s if total is None else total + s
    return total


def _eligible(plans: list[GroupPlan], max_units: int, max_masks: int) -> list[GroupPlan]:
    """The groups scored at the model output: heads first, then others of at most ``max_units`` units, in plan
    order, while their units stay within ``max_masks``."""
    chosen, used = [], 0
    for p in sorted(plans, key=lambda p: p.group.kind not in _HEADS):  # stable: plan order within each
        if not p.rows or p.size > max_units or used + p.size > max_masks:
            continue
        chosen.append(p)
        used += p.size
    return [p for p in plans if any(p is c for c in chosen)]


class MaskedSession:
    """A copy of the model whose group consumers read ``input * mask`` (one float mask input per consumer
    input value, ``[C]``, or ``[C, 1, ...]`` for a Conv), and an onnxruntime session over it (Kwon et al.
    2022's mask variables as graph inputs). :meth:`close` removes its working folder.

    Raises:
        LoadError: onnxruntime cannot load the masked copy.
    """

    def __init__(self, model: ir.Model, plans: list[GroupPlan], sites: Mapping[str, Site]) -> None:
        copy = ir.clone(model)
        graph = copy.graph
        values = values_by_name(graph)
        nodes = {n.name: n for n in graph if n.name}
        order = {id(n): i for i, n in enumerate(graph)}
        taken = ir.value_names(graph) | {n.name for n in graph if n.name}
        readers: dict[str, list[ir.Node]] = {}
        for p in plans:
            for node in p.rows:
                if node in nodes and nodes[node] not in readers.setdefault(sites[node].data, []):
                    readers[sites[node].data].append(nodes[node])
        self.masks: dict[str, tuple[str, np.ndarray]] = {}  # data value -> (mask input name, ones)
        for data, consumers in readers.items():
            site = next(sites[n.name] for n in consumers)
            value = values[data]
            dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
            shape = [site.channels] + ([1] * (site.array.ndim - 2) if site.op == "Conv" else [])
            name = ir.unique_name("graphopt_unit_mask", taken)
            mask = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.from_numpy(dtype)))
            graph.inputs.append(mask)
            mul = ir.Node("", "Mul", [value, mask], num_outputs=1, name=ir.unique_name(f"{name}_mul", taken))
            mul.outputs[0].name = ir.unique_name(f"{data}_masked", taken)
            graph.insert_before(min(consumers, key=lambda n: order[id(n)]), mul)
            for n in consumers:
                for slot, v in enumerate(n.inputs):
                    if v is value:
                        n.replace_input_with(slot, mul.outputs[0])
            self.masks[data] = (name, np.ones(shape, dtype=dtype))
        self._workdir = tempfile.TemporaryDirectory(prefix="graphopt-prune-sensitivity-")
        self.session, self.outputs = activation_session(copy, [], Path(self._workdir.name), "basic")
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, batch: Mapping[str, np.ndarray], zeroed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs on ``batch`` with the channels ``zeroed[data value]`` of each mask at 0."""
        feed = {k: np.asarray(v) for k, v in batch.items() if k in self.inputs}
        for data, (name, ones) in self.masks.items():
            if data in zeroed:
                m = ones.copy()
                m[np.asarray(zeroed[data])] = 0
                feed[name] = m
            else:
                feed[name] = ones
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))

    def baseline(self, batches: list[Mapping[str, np.ndarray]], mask: str | None = None
                 ) -> tuple[list[dict[str, np.ndarray]], list[str], list[np.ndarray | None]]:
        """``(outputs with nothing masked per batch, the float output names, per batch the [N, T] bool rows that
        count or None)``: what :func:`output_change` compares masked runs against (``mask``: a graph input whose
        zeros drop padded rows)."""
        refs = [self.run(b, {}) for b in batches]
        names = [n for n in self.outputs if np.asarray(refs[0][n]).dtype.kind == "f"] if refs else []
        keeps = [np.asarray(b[mask]) != 0 if mask and mask in b else None for b in batches]
        return refs, names, keeps

    def close(self) -> None:
        self._workdir.cleanup()


def _cosine_rows(out: np.ndarray, ref: np.ndarray, keep: np.ndarray | None) -> tuple[float, int]:
    """(sum of row cosines, rows) of ``out`` against ``ref``, rows along the last axis; a zero row pair counts
    as cosine 1, a zero row against a non-zero one as 0. ``keep`` (``[N, T]`` bool) drops masked rows of a
    ``[N, T, ...]`` output."""
    a, b = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    if keep is not None and a.ndim >= 3 and a.shape[:2] == keep.shape:
        a, b = a[keep], b[keep]
    if a.ndim >= 2:
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    else:
        a, b = a.reshape(1, -1), b.reshape(1, -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("rc,rc->r", a, b)
    cos = np.where((na > 0) & (nb > 0), dot / np.where((na > 0) & (nb > 0), na * nb, 1.0),
                   np.where((na == 0) & (nb == 0), 1.0, 0.0))
    return float(cos.sum()), int(cos.size)


def output_change(outs: list[dict[str, np.ndarray]], refs: list[dict[str, np.ndarray]], names: list[str],
                  keeps: list[np.ndarray | None]) -> float:
    """``1 - mean over outputs of the mean row cosine`` (see :func:`_cosine_rows`) over all batches: ``outs`` and
    ``refs`` are per-batch ``{output name: array}``, ``names`` the float outputs compared, ``keeps`` per batch a
    ``[N, T]`` bool mask of the rows that count (or None). A float in [0, 2]; 0 when nothing changed."""
    total = 0.0
    for name in names:
        s = n = 0
        for out, ref, keep in zip(outs, refs, keeps):
            ds, dn = _cosine_rows(out[name], ref[name], keep)
            s, n = s + ds, n + dn
        total += s / n if n else 1.0
    return 1.0 - total / len(names)


def model_output_scores(model: ir.Model, plans: list[GroupPlan], sites: Mapping[str, Site],
                        calibration: Iterable[Mapping[str, np.ndarray]], *, mask: str | None = None,
                        max_batches: int = MAX_BATCHES, progress: bool = False) -> dict[str, np.ndarray]:
    """The model-output sensitivity of every unit of ``plans`` (see the module doc), in one switched session.

    Args:
        model: the unpruned model (not modified; a copy gets the mask inputs).
        plans: the groups to score (every unit of each is masked alone; keep their units within
            :data:`MAX_MASKS`, :func:`sensitivity_scores` does).
        sites: consumer sites by node name.
        calibration: batches of model inputs; the first ``max_batches`` are used.
        mask: a graph input ``[N, T]`` whose zeros drop padded rows of ``[N, T, ...]`` outputs from the cosine.
        max_batches: calibration batches per masked run.
        progress: a progress bar over the units.

    Returns:
        ``{group name: [size] float64}``, ``1 - mean row cosine`` of the float outputs (0 for a unit whose
        removal changes nothing); ``{}`` when ``plans`` is empty or the model has no float output.

    Raises:
        InputError: no calibration batch.
        LoadError: onnxruntime cannot load the masked copy.
    """
    plans = [p for p in plans if p.rows]
    if not plans:
        return {}
    batches = list(itertools.islice(calibration, max_batches))
    if not batches:
        raise InputError("sensitivity scoring at the model output needs at least one calibration batch")
    masked = MaskedSession(model, plans, sites)
    try:
        refs, names, keeps = masked.baseline(batches, mask)
        if not names:
            return {}
        units = [(p, u) for p in plans for u in range(p.size)]
        scores = {p.name: np.zeros(p.size) for p in plans}
        for p, u in track(units, len(units), "sensitivity", progress):
            zeroed: dict[str, list[int]] = {}
            for node, idx in p.rows.items():
                zeroed.setdefault(sites[node].data, []).extend(int(i) for i in idx[u])
            outs = [masked.run(b, zeroed) for b in batches]
            scores[p.name][u] = output_change(outs, refs, names, keeps)
    finally:
        masked.close()
    log.info("prune: sensitivity at the model output for %s (%d masked runs of %d batch(es) each)",
             ", ".join(scores), len(units), len(batches))
    return scores


def sensitivity_scores(plans: list[GroupPlan], sites: Mapping[str, Site], stats: Mapping[str, Any],
                       model: ir.Model, calibration: Iterable[Mapping[str, np.ndarray]] | None, *,
                       model_output: bool = False, mask: str | None = None, max_units: int = MAX_UNITS,
                       max_masks: int = MAX_MASKS, max_batches: int = MAX_BATCHES, progress: bool = False
                       ) -> dict[str, tuple[np.ndarray, str]]:
    """Sensitivity scores of every plan: at the consumer (``sensitivity``); with ``model_output`` (``ablation``)
    at the model output for the groups :func:`model_output_scores` takes (heads first, groups of at most
    ``max_units`` units, ``max_masks`` units in all) and at the consumer for the others.

    Args:
        plans, sites: from :func:`~graphopt.passes.pruning.plan.build_plan`.
        stats: ``{site data value: ChannelStats}`` with Grams (prune collects them for these methods).
        model: the unpruned model (not modified).
        calibration: batches of model inputs (None: every group at the consumer).
        model_output: measure the small groups at the model output (the ablation).
        mask, max_batches, progress: as for :func:`model_output_scores`.
        max_units, max_masks: the model-output limits.

    Returns:
        ``{group name: ([size] float64 scores, level)}``, level ``"model-output"`` or ``"consumer"``; a group
        with neither (no statistics, no mask) is left out (the caller falls back to magnitude).

    Raises:
        InputError: no calibration batch while a group is to be scored at the model output.
    """
    at_output = _eligible(plans, max_units, max_masks) if model_output and calibration is not None else []
    measured = model_output_scores(model, at_output, sites, calibration, mask=mask, max_batches=max_batches,
                                   progress=progress) if at_output else {}
    out: dict[str, tuple[np.ndarray, str]] = {name: (s, "model-output") for name, s in measured.items()}
    for p in plans:
        if p.name in out:
            continue
        s = consumer_scores(p, sites, stats)
        if s is not None:
            out[p.name] = (s, "consumer")
    return out

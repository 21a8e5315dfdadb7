"""Accuracy-budget metrics: how close a compressed model's outputs are to the original's.

One place for every metric an accuracy budget can name (``--budget
NAME=VALUE`` on ``quantize``, and on the pruning, low-rank and compress
commands): quantization, pruning and low-rank all read :data:`METRICS`.

A metric is ``metric(outputs, reference) -> score``, higher is better; each
argument is a list (one entry per batch) of ``{output name: array}``, the
compressed model's and the original's outputs on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from graphopt.verify.compare import cosine

__all__ = ["Metric", "METRICS", "argmax_agreement", "output_cosine", "rank_fidelity", "sentence_embeddings",
           "MASK_NAMES"]

Metric = Callable[[Sequence[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]], float]
"""``metric(outputs, reference) -> score``, higher is better."""

MASK_NAMES = ("attention_mask", "mask", "input_mask")
"""Input names read as the token mask of a 3-D output's mean pooling."""


def output_cosine(outputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]]) -> float:
    """The worst (over outputs) cosine similarity between ``outputs`` and
    ``reference``, each output's batches flattened into one vector; float
    outputs only. 1.0 when both vectors are zero."""
    worst = 1.0
    for name in reference[0]:
        ref = [np.asarray(r[name]) for r in reference]
        if not np.issubdtype(ref[0].dtype, np.floating):
            continue
        x = np.concatenate([np.asarray(o[name]).astype(np.float64).ravel() for o in outputs])
        y = np.concatenate([r.astype(np.float64).ravel() for r in ref])
        worst = min(worst, cosine(x, y) if x.size else 1.0)
    return worst


def argmax_agreement(outputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]]
                     ) -> float:
    """The worst (over float outputs of rank >= 2) share of positions whose
    argmax along the last axis (the class) agrees with ``reference``: top-1
    agreement of classifiers and per-position recognizers (CTC heads). 1.0
    when no output has classes."""
    worst = 1.0
    for name in reference[0]:
        ref = [np.asarray(r[name]) for r in reference]
        if not np.issubdtype(ref[0].dtype, np.floating) or ref[0].ndim < 2 or ref[0].shape[-1] < 2:
            continue
        hits = sum(int((r.argmax(-1) == np.asarray(o[name]).argmax(-1)).sum()) for r, o in zip(ref, outputs))
        worst = min(worst, hits / sum(int(np.prod(r.shape[:-1])) for r in ref))
    return worst


def sentence_embeddings(outputs: Sequence[Mapping[str, np.ndarray]],
                        masks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
    """One embedding per sentence, float64 ``[sentences, hidden]``.

    The model's first 2-D float output when it has one (a pooled sentence
    embedding), else the mean over the sequence axis of its first 3-D float
    output ``[batch, sequence, hidden]``, weighted by the batch's token mask
    (``masks[i]``, ``[batch, sequence]``; all tokens when None) as
    sentence-transformers' mean pooling does.

    Raises:
        ValueError: no float output of rank 2 or 3.
    """
    first = outputs[0]
    names = [n for n in first if np.issubdtype(np.asarray(first[n]).dtype, np.floating)]
    two = [n for n in names if np.asarray(first[n]).ndim == 2]
    three = [n for n in names if np.asarray(first[n]).ndim == 3]
    if two:
        return np.concatenate([np.asarray(o[two[0]], np.float64) for o in outputs])
    if not three:
        raise ValueError("rank fidelity needs a float output of rank 2 (sentence embedding) or 3 "
                         f"(token states); the model's outputs are {sorted(first)}")
    rows = []
    for i, out in enumerate(outputs):
        hidden = np.asarray(out[three[0]], np.float64)
        mask = None if masks is None else masks[i]
        weight = np.ones(hidden.shape[:2]) if mask is None else np.asarray(mask, np.float64)
        rows.append((hidden * weight[..., None]).sum(1) / np.maximum(weight.sum(1, keepdims=True), 1e-9))
    return np.concatenate(rows)


def _pairwise_cosines(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)
    return np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])


def sentence_pairs(count: int, pairs: int = 1000, seed: int = 0) -> np.ndarray:
    """``pairs`` distinct index pairs ``(i, j)``, ``i < j < count``, int64
    ``[pairs, 2]``, drawn by a generator seeded with ``seed`` (all pairs when
    there are fewer)."""
    i, j = np.triu_indices(count, 1)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(i), size=min(pairs, len(i)), replace=False))
    return np.stack([i[pick], j[pick]], axis=1).astype(np.int64)


def rank_fidelity(outputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]],
                  masks: Sequence[np.ndarray | None] | None = None, pairs: int = 1000) -> float:
    """Spearman correlation between the original's and the compressed model's
    cosine similarities over sentence pairs: how well the compressed embedder
    keeps the ORDER of similarities that retrieval and clustering use (the
    STS-benchmark protocol of Reimers & Gurevych 2019, Sentence-BERT, with the
    original model's similarities in place of human scores).

    Embeddings come from :func:`sentence_embeddings`; ``pairs`` index pairs
    from :func:`sentence_pairs` (seed 0), so every call on the same inputs
    compares the same pairs. Needs at least 3 sentences; 1.0 when every
    reference similarity is equal.

    Raises:
        ValueError: fewer than 3 sentences, or no float output of rank 2 or 3.
    """
    from scipy.stats import spearmanr

    ref = sentence_embeddings(reference, masks)
    out = sentence_embeddings(outputs, masks)
    if len(ref) < 3:
        raise ValueError(f"rank fidelity needs at least 3 sentences, got {len(ref)}")
    idx = sentence_pairs(len(ref), pairs)
    a, b = _pairwise_cosines(ref, idx), _pairwise_cosines(out, idx)
    if np.ptp(a) == 0:
        return 1.0
    return float(spearmanr(a, b).statistic)


METRICS: dict[str, Metric] = {"cosine": output_cosine, "argmax": argmax_agreement, "rank-fidelity": rank_fidelity}
"""Budget metrics by name (``--budget NAME=VALUE``)."""

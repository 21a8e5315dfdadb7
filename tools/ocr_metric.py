"""A task metric for ``graphopt compress --metric tools/ocr_metric.py:char_accuracy`` on a CTC text recognizer
(PaddleOCR rec): character accuracy of the compressed model's transcripts against the original model's.

A budget metric gets the compressed model's and the original's outputs on the same inputs (``metric(outputs,
reference) -> float``), not the ground-truth strings, so the reference transcript is the original's reading:
``char_accuracy=0.99`` keeps at most 1 character in 100 read differently from the fp32 model, which bounds the
change of ground-truth character accuracy by about 1 point. Decoding is CTC best path (Graves et al. 2006: argmax
per frame, repeats merged, blanks, index 0, dropped), as rapidocr's CTCLabelDecode does; transcripts are
compared as class-index sequences, so no character dictionary is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["char_accuracy", "ctc_indices", "edit_distance"]


def ctc_indices(probs: np.ndarray) -> list[int]:
    """Best-path decoding of one ``[T, C]`` score row (float): class indices, repeats merged, blank (0) dropped."""
    idx = np.asarray(probs).argmax(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    return [int(i) for i in idx[keep] if i != 0]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two sequences (insertions, deletions, substitutions cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(outputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]]) -> float:
    """``1 - sum(edit distance) / sum(reference characters)`` over every line of every batch, the first output
    being the CTC scores ``[batch, T, C]``; 1.0 when the reference reads no character at all.

    Raises:
        ValueError: the first output is not 3-D.
    """
    errors = total = 0
    for out, ref in zip(outputs, reference):
        name = next(iter(ref))
        r, o = np.asarray(ref[name]), np.asarray(out[name])
        if r.ndim != 3:
            raise ValueError(f"char_accuracy expects CTC scores [batch, T, classes], got {r.shape} for {name!r}")
        for rr, oo in zip(r, o):
            truth = ctc_indices(rr)
            errors += edit_distance(ctc_indices(oo), truth)
            total += len(truth)
    return 1.0 - errors / total if total else 1.0

"""A task metric for ``graphopt compress --metric tools/ocr_metric.py:char_accuracy`` on a CTC text recognizer
(PaddleOCR rec): character accuracy against ground truth, or against the original model's reading.

With a ``labels.json`` beside the evaluation samples (each line's class indices in the model's dictionary; e.g.
tools/compare_compress.py writes them for rendered lines), ``graphopt compress`` passes the labels and the
metric is ground-truth character accuracy, so ``--budget char_accuracy=A`` is an absolute accuracy. Without
labels the truth is the original's own transcript: agreement, a stricter proxy (the original itself misreads
some characters, and a compressed model that misreads others loses twice). Decoding is CTC best path (Graves et
al. 2006: argmax per frame, repeats merged, blanks, index 0, dropped), as rapidocr's CTCLabelDecode does;
transcripts are compared as class-index sequences, so no character dictionary is needed.
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


def char_accuracy(outputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]],
                  labels: Sequence[Sequence[int]] | None = None) -> float:
    """``1 - sum(edit distance) / sum(characters)`` over every line of every batch, the first output being the CTC
    scores ``[batch, T, C]``. The truth is ``labels`` when given (``graphopt compress`` passes the entries of
    ``labels.json`` beside the evaluation samples: each line's class indices, blank = 0, in the model's
    dictionary), else the original's transcripts. 1.0 when the truth holds no character.

    Raises:
        ValueError: the first output is not 3-D, or fewer labels than lines.
    """
    errors = total = line = 0
    for out, ref in zip(outputs, reference):
        name = next(iter(ref))
        r, o = np.asarray(ref[name]), np.asarray(out[name])
        if r.ndim != 3:
            raise ValueError(f"char_accuracy expects CTC scores [batch, T, classes], got {r.shape} for {name!r}")
        for rr, oo in zip(r, o):
            if labels is not None:
                if line >= len(labels):
                    raise ValueError(f"char_accuracy: {len(labels)} labels for more lines")
                truth = [int(i) for i in labels[line]]
            else:
                truth = ctc_indices(rr)
            line += 1
            errors += edit_distance(ctc_indices(oo), truth)
            total += len(truth)
    return 1.0 - errors / total if total else 1.0

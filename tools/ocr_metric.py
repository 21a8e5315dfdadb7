"""Task metrics for ``graphopt compress --metric tools/ocr_metric.py:FUNCTION`` on PaddleOCR models: ``char_accuracy``
on a CTC text recognizer (rec), against ground truth or the original model's reading; ``box_f1`` on the DB text
detector (det), against the original's boxes.

With a ``labels.json`` beside the evaluation samples (each line's class indices in the model's dictionary; e.g.
tools/compare_compress.py writes them for rendered lines), ``graphopt compress`` passes the labels and the
metric is ground-truth character accuracy, so ``--budget char_accuracy=A`` is an absolute accuracy. Without
labels the truth is the original's own transcript: agreement, a stricter proxy (the original itself misreads
some characters, and a compressed model that misreads others loses twice). Decoding is CTC best path (Graves et
al. 2006: argmax per frame, repeats merged, blanks, index 0, dropped), as rapidocr's CTCLabelDecode does;
transcripts are compared as class-index sequences, so no character dictionary is needed.

For a DB text detector (PaddleOCR det): ``--metric tools/ocr_metric.py:box_f1``, box-level F1 of the compressed
model's text boxes against the original's. Boxes come from the probability map by PaddleOCR's DBPostProcess
(Liao et al., "Real-time Scene Text Detection with Differentiable Binarization", AAAI 2020, and its DBNet++
journal version, TPAMI 2022) with rapidocr-onnxruntime 1.4.4's defaults (config.yaml ``Det``: thresh 0.3,
box_thresh 0.5, unclip_ratio 1.6, use_dilation, score_mode fast; min_size 3, max_candidates 1000), the
rectangles kept axis-aligned (:func:`db_boxes`); boxes are matched one-to-one at IoU >= 0.5, as the ICDAR 2013/2015
detection protocols count a hit (:func:`match_boxes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["box_f1", "box_iou", "char_accuracy", "ctc_indices", "db_boxes", "edit_distance", "f1", "match_boxes"]


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


def _prob_map(prob: np.ndarray) -> np.ndarray:
    """``prob`` as a 2-D float64 map: leading axes of size 1 (``[1, 1, H, W]``, ``[1, H, W]``) dropped."""
    p = np.asarray(prob, np.float64)
    while p.ndim > 2 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2:
        raise ValueError(f"db_boxes expects one probability map [H, W] (or [1, 1, H, W]), got shape {np.shape(prob)}")
    return p


def db_boxes(prob: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, unclip_ratio: float = 1.6,
             min_size: float = 3, dilate: bool = True, max_candidates: int = 1000) -> np.ndarray:
    """Text boxes of one DB probability map, as PaddleOCR's DBPostProcess and rapidocr's TextDetector give them,
    with axis-aligned rectangles in place of ``cv2.minAreaRect`` (the rendered pages' lines are horizontal). The
    defaults are rapidocr-onnxruntime 1.4.4's (config.yaml ``Det``; ``min_size`` is DBPostProcess's constant).
    Checked against that package's own DBPostProcess (cv2, pyclipper) on the 48 PP-OCRv4 det maps of
    tools/pruning_ocr.py's evaluation pages: the same 211 boxes, mean IoU to its (axis-aligned hull of the) boxes
    0.97, lowest 0.76 (its minimum-area rectangle of a ragged region is slightly rotated).

    Steps: binarize ``prob > thresh``; dilate by a 2 x 2 kernel (cv2.dilate's anchor: each set pixel also sets
    its right, lower and lower-right neighbours); 8-connected regions (cv2.findContours' outer contours; holes give
    no candidates here), at most ``max_candidates`` in raster order of their first pixel; a region's rectangle spans
    its pixel centres (width ``x1 - x0``); dropped when its shorter side is ``< min_size``; score = mean probability
    over the rectangle's pixels (``score_mode`` fast), dropped when ``< box_thresh``; grown on every side by
    ``area * unclip_ratio / perimeter`` (pyclipper's offset of a rectangle), dropped when the shorter side is then
    ``< min_size + 2``; rounded and clipped to the map ``[0, W - 1] x [0, H - 1]``; dropped when a side is ``<= 3``
    (rapidocr's ``filter_tag_det_res``).

    Args:
        prob: ``[H, W]`` (or ``[1, 1, H, W]``) float text probabilities in [0, 1], the det model's output.

    Returns:
        ``[N, 4]`` float64 ``(x0, y0, x1, y1)`` in map pixels (the input's, at the det model's 1:1 output),
        ``x0 <= x1``, ``y0 <= y1``, in raster order of the regions.

    Raises:
        ValueError: ``prob`` is not one 2-D map.
    """
    from scipy import ndimage

    p = _prob_map(prob)
    h, w = p.shape
    mask = p > thresh
    if dilate:
        mask[1:] |= mask[:-1].copy()
        mask[:, 1:] |= mask[:, :-1].copy()
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = []
    for region in ndimage.find_objects(labels)[:max_candidates]:
        ys, xs = region
        x0, x1, y0, y1 = xs.start, xs.stop - 1, ys.start, ys.stop - 1
        bw, bh = x1 - x0, y1 - y0
        if min(bw, bh) < min_size:
            continue
        if p[y0:y1 + 1, x0:x1 + 1].mean() < box_thresh:
            continue
        d = bw * bh * unclip_ratio / (2 * (bw + bh))
        if min(bw, bh) + 2 * d < min_size + 2:
            continue
        box = np.array([np.clip(np.round(x0 - d), 0, w - 1), np.clip(np.round(y0 - d), 0, h - 1),
                        np.clip(np.round(x1 + d), 0, w - 1), np.clip(np.round(y1 + d), 0, h - 1)])
        if box[2] - box[0] <= 3 or box[3] - box[1] <= 3:
            continue
        boxes.append(box)
    return np.array(boxes, np.float64).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of axis-aligned boxes: ``a`` ``[N, 4]`` and ``b`` ``[M, 4]``
    ``(x0, y0, x1, y1)`` (any unit) -> ``[N, M]`` float64 in [0, 1]; 0 for pairs whose union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
             - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(pred: np.ndarray, ref: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` of predicted boxes ``[N, 4]`` against reference boxes
    ``[M, 4]``: a one-to-one matching maximizing the summed IoU (``scipy.optimize.linear_sum_assignment``), a
    matched pair counting as a hit when its IoU is ``>= iou`` (0.5: the ICDAR detection protocols' criterion)."""
    from scipy.optimize import linear_sum_assignment

    m = box_iou(pred, ref)
    if m.size == 0:
        return 0, m.shape[0], m.shape[1]
    rows, cols = linear_sum_assignment(m, maximize=True)
    tp = int((m[rows, cols] >= iou).sum())
    return tp, m.shape[0] - tp, m.shape[1] - tp


def f1(tp: int, fp: int, fn: int) -> float:
    """``2 TP / (2 TP + FP + FN)``; 1.0 when there is nothing to find and nothing was found (all three 0)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def box_f1(outputs: Sequence[Mapping[str, np.ndarray]], reference: Sequence[Mapping[str, np.ndarray]]) -> float:
    """Box-level F1 of ``outputs`` against ``reference`` (each a list of per-batch ``{output name: array}``; the
    first output of ``reference`` by name is the DB probability map ``[batch, 1, H, W]``): :func:`db_boxes` on every
    page of both, :func:`match_boxes` at IoU 0.5 per page, true/false positives and false negatives summed over all
    pages before :func:`f1` (so pages with many lines weigh more). 1.0 when neither side has a box on any page.

    Raises:
        ValueError: the map is not ``[batch, 1, H, W]`` or ``[batch, H, W]``.
    """
    tp = fp = fn = 0
    for out, ref in zip(outputs, reference):
        name = next(iter(ref))
        r, o = np.asarray(ref[name]), np.asarray(out[name])
        if r.ndim not in (3, 4) or (r.ndim == 4 and r.shape[1] != 1):
            raise ValueError(f"box_f1 expects DB probability maps [batch, 1, H, W], got {r.shape} for {name!r}")
        for rr, oo in zip(r, o):
            t, p, n = match_boxes(db_boxes(oo), db_boxes(rr))
            tp, fp, fn = tp + t, fp + p, fn + n
    return f1(tp, fp, fn)

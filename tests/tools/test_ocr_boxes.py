"""tools/ocr_metric.py's DB text-box extraction (PaddleOCR DBPostProcess as rapidocr applies it) and box-level F1.

The two-rectangle map's expected boxes are what rapidocr-onnxruntime 1.4.4's own DBPostProcess (cv2, pyclipper)
returns for it, checked once outside this repository (it needs packages graphopt does not depend on).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))

import ocr_metric  # noqa: E402


def two_lines() -> np.ndarray:
    """A 60 x 80 map: two text rectangles, a weak blob (above thresh 0.3, mean below box_thresh 0.5), a speck."""
    m = np.zeros((60, 80), np.float32)
    m[10:20, 5:50] = 0.9
    m[30:45, 20:70] = 0.8
    m[50:57, 2:15] = 0.4  # weak: its mean (dilated border included) is < 0.5
    m[2:4, 70:72] = 0.95  # 2 x 2 speck: shorter side after dilation 2 < min_size 3
    return m


def test_db_boxes_of_a_constructed_map() -> None:
    # (5..49) x (10..19) after dilation spans x 5..50, y 10..20: 45 x 10 between pixel centres; unclip distance
    # 45 * 10 * 1.6 / 110 = 6.545 -> x 0 (clipped) .. 57, y 3 .. 27; the second: 50 x 15 -> 9.23 -> 11, 21, 79, 54
    assert ocr_metric.db_boxes(two_lines()).tolist() == [[0, 3, 57, 27], [11, 21, 79, 54]]


def test_db_boxes_accepts_the_model_output_shape_and_thresholds() -> None:
    m = two_lines()
    assert ocr_metric.db_boxes(m[None, None]).tolist() == ocr_metric.db_boxes(m).tolist()
    assert len(ocr_metric.db_boxes(m, box_thresh=0.3)) == 3  # the weak blob passes a lower box threshold
    assert ocr_metric.db_boxes(np.zeros((32, 32))).shape == (0, 4)
    with pytest.raises(ValueError, match="one probability map"):
        ocr_metric.db_boxes(np.zeros((2, 1, 32, 32)))


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(ocr_metric.box_iou(a, b), [[50 / 150, 1, 0], [0, 0, 0]])
    assert ocr_metric.box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_match_two_hits_one_false_positive_one_miss() -> None:
    ref = np.array([[0, 0, 100, 20], [0, 40, 100, 60], [0, 80, 100, 100]])
    pred = np.array([[2, 1, 100, 20], [0, 42, 98, 60], [200, 0, 300, 20]])  # third hits nothing; ref[2] missed
    assert ocr_metric.match_boxes(pred, ref) == (2, 1, 1)
    assert ocr_metric.f1(2, 1, 1) == pytest.approx(2 / 3)


def test_match_is_one_to_one_and_needs_iou_half() -> None:
    ref = np.array([[0, 0, 100, 20]])
    assert ocr_metric.match_boxes(np.array([[0, 0, 100, 20], [1, 0, 100, 20]]), ref) == (1, 1, 0)
    assert ocr_metric.match_boxes(np.array([[0, 0, 50, 20]]), ref) == (1, 0, 0)  # IoU exactly 0.5 is a hit
    assert ocr_metric.match_boxes(np.array([[0, 0, 49, 20]]), ref) == (0, 1, 1)
    assert ocr_metric.match_boxes(np.zeros((0, 4)), ref) == (0, 0, 1)
    assert ocr_metric.match_boxes(ref, np.zeros((0, 4))) == (0, 1, 0)


def test_f1_with_nothing_to_find_is_one() -> None:
    assert ocr_metric.f1(0, 0, 0) == 1.0
    assert ocr_metric.f1(0, 3, 0) == 0.0


def test_box_f1_as_a_compress_metric() -> None:
    page = two_lines()[None, None]
    empty = np.zeros_like(page)
    one_line = page.copy()
    one_line[0, 0, 30:45] = 0  # the second line gone
    ref = [{"sigmoid_0.tmp_0": np.concatenate([page, empty])}]
    assert ocr_metric.box_f1(ref, ref) == 1.0  # identical maps
    assert ocr_metric.box_f1([{"sigmoid_0.tmp_0": np.concatenate([empty, empty])}],
                             [{"sigmoid_0.tmp_0": np.concatenate([empty, empty])}]) == 1.0  # no box anywhere
    assert ocr_metric.box_f1([{"sigmoid_0.tmp_0": np.concatenate([one_line, page])}], ref) == pytest.approx(
        2 * 1 / (2 * 1 + 2 + 1))  # page 0: 1 hit, 1 miss; page 1: 2 false positives
    with pytest.raises(ValueError, match="box_f1 expects"):
        ocr_metric.box_f1([{"y": np.zeros((1, 2, 8, 8))}], [{"y": np.zeros((1, 2, 8, 8))}])

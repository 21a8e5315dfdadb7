"""tools/pruning_ocr.py (the PaddleOCR rows of tools/compare_pruning.py): decoding, the metric, the splice."""

from __future__ import annotations

import sys

import numpy as np

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))

import pruning_ocr  # noqa: E402


def test_ctc_greedy_merges_repeats_and_drops_blanks() -> None:
    chars = ["blank", "a", "b", " "]
    probs = np.eye(4)[[1, 1, 0, 1, 2, 2, 3, 0, 0]]
    assert pruning_ocr.ctc_greedy(probs, chars) == "aab "


def test_edit_distance() -> None:
    assert pruning_ocr.edit_distance("kitten", "sitting") == 3
    assert pruning_ocr.edit_distance("", "abc") == 3


def test_render_returns_the_eval_strings(tmp_path) -> None:
    pruning_ocr.COUNTS = {**pruning_ocr.COUNTS, "rec": (2, 3)}
    calib, evaluation, strings = pruning_ocr.render("rec", tmp_path)
    assert len(list(calib.glob("*.npz"))) == 2 and len(evaluation) == 3 == len(strings)
    assert evaluation[0].shape == (1, 3, 48, 320) and all(s.strip() for s in strings)


def test_splice_keeps_the_rest_and_is_idempotent() -> None:
    md = "# t\n\nrows\n\n## Targets\n\n- minilm: holds.\n\n## Notes\n\nnote\n"
    row = {"model": "rec", "kinds": "channels", "method": "wanda", "ratio": 0.5, "achieved": 0.5, "seconds": 1.0,
           "flops": 5e8, "params": 1e6, "line_acc": 0.5}
    block = {"rows": [{**row, "recon": "none", "char_acc": 0.8}, {**row, "recon": "least-squares", "char_acc": 0.9}],
             "original": {"flops": 1e9, "params": 2e6, "char_acc": 0.95, "line_acc": 0.7}, "peak_rss_mb": 1.0,
             "calib": 2, "eval": 3, "latency": {"0.5": 0.6}}
    once = pruning_ocr.splice(md, {"rec": block}, "cmd")
    assert pruning_ocr.splice(once, {"rec": block}, "cmd") == once
    assert once.startswith("# t\n\nrows\n\n<!-- paddleocr -->") and once.endswith("## Notes\n\nnote\n")
    assert "- minilm: holds.\n- PaddleOCR rec: <= 0.7" in once and "1 of 1 (method, ratio) cells" in once

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


def _page(rects: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A white 64 x 96 page, ImageNet-normalized as ocr_inputs.det_input, with grey (x0, y0, x1, y1) rectangles."""
    import ocr_inputs

    pixels = np.ones((64, 96, 3), np.float32)
    for x0, y0, x1, y1 in rects:
        pixels[y0:y1 + 1, x0:x1 + 1] = 0.3
    return ((pixels - ocr_inputs.MEAN) / ocr_inputs.STD).transpose(2, 0, 1)[None].astype(np.float32)


def test_page_lines_finds_each_rendered_band() -> None:
    x = _page([(10, 5, 60, 20), (3, 30, 40, 40), (50, 33, 90, 38)])  # the last two share a band: one line
    assert pruning_ocr.page_lines(x).tolist() == [[10, 5, 60, 20], [3, 30, 90, 40]]
    assert pruning_ocr.page_lines(_page([])).shape == (0, 4)


def test_boxes_vs_lines_counts_the_originals_boxes_against_the_lines() -> None:
    prob = np.zeros((1, 1, 64, 96), np.float32)
    prob[0, 0, 8:18, 14:57] = 0.9  # inside the first line; no box for the second
    check = pruning_ocr.boxes_vs_lines([_page([(10, 5, 60, 20), (3, 30, 40, 40)])], [prob])
    assert check == {"boxes": 1, "lines": 2, "pages_equal": 0, "pages": 1, "line_tp": 1, "line_fp": 0,
                     "line_fn": 1, "line_f1": 2 / 3}


def test_det_section_has_box_f1_and_its_targets() -> None:
    row = {"model": "det", "kinds": "channels", "method": "wanda", "ratio": 0.5, "achieved": 0.5, "seconds": 1.0,
           "flops": 5e8, "params": 1e6, "map_cosine_min": 0.1}
    block = {"rows": [{**row, "recon": "none", "map_cosine": 0.2, "box_f1": 0.0, "box_tp": 0, "box_fp": 0,
                       "box_fn": 4},
                      {**row, "recon": "least-squares", "map_cosine": 0.6, "box_f1": 0.8, "box_tp": 4, "box_fp": 2,
                       "box_fn": 0}],
             "original": {"flops": 1e9, "params": 2e6, "boxes": 4, "lines": 4, "pages": 2, "pages_equal": 2,
                          "line_tp": 4, "line_f1": 1.0}, "peak_rss_mb": 1.0, "calib": 2, "eval": 2}
    text = "\n".join(pruning_ocr.section("det", block))
    assert "| cos | cos min | F1 | P | R | s |" in text and "box count = line count on 2 of 2 pages" in text
    assert "| 0.2000 | 0.1000 | 0.0000 |  | 0.0000 | 1.0 |" in text  # no box found: P blank
    assert "| 0.6000 | 0.1000 | 0.8000 | 0.6667 | 1.0000 | 1.0 |" in text
    lines = pruning_ocr.targets({"det": block})
    assert lines[0] == ("- PaddleOCR det, box F1 against the original's boxes (4 on 2 pages): best per ratio: 0.5: "
                        "0.8000 (wanda least-squares, cos 0.6000).")
    tied = {**block, "rows": [{**r, "box_f1": 0.0} for r in block["rows"]]}
    assert pruning_ocr.targets({"det": tied})[0].endswith("best per ratio: 0.5: 0.0000 (all 2 rows).")
    assert pruning_ocr.targets({"det": tied})[2].endswith("in 0 of 1 (method, ratio) cells; not in: wanda 0.5 (tie).")
    assert lines[1:] == ["- PaddleOCR det: least squares beats no reconstruction (map_cosine) in 1 of 1 (method, "
                         "ratio) cells.", "- PaddleOCR det: least squares beats no reconstruction (box_f1) in 1 of 1 "
                         "(method, ratio) cells."]


def test_measured_flops_counts_every_matmul_gemm_and_conv(tmp_path) -> None:
    """x [1, 2, 6, 6] -> Conv 3x3 (4 out, pad 1) -> Reshape [1, 144] -> Gemm (144 -> 5, transB) -> Reshape
    [1, 1, 5] -> MatMul (5 -> 3): 2 * (4*6*6 * 2*3*3) + 2 * 5 * 144 + 2 * 3 * 5 FLOPs; the Reshape target is
    computed (a Concat) so that shape inference alone would not know the MatMul's input shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (4, 2, 3, 3)), ("g", (5, 144)), ("m", (5, 3)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("s1", [1, 144]), ("a", [1, 1]), ("b", [5]))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "s1"], ["r"]),
             helper.make_node("Gemm", ["r", "g"], ["y"], transB=1),
             helper.make_node("Concat", ["a", "b"], ["s2"], axis=0),
             helper.make_node("Reshape", ["y", "s2"], ["y3"]),
             helper.make_node("MatMul", ["y3", "m"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    assert pruning_ocr.measured_flops(path, x) == 2 * (4 * 36 * 18) + 2 * 5 * 144 + 2 * 3 * 5

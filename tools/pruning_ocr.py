"""PaddleOCR rows of tools/compare_pruning.py (``--models det,rec``): structured pruning of the PP-OCRv4 text
recognizer (rec) and detector (det) on inputs rendered by tools/ocr_inputs.py.

rec: ``~/.cache/graphopt/corpus/paddleocr_rec.onnx`` (tools/corpus/ocr.py extracts it from the rapidocr wheel);
quality is character accuracy (1 - edit distance / characters) and exact-line accuracy of CTC greedy decoding
against the rendered strings, with the character dictionary the wheel's model carries (its ``character``
metadata; blank first, space last, as rapidocr's CTCLabelDecode). det: ``models/paddleocr_det.onnx``; quality is
the mean cosine of the probability map to the original's, and box-level F1 against the original's text boxes
(:func:`ocr_metric.db_boxes`, rapidocr's DB post-processing; one-to-one matching at IoU >= 0.5, counts summed over
the pages). The original's boxes are checked against the lines the pages show (:func:`page_lines`).
Calibration, evaluation and the latency input come from different seeds (the evaluation lines and pages are
used neither for calibration nor for any search).
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from ocr_metric import ctc_indices, db_boxes, edit_distance, f1, match_boxes  # noqa: F401 - edit_distance too

ROOT = Path(__file__).resolve().parent.parent
OCR_MODELS = {"rec": Path.home() / ".cache" / "graphopt" / "corpus" / "paddleocr_rec.onnx",
              "det": ROOT / "models" / "paddleocr_det.onnx"}
# rec48: rec with its input fixed to 1 x 3 x 48 x 320 (a copy in WORK). Since prune binds free image dims to the
# calibration batch's size, rec finds the same groups as rec48 (the CNN's channels, the SVTR neck's channels and
# MLPs; heads stay refused: the Reshape target of the channel axis is computed at run time); before, the
# analysis measured rec at 224 x 160, which its neck's Reshape rejects, and found only 17 CNN channel groups
KINDS = {"rec": (), "rec48": ("channels", "ffn"), "det": ("channels",)}  # rec: every kind found; det: channels
COUNTS = {"rec": (64, 256), "rec48": (64, 256), "det": (16, 48)}  # (calibration, evaluation) samples


SHAPES = {"rec": (1, 3, 48, 320), "rec48": (1, 3, 48, 320), "det": (1, 3, 320, 480)}


def source(model: str, work: Path) -> Path:
    """The model file (rec48: a copy of rec with the static input shape, written into ``work``)."""
    if model != "rec48":
        return OCR_MODELS[model]
    import onnx

    dst = work / "paddleocr_rec48.onnx"
    if not dst.exists():
        proto = onnx.load(str(OCR_MODELS["rec"]))
        for d, v in zip(proto.graph.input[0].type.tensor_type.shape.dim, SHAPES[model]):
            d.Clear()
            d.dim_value = v
        onnx.save(proto, str(dst))
    return dst


def stats(model: str, path: Path) -> dict:
    """``{"params", "flops"}`` at the evaluation input shape; parameters count Constant-node weights too (the
    PaddleOCR exports keep every weight in a Constant; pruned ones become initializers)."""
    import onnx

    from graphopt import ir
    from graphopt.analysis.stats import model_stats

    proto = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    for node in proto.graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                params += int(np.prod(a.t.dims))
    for d, v in zip(proto.graph.input[0].type.tensor_type.shape.dim, SHAPES[model]):
        d.Clear()
        d.dim_value = v
    st = model_stats(ir.from_proto(proto), with_flops=True, measure=True)  # the neck's shapes measured
    return {"params": params, "flops": st.flops}


def measured_flops(path: Path, x: np.ndarray) -> float:
    """MatMul/Gemm/Conv/ConvTranspose FLOPs (2 per multiply-add) of one run of the model at ``path`` on an input of
    ``x``'s shape: graphopt's count (:func:`graphopt.analysis.stats.flops`) with the shapes ONNX shape inference cannot
    follow (rec's SVTR neck) measured in onnxruntime."""
    from graphopt import ir
    from graphopt.analysis.stats import flops

    model = ir.load(path)
    name = next(v.name for v in model.graph.inputs if not v.is_initializer())
    total, unknown, approximate = flops(model, shapes={name: tuple(x.shape)}, measure=True)
    if unknown or approximate:
        raise RuntimeError(f"{path}: {unknown + approximate} MatMul/Gemm/Conv/ConvTranspose nodes could not be "
                           "measured")
    return float(total)


def render(model: str, work: Path) -> tuple[Path, list[np.ndarray], list[str]]:
    """Calibration folder (seed 0), evaluation inputs (seed 1) and, for rec, the evaluation strings."""
    import ocr_inputs

    texts: list[str] = []
    words = ocr_inputs._words

    def spy(rng, count):  # noqa: ANN001, ANN202 - record the string each rendered line shows
        texts.append(words(rng, count))
        return texts[-1]

    ocr_inputs._words = spy
    try:
        n_calib, n_eval = COUNTS[model]
        make = ocr_inputs.det_input if model == "det" else ocr_inputs.rec_input
        calib = work / f"ocr_{model}_calib"
        calib.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n_calib):
            np.savez(calib / f"sample_{i:04d}.npz", x=make(rng))
        texts.clear()
        rng = np.random.default_rng(1)
        evaluation = [make(rng) for _ in range(n_eval)]
        strings = list(texts) if model != "det" else []
    finally:
        ocr_inputs._words = words
    return calib, evaluation, strings


def dictionary(path: Path) -> list[str]:
    """rapidocr's CTC alphabet: blank, the model's ``character`` metadata lines, space."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ["blank", *meta["character"].splitlines(), " "]


def ctc_greedy(probs: np.ndarray, chars: list[str]) -> str:
    """Best-path decoding of one ``[T, C]`` probability row (:func:`ocr_metric.ctc_indices`) as a string."""
    return "".join(chars[i] for i in ctc_indices(probs))


def page_lines(x: np.ndarray, white: float = 250 / 255) -> np.ndarray:
    """The rectangles of the text lines on one rendered det page (:func:`ocr_inputs.det_input`'s ``[1, 3, H, W]``
    ImageNet-normalized float32): ``[N, 4]`` float64 ``(x0, y0, x1, y1)`` pixel indices, top to bottom, each the
    extent of a band of rows holding a pixel darker than ``white`` in some channel. A line is its pasted image (text
    on its own light background, padded 8 px left/right): det_input stacks lines with gaps of >= 4 white rows, so
    one band is one line."""
    from ocr_inputs import MEAN, STD

    pixels = np.asarray(x, np.float32)[0].transpose(1, 2, 0) * STD + MEAN
    ink = (pixels < white).any(axis=2)
    rows = np.concatenate([[False], ink.any(axis=1), [False]])
    starts = np.flatnonzero(~rows[:-1] & rows[1:])
    stops = np.flatnonzero(rows[:-1] & ~rows[1:]) - 1
    out = []
    for y0, y1 in zip(starts, stops):
        cols = np.flatnonzero(ink[y0:y1 + 1].any(axis=0))
        out.append([cols[0], y0, cols[-1], y1])
    return np.array(out, np.float64).reshape(-1, 4)


def boxes_vs_lines(evaluation: list[np.ndarray], ref: list[np.ndarray]) -> dict:
    """The sanity check of the det reference: the original's boxes (:func:`ocr_metric.db_boxes`) against the
    rendered lines (:func:`page_lines`) of each evaluation page: counts, pages where they agree, and the matching of
    boxes to line rectangles at IoU >= 0.5 (``line_tp/fp/fn``; a line rectangle includes its padded background, so
    a short word's tight box can fall under 0.5)."""
    boxes = [db_boxes(r) for r in ref]
    lines = [page_lines(x) for x in evaluation]
    tp, fp, fn = np.sum([match_boxes(b, g) for b, g in zip(boxes, lines)], axis=0).tolist()
    return {"boxes": sum(map(len, boxes)), "lines": sum(map(len, lines)),
            "pages_equal": sum(len(b) == len(g) for b, g in zip(boxes, lines)), "pages": len(lines),
            "line_tp": tp, "line_fp": fp, "line_fn": fn, "line_f1": f1(tp, fp, fn)}


def run(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 4
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x})[0] for x in inputs]


def quality(model: str, out: list[np.ndarray], ref: list[np.ndarray], strings: list[str],
            chars: list[str] | None) -> dict:
    if model == "det":
        cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
               for a, b in zip(out, ref)]
        tp, fp, fn = np.sum([match_boxes(db_boxes(a), db_boxes(b)) for a, b in zip(out, ref)], axis=0).tolist()
        return {"map_cosine": float(np.mean(cos)), "map_cosine_min": float(np.min(cos)), "box_f1": f1(tp, fp, fn),
                "box_tp": tp, "box_fp": fp, "box_fn": fn}
    texts = [ctc_greedy(o[0], chars) for o in out]
    errors = sum(edit_distance(t, s) for t, s in zip(texts, strings))
    total = sum(len(s) for s in strings)
    return {"char_acc": 1 - errors / total, "line_acc": float(np.mean([t == s for t, s in zip(texts, strings)]))}


def worker(model: str, work: Path, methods: tuple[str, ...], ratios: tuple[float, ...],
           recons: tuple[str, ...]) -> None:
    """The sweep of one PaddleOCR model (one process, one statistics cache) to WORK/ocr_MODEL.json."""
    from graphopt import ir
    from graphopt.calibrate.data import CalibrationData
    from graphopt.calibrate.stats import StatsCache
    from graphopt.passes.pruning import PruneOptions, prune

    src = source(model, work)
    calib_dir, evaluation, strings = render(model, work)
    calib = CalibrationData.from_path(calib_dir, ir.load_proto(src))
    chars = dictionary(src) if model != "det" else None
    ref = run(src, evaluation)
    original = {**stats(model, src), **quality(model, ref, ref, strings, chars),
                **(boxes_vs_lines(evaluation, ref) if model == "det" else {})}
    print(model, json.dumps(original), flush=True)
    cache, rows, shapes = StatsCache(), [], {}
    for method in methods:
        for recon in recons:
            for ratio in ratios:
                m = ir.load(src)
                t = time.perf_counter()
                rep = prune(m, PruneOptions(ratio=ratio, kinds=KINDS[model], method=method, reconstruction=recon),
                            calib, cache=cache)
                seconds = time.perf_counter() - t
                path = work / f"ocr_{model}_{method}_{recon}_{ratio}.onnx"
                ir.save(m, path)
                if ratio not in shapes:
                    shapes[ratio] = stats(model, path)
                kinds = sorted({g.kind for g in rep.groups}) if hasattr(rep.groups[0], "kind") else []
                rows.append({"model": model, "kinds": "+".join(kinds) or "all", "method": method, "recon": recon,
                             "ratio": ratio, "achieved": rep.achieved, "seconds": seconds, "path": str(path),
                             **shapes[ratio], **quality(model, run(path, evaluation), ref, strings, chars)})
                print(json.dumps(rows[-1]), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (work / f"ocr_{model}.json").write_text(json.dumps({"rows": rows, "original": original, "peak_rss_mb": peak,
                                                        "calib": len(calib), "eval": len(evaluation)}))


def latency(model: str, work: Path, paths: list[tuple[str, Path]], seconds: float) -> dict[str, float]:
    """Latency ratio of each (label, model) after O2 vs the original after O2, interleaved, 3 per run."""
    from benchmarks_common import interleaved_ratios, o2 as _o2

    base = work / f"ocr_{model}_original_o2.onnx"
    if not base.exists():
        _o2(source(model, work), base)
    _, evaluation, _ = render(model, work / "latency_inputs")
    inputs = {"x": evaluation[0]}
    return interleaved_ratios(base, paths, inputs, seconds, model)


def _f(v: float | None, d: int = 4) -> str:
    return "" if v is None else f"{v:.{d}f}"


def _ratio(tp: int | None, other: int | None) -> str:
    """``tp / (tp + other)`` (precision, recall) to 4 places; empty when undefined (no box on that side)."""
    return "" if tp is None or other is None or tp + other == 0 else f"{tp / (tp + other):.4f}"


def _boxes_note(o: dict) -> str:
    """The det section's sentence on the original's boxes against the rendered lines (empty without the check)."""
    if "boxes" not in o:
        return ""
    return (f" The original finds {o['boxes']} boxes on the {o['pages']} evaluation pages, which show {o['lines']} "
            f"rendered lines; box count = line count on {o['pages_equal']} of {o['pages']} pages; against the lines' "
            f"rectangles (text on its padded background) {o['line_tp']} boxes match at IoU >= 0.5 (F1 "
            f"{o['line_f1']:.4f}).")


def section(model: str, block: dict) -> list[str]:
    """The markdown of one PaddleOCR model."""
    o = block["original"]
    rec = model != "det"
    fixed = ", input fixed to 48 x 320" if model == "rec48" else ""
    head = (f"## PaddleOCR {model} (PP-OCRv4{fixed}; original: {o['flops'] / 1e9:.3f} GFLOPs, "
            f"{o['params'] / 1e6:.2f} M params"
            + (f", char acc {o['char_acc']:.4f}, line acc {o['line_acc']:.4f})" if rec else ")"))
    lines = [head, "",
             (f"Calibration: {block['calib']} rendered lines (seed 0); quality: {block['eval']} other rendered lines "
              "(seed 1) with their strings: `char` character accuracy (1 - edit distance / characters), `line` "
              "exact-line accuracy, CTC greedy decoding with the wheel model's dictionary. 48 x 320 input."
              if rec else
              f"Calibration: {block['calib']} rendered pages (seed 0); quality: {block['eval']} other pages (seed 1): "
              "`cos` mean (and worst) cosine of the probability map to the original's; `F1`, `P`, `R`: box-level F1, "
              "precision and recall against the original's text boxes on the same pages (rapidocr's DB "
              "post-processing, `tools/ocr_metric.py` `db_boxes`: thresh 0.3, box_thresh 0.5, unclip 1.6, "
              "axis-aligned; one-to-one matching at IoU >= 0.5, counts summed over the pages; `P` blank: no box "
              "found). 320 x 480 input."
              + _boxes_note(o)),
             "`ratio`: kept share of the prunable groups' Conv/MatMul FLOPs; FLOPs/params at the evaluation input "
             "size; `latency`: the wanda / least-squares model at that ratio after O2 vs the original after O2 "
             "(CPU, 2 threads, ORT_ENABLE_ALL, interleaved; every method gives the same shapes with the uniform "
             f"allocation); `s`: pruning time (statistics cached across the sweep). Sweep peak RSS "
             f"{block['peak_rss_mb']:.0f} MB.", ""]
    cols = "| char | line |" if rec else "| cos | cos min | F1 | P | R |"
    lines += ["| kinds | method | reconstruction | ratio | kept | GFLOPs | params M | latency " + cols + " s |",
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("" if rec else "---|---|---|")]
    for r in block["rows"]:
        lat = block.get("latency", {}).get(str(r["ratio"]))
        q = (f"{r['char_acc']:.4f} | {r['line_acc']:.4f}" if rec else
             f"{r['map_cosine']:.4f} | {r['map_cosine_min']:.4f} | {_f(r.get('box_f1'))} | "
             f"{_ratio(r.get('box_tp'), r.get('box_fp'))} | {_ratio(r.get('box_tp'), r.get('box_fn'))}")
        lines.append(f"| {r['kinds']} | {r['method']} | {r['recon']} | {r['ratio']} | {r['achieved']:.3f} | "
                     f"{r['flops'] / 1e9:.3f} | {r['params'] / 1e6:.2f} | {_f(lat, 3)} | {q} | {r['seconds']:.1f} |")
    study = block.get("allocation")
    if study:
        size = "48 x 320, shapes from onnxruntime (the SVTR neck included" if rec else \
            "320 x 480, shapes from onnxruntime (the DB head's ConvTranspose included"
        lines += ["", f"### PaddleOCR {model}: allocation, whole-model FLOPs measured "
                  f"(`python tools/pruning_ocr.py --allocation {model}`)", "",
                  "The `ratio` above is the pass's: the kept share of the prunable groups' FLOPs counted per unit, "
                  "linear in the units kept. In a CNN a Conv between two pruned groups loses FLOPs in both, and the "
                  "groups sit at different resolutions, so it is not the model's FLOP ratio. Here `FLOPs` is "
                  f"measured: every MatMul/Gemm/Conv/ConvTranspose at {size}; original "
                  f"{study['original_flops'] / 1e9:.3f} GFLOPs), as a share of the original's. "
                  "Least squares throughout; `error`: kept counts by consumer output error per FLOP saved; "
                  "`relative`: that error over the consumers' output energy; "
                  "`output`: that error scaled per group by its measured gain to the model output's change "
                  "(`passes/pruning/gains.py`; `s` includes those masked runs). "
                  f"Latency: after O2 vs the original after O2, one interleaved run (load {study['load']:.1f} "
                  "before it).", "",
                  "| method | allocation | ratio | kept | FLOPs | latency | " + ("char | line" if rec else
                                                                              "cos | F1") + " | s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += allocation_rows(study["rows"])
    return lines + [""]


def allocation_rows(rows: list[dict]) -> list[str]:
    """The allocation table's rows (method, allocation, ratio, kept, FLOPs, latency, char and line for rec or map
    cosine and box F1 for det, s)."""
    return [f"| {r['method']} | {r['allocation']} | {r['ratio']} | {r['achieved']:.3f} | {r['flops_ratio']:.3f} | "
            f"{_f(r.get('latency'), 3)} | "
            + (f"{r['char_acc']:.4f} | {r['line_acc']:.4f}" if "char_acc" in r else
               f"{r['map_cosine']:.4f} | {_f(r.get('box_f1'))}")
            + f" | {r['seconds']:.1f} |" for r in rows]


def targets(blocks: dict) -> list[str]:
    lines = []
    key = {"rec": "char_acc", "rec48": "char_acc", "det": "map_cosine"}
    for model, block in blocks.items():
        rows, k = block["rows"], key[model]
        if model != "det":
            base = block["original"]["char_acc"]
            ok = [r for r in rows if r["achieved"] <= 0.7 and r["char_acc"] >= base - 0.01]
            low = [r for r in rows if r["achieved"] <= 0.7]
            best = max(low, key=lambda r: r["char_acc"]) if low else None
            lines.append(f"- PaddleOCR {model}: <= 0.7 of the prunable-group FLOPs within 1 point of the original's "
                         f"character accuracy ({base:.4f}): {'holds' if ok else 'does NOT hold'}"
                         + (f"; best at <= 0.7: {best['method']} {best['recon']} ratio {best['ratio']} (kept "
                            f"{best['achieved']:.3f}): char acc {best['char_acc']:.4f}" if best else "") + ".")
            whole = [r for r in rows if r["flops"] <= 0.7 * block["original"]["flops"]]
            near = max(rows, key=lambda r: (r["char_acc"] >= base - 0.01, -r["flops"]))
            lines.append(f"- PaddleOCR {model}, the GFLOPs column (every MatMul/Gemm/Conv at 48 x 320, the SVTR "
                         "neck's shapes measured in onnxruntime): "
                         f"{len(whole)} rows reach <= 0.7 of the original's "
                         f"{block['original']['flops'] / 1e9:.3f} GFLOPs; the fewest FLOPs within 1 point: "
                         + (f"{near['method']} {near['recon']} ratio {near['ratio']}: "
                            f"{near['flops'] / block['original']['flops']:.3f} of the FLOPs, char acc "
                            f"{near['char_acc']:.4f}" if near["char_acc"] >= base - 0.01 else "none") + ".")
        study = block.get("allocation")
        if study and model != "det":
            base = block["original"]["char_acc"]
            ok = [r for r in study["rows"] if r["flops_ratio"] <= 0.7 and r["char_acc"] >= base - 0.01]
            top = min(ok, key=lambda r: r["flops_ratio"]) if ok else max(
                study["rows"], key=lambda r: (r["flops_ratio"] <= 0.7, r["char_acc"]))
            lines.append(f"- PaddleOCR {model}, whole-model FLOPs measured (the allocation rows): <= 0.7 of the "
                         f"FLOPs within 1 point of {base:.4f}: {'holds' if ok else 'does NOT hold'}; "
                         f"{'the fewest FLOPs within 1 point' if ok else 'best at <= 0.7'}: {top['method']} "
                         f"{top['allocation']} ratio {top['ratio']}: {top['flops_ratio']:.3f} of the FLOPs, char acc "
                         f"{top['char_acc']:.4f}, latency {_f(top.get('latency'), 3)}.")
        if model == "det" and "box_f1" in rows[0]:
            n_ref = block["original"].get("boxes")
            cells = []
            for ratio in dict.fromkeys(r["ratio"] for r in rows):
                at = [r for r in rows if r["ratio"] == ratio]
                top = max(r["box_f1"] for r in at)
                best = [r for r in at if r["box_f1"] == top]
                who = (f"all {len(at)} rows" if len(best) == len(at) > 1 else
                       f"{best[0]['method']} {best[0]['recon']}, cos {best[0]['map_cosine']:.4f}" if len(best) == 1
                       else ", ".join(f"{r['method']} {r['recon']}" for r in best))
                cells.append(f"{ratio}: {top:.4f} ({who})")
            lines.append(f"- PaddleOCR det, box F1 against the original's boxes"
                         + (f" ({n_ref} on {block['eval']} pages)" if n_ref else "") + ": best per ratio: "
                         + "; ".join(cells) + ".")
        for k in [k] + (["box_f1"] if model == "det" and "box_f1" in rows[0] else []):
            lines += _recon_line(model, rows, k)
    return lines


def _recon_line(model: str, rows: list[dict], k: str) -> list[str]:
    """The "least squares beats no reconstruction" target line of one model on metric ``k`` (a tie is no win)."""
    misses, n = [], 0
    for r in rows:
        if r["recon"] != "none":
            continue
        twin = next((x for x in rows if x["recon"] == "least-squares" and x["method"] == r["method"]
                     and x["ratio"] == r["ratio"]), None)
        if twin is None:
            continue
        n += 1
        if twin[k] <= r[k]:
            misses.append(f"{r['method']} {r['ratio']}" + (" (tie)" if twin[k] == r[k] else ""))
    return [f"- PaddleOCR {model}: least squares beats no reconstruction ({k}) in {n - len(misses)} of {n} "
            "(method, ratio) cells" + (f"; not in: {', '.join(misses)}" if misses else "") + "."]


def splice(md: str, blocks: dict, command: str, notes: list[str] | None = None) -> str:
    """``md`` (the MiniLM report) with the PaddleOCR sections (re)placed before ``## Targets`` and their target
    lines appended to that section; everything else kept as it is."""
    start = md.find("<!-- paddleocr -->")
    if start >= 0:
        end = md.find("<!-- /paddleocr -->", start) + len("<!-- /paddleocr -->")
        md = md[:start] + md[end:].lstrip("\n")
    md = "\n".join(line for line in md.split("\n") if not line.startswith("- PaddleOCR "))
    body = ["<!-- paddleocr -->", f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            ""]
    for model, block in blocks.items():
        body += section(model, block)
    body += [*(notes or []), "<!-- /paddleocr -->", ""]
    at = md.find("## Targets")
    if at < 0:
        raise ValueError("the report has no '## Targets' section to put the PaddleOCR sections before")
    md = md[:at] + "\n".join(body) + "\n" + md[at:]
    end = md.find("\n## ", md.find("## Targets") + 3)
    add = "\n".join(targets(blocks)) + "\n"
    if end < 0:
        return md.rstrip("\n") + "\n" + add
    head = md[:end].rstrip("\n") + "\n"
    return head + add + md[end:]


def allocation_study(model: str, work: Path, ratios: tuple[float, ...] = (0.7, 0.65),
                     methods: tuple[str, ...] = ("flap", "wanda"), seconds: float = 4.0,
                     allocations: tuple[str, ...] = ("uniform", "error")) -> dict:
    """Least-squares pruning of ``model`` (rec, rec48 or det) with each of ``allocations`` at ``ratios``: quality on
    the evaluation lines or pages, whole-model FLOPs measured (:func:`measured_flops`) as a share of the original's,
    and latency after O2 against the original after O2 in one interleaved run."""
    from graphopt import ir
    from graphopt.calibrate.data import CalibrationData
    from graphopt.calibrate.stats import StatsCache
    from graphopt.passes.pruning import PruneOptions, prune

    src = source(model, work)
    calib_dir, evaluation, strings = render(model, work)
    calib = CalibrationData.from_path(calib_dir, ir.load_proto(src))
    chars = dictionary(src) if model != "det" else None
    ref = run(src, evaluation)
    original = measured_flops(src, evaluation[0])
    cache, rows = StatsCache(), []
    for ratio in ratios:
        for method in methods:
            for allocation in allocations:
                m = ir.load(src)
                t = time.perf_counter()
                rep = prune(m, PruneOptions(ratio=ratio, kinds=KINDS[model], method=method, allocation=allocation),
                            calib, cache=cache)
                path = work / f"ocr_{model}_alloc_{method}_{allocation}_{ratio}.onnx"
                ir.save(m, path)
                rows.append({"method": method, "allocation": allocation, "ratio": ratio, "achieved": rep.achieved,
                             "seconds": time.perf_counter() - t, "path": str(path),
                             "flops_ratio": measured_flops(path, evaluation[0]) / original,
                             **quality(model, run(path, evaluation), ref, strings, chars)})
                print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()[0]
    lat = latency(model, work, [(r["path"], Path(r["path"])) for r in rows], seconds)
    for r in rows:
        r["latency"] = lat[r["path"]]
    return {"rows": rows, "original_flops": original, "load": load}


def block_command(md: str) -> str:
    """The command of a report's PaddleOCR block (its ``Generated by `COMMAND` on DATE.`` line), to keep it when
    the block is spliced again; a generic one when the report has no block."""
    block = md[md.find("<!-- paddleocr -->"):].split("\n")[1:] if "<!-- paddleocr -->" in md else []
    line = next((x for x in block if x.startswith("Generated by `")), "")
    return line[len("Generated by `"):line.rfind("` on ")] if line else "python tools/compare_pruning.py --models"


def _notes(md: str) -> list[str]:
    """The PaddleOCR block's notes (from ``### PaddleOCR notes`` to the block's end marker) of a report."""
    start, end = md.find("### PaddleOCR notes"), md.find("<!-- /paddleocr -->")
    return md[start:end].rstrip("\n").split("\n") + [""] if 0 <= start < end else []


def main() -> int:
    """``--allocation MODEL``: :func:`allocation_study` into WORK/ocr.json (the blocks of the last
    ``compare_pruning.py --models`` run, which must be in WORK), spliced into the report."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--allocation", required=True, choices=("rec", "rec48", "det"))
    p.add_argument("--work", required=True, help="the folder of the compare_pruning.py --models run (ocr.json)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "benchmarks" / "pruning.md"))
    p.add_argument("--methods", default="flap,wanda", help="pruning methods of the study (default flap,wanda)")
    p.add_argument("--allocations", default="uniform,error,relative", help="allocations of the study (default "
                   "uniform,error,relative; output: the error curves scaled by each group's measured gain)")
    p.add_argument("--ratios", default="0.7,0.65", help="pass ratios of the study (default 0.7,0.65)")
    p.add_argument("--print-only", action="store_true", help="print the rows as markdown; WORK/ocr.json and the "
                   "report stay as they are (WORK needs only the model and the rendered lines)")
    args = p.parse_args()
    work, out = Path(args.work), Path(args.out)
    methods = tuple(args.methods.split(","))
    more = {"allocations": tuple(args.allocations.split(",")), "ratios": tuple(float(r) for r in args.ratios.split(","))}
    if args.print_only:
        study = allocation_study(args.allocation, work, methods=methods, seconds=args.seconds, **more)
        print(f"original measured FLOPs {study['original_flops'] / 1e9:.3f} G, load {study['load']:.2f}")
        print("\n".join(allocation_rows(study["rows"])))
        return 0
    blocks = json.loads((work / "ocr.json").read_text())
    blocks[args.allocation]["allocation"] = allocation_study(args.allocation, work, methods=methods,
                                                             seconds=args.seconds, **more)
    (work / "ocr.json").write_text(json.dumps(blocks))
    md = out.read_text()
    command = (f"{block_command(md)}; then python tools/pruning_ocr.py --allocation {args.allocation} --work WORK "
               f"--methods {args.methods} --allocations {args.allocations} --ratios {args.ratios}")
    out.write_text(splice(md, blocks, command, _notes(md)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

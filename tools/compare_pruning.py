"""Structured pruning (``graphopt prune``) on all-MiniLM-L6-v2 (both torch exports), written to
tools/benchmarks/pruning.md.

For each export, kinds (heads + FFN; FFN only without magnitude), method (magnitude, wanda, flap; the dynamo
export wanda only, for time), reconstruction (none, least-squares) and kept block-FLOP ratio (0.9 / 0.75 / 0.6 / 0.5): MatMul/Conv FLOPs and parameters (batch 1,
sequence 128), quality on the 512 evaluation sentences (used neither for calibration nor for any search): rank
fidelity and mean embedding cosine to the original. The sweep runs in one subprocess per export with one shared
statistics cache (the statistics pass over the 256 calibration sentences runs once); the cold cost of one
``graphopt prune`` run (time, peak RSS) is measured in its own subprocess. Latency: the pruned models after O2
against the original after O2, interleaved by ``graphopt.bench``'s runner (ORT_ENABLE_ALL, 2 threads, 128 real
tokens); the structure at one (kinds, ratio) is the same for every method with the uniform allocation, so one
model per (kinds, ratio) is timed. The peer: onnxsim 0.8.1's structured (L2) and structured-Wanda pruning on the
same models at the FFN sparsity of the same block ratio (its attention-head pruning matches only fused attention
nodes, none in these exports). Stacked: prune -> ``graphopt quantize`` (INT8) against INT8 alone.

    .venv/bin/python tools/compare_pruning.py [--exports ts,dynamo] [--seconds 6]
    .venv/bin/python tools/compare_pruning.py --extra [--extra-method obs]  # allocation variants, the 0.8 ratio (ts)
    .venv/bin/python tools/compare_pruning.py --latency-only --ocr-work DIR   # every MiniLM latency column again
    .venv/bin/python tools/compare_pruning.py --stacked-only   # the stacked prune -> INT8 rows again, in place
    .venv/bin/python tools/compare_pruning.py --work DIR --worker ts sensitivity   # one export's sweep of other
                     methods (any of graphopt.passes.pruning.scoring.METHODS, e.g. sensitivity) into DIR/ts.json
    .venv/bin/python tools/compare_pruning.py --method-table WORK/ts.json [OTHER/ts.json]   # a worker's rows as a
                     markdown table (with OTHER's wanda rows beside them)
    .venv/bin/python tools/compare_pruning.py --rewrite "COMMAND" [--notes notes.md]   # the report from WORK
    .venv/bin/python tools/compare_pruning.py --models det,rec [--ocr-methods wanda,flap]   # PaddleOCR sections
                     (tools/pruning_ocr.py), spliced into the existing report: the MiniLM rows stay as they are
                     (with --rewrite "COMMAND": only the splice, from WORK/ocr.json)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks_common import MODELS, TEXT, data as _data, latency_inputs as _latency_inputs  # noqa: E402
from benchmarks_common import interleaved_ratios, o2 as _o2, outputs as _outputs, quality, split_data  # noqa: E402
from benchmarks_common import stats as _stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATIOS = (0.9, 0.75, 0.6, 0.5)
KINDS = {"heads+ffn": ("heads", "ffn"), "ffn": ("ffn",)}
METHODS = ("magnitude", "wanda", "flap")
RECONS = ("none", "least-squares")


def worker(export: str, work: Path, methods: tuple[str, ...]) -> None:
    """The sweep of one export (one process, one statistics cache)."""
    from graphopt import ir
    from graphopt.calibrate.stats import StatsCache
    from graphopt.passes.pruning import PruneOptions, prune

    src, _, calib, evaluation, ref = split_data(export)
    cache = StatsCache()
    rows = []
    shapes: dict[tuple[str, float], dict] = {}  # FLOPs/params depend only on (kinds, ratio) with uniform allocation
    for kname, kinds in KINDS.items():
        for method in (methods if kname == "heads+ffn" else tuple(m for m in methods if m != "magnitude")):
            for recon in RECONS:
                for ratio in RATIOS:
                    model = ir.load(src)
                    t = time.perf_counter()
                    rep = prune(model, PruneOptions(ratio=ratio, kinds=kinds, method=method, reconstruction=recon),
                                calib, cache=cache)
                    seconds = time.perf_counter() - t
                    name = f"{export}_{kname}_{method}_{recon}_{ratio}"
                    path = work / f"{name}.onnx"
                    ir.save(model, path)
                    q = quality(_outputs(str(path), evaluation), ref)
                    if (kname, ratio) not in shapes:
                        shapes[kname, ratio] = _stats(model)
                    rows.append({"export": export, "kinds": kname, "method": method, "recon": recon,
                                 "ratio": ratio, "achieved": rep.achieved, "path": str(path), "seconds": seconds,
                                 **shapes[kname, ratio], **q,
                                 "kept": {g.name: g.kept for g in rep.groups}})
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "kept"}), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (work / f"{export}.json").write_text(json.dumps({"rows": rows, "peak_rss_mb": peak,
                                                     "original": _stats(src)}))


def cold(export: str, work: Path) -> dict:
    """One ``graphopt prune`` run (256 calibration sentences, wanda, least squares, heads + FFN, 0.6) in its own
    subprocess: wall time and peak RSS."""
    out = work / f"{export}_cold.onnx"
    # a fresh parent, so that RUSAGE_CHILDREN sees this run alone (not the sweep workers before it)
    probe = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); subprocess.run(sys.argv[1:], "
             "check=True); print(json.dumps({'seconds': time.perf_counter() - t, 'peak_rss_mb': "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "graphopt.cli.main", "-q", "prune",
                           str(MODELS[export]), "-o", str(out), "--calib", str(TEXT / "calib"), "--ratio", "0.6"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peer(export: str, work: Path, shares: dict[float, float]) -> list[dict]:
    """onnxsim 0.8.1's structured (L2) and structured-Wanda pruning at the FFN sparsity of each block ratio."""
    import onnx
    import onnxsim

    from graphopt import ir

    proto = ir.load_proto(MODELS[export])
    calib = [{k: v for k, v in b.items()} for b in list(_data("calib", proto, limit=64))]
    evaluation = list(_data("eval", proto))
    ref = _outputs(str(MODELS[export]), evaluation)
    rows = []
    for ratio, share in shares.items():
        for name, fn in (("structured", lambda m, s: onnxsim.apply_structured_pruning(m, sparsity=s)),
                         ("structured-wanda", lambda m, s: onnxsim.apply_structured_wanda_pruning(
                             m, calibration_data=calib, sparsity=s))):
            t = time.perf_counter()
            row = {"export": export, "tool": f"onnxsim {name}", "ratio": ratio, "sparsity": 1 - share}
            try:
                out = fn(onnx.load(MODELS[export]), 1 - share)
                row["seconds"] = time.perf_counter() - t
                path = work / f"{export}_onnxsim_{name}_{ratio}.onnx"
                onnx.save(out, path)
                row.update(path=str(path), **_stats(path), **quality(_outputs(str(path), evaluation), ref))
            except Exception as e:  # noqa: BLE001 - a peer's failure is a result
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def latency(export: str, work: Path, paths: list[tuple[str, Path]], seconds: float) -> dict[str, float]:
    """Latency ratio of each (label, model) after O2 vs the original after O2, reference + 3 per interleaved run."""
    from graphopt import ir

    base = work / f"{export}_original_o2.onnx"
    if not base.exists():
        _o2(MODELS[export], base)
    inputs = _latency_inputs(ir.load_proto(MODELS[export]))
    feeds = {i.name for i in ir.load_proto(MODELS[export]).graph.input}
    inputs = {k: v for k, v in inputs.items() if k in feeds}
    return interleaved_ratios(base, paths, inputs, seconds, export)


def stacked(export: str, work: Path, seconds: float) -> list[dict]:
    """prune (wanda, least squares, heads + FFN, 0.6 and FFN-only 0.75) -> INT8 quantize vs INT8 alone. Each
    model goes to ``graphopt quantize`` as it is: its ``int8`` pipeline runs the O2 fusions that keep MatMuls
    quantizable (an O2 model's fused ``Attention``, reading the mask as an attention bias, would stay float)."""
    from graphopt import ir

    proto = ir.load_proto(MODELS[export])
    evaluation = list(_data("eval", proto))
    ref = _outputs(str(MODELS[export]), evaluation)
    items = [("INT8 alone", MODELS[export])]
    for kname, ratio in (("heads+ffn", 0.6), ("ffn", 0.75)):
        items.append((f"prune {kname} {ratio} -> INT8", work / f"{export}_{kname}_wanda_least-squares_{ratio}.onnx"))
    rows, paths = [], []
    for label, src in items:
        dst = work / f"{export}_{'stk' if 'prune' in label else 'orig'}_{len(paths)}_int8.onnx"
        subprocess.run([sys.executable, "-m", "graphopt.cli.main", "-q", "quantize", str(src), "-o", str(dst),
                        "--calib", str(TEXT / "calib"), "--calib-limit", "64"], check=True)
        q = quality(_outputs(str(dst), evaluation), ref)
        rows.append({"label": label, "path": str(dst), **q})
        paths.append((label, dst))
    lat = latency(export, work, paths, seconds)
    for r in rows:
        r["latency_ratio"] = lat[r["label"]]
    return rows


def stacked_only(work: Path, out: Path, seconds: float) -> None:
    """The ts stacked rows again (into WORK/all.json), their table in ``out`` replaced in place (the rest of the
    report, hand-written sections included, untouched)."""
    data = json.loads((work / "all.json").read_text())
    rows = stacked("ts", work, seconds)
    data["exports"]["ts"]["stacked"] = rows
    (work / "all.json").write_text(json.dumps(data, default=str))
    text = out.read_text()
    start = text.index("### Stacked: prune")
    end = text.index("\n\n", text.index("| model | latency | RF | cos |", start))
    table = ["### Stacked: prune -> INT8 (`graphopt quantize`, 64 calibration sentences) vs INT8 alone (one "
             f"interleaved run; latency vs the original after O2; `--stacked-only`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f})", "",
             "| model | latency | RF | cos |", "|---|---|---|---|"]
    table += [f"| {r['label']} | {_fmt(r['latency_ratio'], 3)} | {_fmt(r['rank_fidelity'])} | {_fmt(r['cosine'])} |"
              for r in rows]
    out.write_text(text[:start] + "\n".join(table) + text[end:])


def labels_of(export: str, work: Path, block: dict) -> list[tuple[str, Path]]:
    """The models a sweep times: the wanda / least-squares model of each (kinds, ratio) and the peer's."""
    labels = [(f"{kname} {ratio}", work / f"{export}_{kname}_wanda_least-squares_{ratio}.onnx")
              for kname in KINDS for ratio in RATIOS]
    return labels + [(f"{r['tool']} {r['ratio']}", Path(r["path"])) for r in block.get("peer", []) if "path" in r]


def latency_only(work: Path, out: Path, seconds: float, ocr_work: Path | None) -> None:
    """Re-time every latency column of the report (the MiniLM sweeps, the peer, the stacked rows) on the models
    a full run left in WORK, e.g. on a quieter machine, and rewrite the report with its notes (from ``## Notes``
    on) and, from OCR_WORK/ocr.json, its PaddleOCR block as they were."""
    import pruning_ocr

    data = json.loads((work / "all.json").read_text())
    if (work / "extra.json").exists():
        data["extra"] = json.loads((work / "extra.json").read_text())
    md = out.read_text()
    data["load"] = os.getloadavg()
    data["notes"] = md[md.find("## Notes"):].rstrip("\n").split("\n") if "## Notes" in md else []
    for export, block in data["exports"].items():
        block["latency"] = latency(export, work, labels_of(export, work, block), seconds)
        if block.get("stacked"):
            lat = latency(export, work, [(r["label"], Path(r["path"])) for r in block["stacked"]], seconds)
            for r in block["stacked"]:
                r["latency_ratio"] = lat[r["label"]]
    (work / "all.json").write_text(json.dumps({k: v for k, v in data.items() if k not in ("extra", "notes")},
                                              default=str))
    line = next((x for x in md.split("\n") if x.startswith("Generated by `python tools/compare_pruning.py")), "")
    earlier = line[len("Generated by `"):line.find("` on ")] if line else "python tools/compare_pruning.py"
    write(out, f"{earlier}; every latency column rerun by --latency-only", data)
    if ocr_work is not None and (ocr_work / "ocr.json").exists():
        out.write_text(pruning_ocr.splice(out.read_text(), json.loads((ocr_work / "ocr.json").read_text()),
                                          pruning_ocr.block_command(md), pruning_ocr._notes(md)))


def extra(work: Path, method: str = "wanda") -> None:
    """Allocation variants (error, global) and the 0.8 ratio on the ts export (``method``, least squares), to
    WORK/extra.json (wanda) or WORK/extra_METHOD.json, and printed as the report's table rows."""
    from graphopt import ir
    from graphopt.calibrate.stats import StatsCache
    from graphopt.passes.pruning import PruneOptions, prune

    src = MODELS["ts"]
    proto = ir.load_proto(src)
    calib, evaluation = _data("calib", proto), list(_data("eval", proto))
    ref = _outputs(str(src), evaluation)
    cache, rows = StatsCache(), []
    for kname, alloc, ratio in (("heads+ffn", "uniform", 0.8), ("ffn", "uniform", 0.8), ("heads+ffn", "error", 0.8),
                                ("heads+ffn", "error", 0.6), ("heads+ffn", "error", 0.5),
                                ("heads+ffn", "global", 0.6)):
        model = ir.load(src)
        t = time.perf_counter()
        rep = prune(model, PruneOptions(ratio=ratio, kinds=KINDS[kname], method=method, allocation=alloc,
                                        levels=12), calib, cache=cache)
        seconds = time.perf_counter() - t
        path = work / f"extra_{kname}_{alloc}_{ratio}{'' if method == 'wanda' else '_' + method}.onnx"
        ir.save(model, path)
        rows.append({"kinds": kname, "method": method, "allocation": alloc, "ratio": ratio, "achieved": rep.achieved,
                     "seconds": seconds, "path": str(path), **quality(_outputs(str(path), evaluation), ref),
                     "kept": {g.name: g.kept for g in rep.groups}})
        print(json.dumps(rows[-1]), flush=True)
    (work / ("extra.json" if method == "wanda" else f"extra_{method}.json")).write_text(json.dumps(rows))
    print("\n".join(extra_rows(rows)))


def extra_rows(rows: list[dict]) -> list[str]:
    """The allocation table's rows (kinds, allocation, ratio, kept, RF, cos, s, kept heads / neurons per layer)."""
    out = []
    for r in rows:
        kept = r["kept"]
        per = " ".join(f"{kept.get(f'layer{i}.attn.heads', 12)}/{kept.get(f'layer{i}.ffn', 1536)}" for i in range(6))
        out.append(f"| {r['kinds']} | {r['allocation']} | {r['ratio']} | {r['achieved']:.3f} | "
                   f"{r['rank_fidelity']:.4f} | {r['cosine']:.4f} | {r['seconds']:.1f} | {per} |")
    return out


def _fmt(v: float | None, d: int = 4) -> str:
    return "" if v is None else f"{v:.{d}f}"


def write(out: Path, command: str, data: dict) -> None:
    lines = ["# Structured pruning (`graphopt prune`) on all-MiniLM-L6-v2", "",
             f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"(load average before/after: {data['load'][0]:.2f} / {os.getloadavg()[0]:.2f}).", "",
             "`ratio`: kept share of the block FLOPs (the MatMul/Conv FLOPs of every attention head and FFN neuron, "
             "attention's QK/AV at sequence 128 included); `kept`: after rounding (align 8 neurons, whole heads). "
             "Calibration: the 256 calib sentences; quality: the 512 eval sentences (neither calibration nor any "
             "search saw them): `RF` rank fidelity (Spearman over 1,000 sentence pairs of the cosine similarities), "
             "`cos` mean embedding cosine to the original. `FLOPs`, `params`: whole model at batch 1, sequence 128. "
             "`latency`: after O2 vs the original after O2, onnxruntime CPU, 2 threads, ORT_ENABLE_ALL, "
             "interleaved (graphopt.bench), 128 real tokens; one model per (kinds, ratio) is timed since every "
             "method gives the same shapes. `s`: pruning time with the statistics cached (the sweep shares one "
             "statistics pass); the cold cost of one CLI run is below.", ""]
    for export, block in data["exports"].items():
        orig = block["original"]
        lines += [f"## {export} export (original: {orig['flops'] / 1e9:.3f} GFLOPs, {orig['params'] / 1e6:.2f} M "
                  "params)", "",
                  "| kinds | method | reconstruction | ratio | kept | GFLOPs | params M | latency | RF | cos | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            lat = block["latency"].get(f"{r['kinds']} {r['ratio']}")
            lines.append(f"| {r['kinds']} | {r['method']} | {r['recon']} | {r['ratio']} | {r['achieved']:.3f} | "
                         f"{r['flops'] / 1e9:.3f} | {r['params'] / 1e6:.2f} | {_fmt(lat, 3)} | "
                         f"{_fmt(r['rank_fidelity'])} | {_fmt(r['cosine'])} | {r['seconds']:.1f} |")
        c = block.get("cold")
        if c:
            lines += ["", f"Cold `graphopt prune` (256 calibration sentences, wanda, least squares, heads + FFN, "
                      f"ratio 0.6), own subprocess: {c['seconds']:.1f} s wall, peak RSS {c['peak_rss_mb']:.0f} MB. "
                      f"Sweep subprocess peak RSS {block['peak_rss_mb']:.0f} MB."]
        if block.get("peer"):
            lines += ["", "### Peer: onnxsim 0.8.1 (FFN sparsity giving the same block ratio)", "",
                      "| tool | ratio | sparsity | GFLOPs | params M | latency | RF | cos | s | note |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in block["peer"]:
                lat = block["latency"].get(f"{r['tool']} {r['ratio']}")
                if "error" in r:
                    lines.append(f"| {r['tool']} | {r['ratio']} | {r['sparsity']:.3f} | | | | | | | {r['error']} |")
                else:
                    lines.append(f"| {r['tool']} | {r['ratio']} | {r['sparsity']:.3f} | {r['flops'] / 1e9:.3f} | "
                                 f"{r['params'] / 1e6:.2f} | {_fmt(lat, 3)} | {_fmt(r['rank_fidelity'])} | "
                                 f"{_fmt(r['cosine'])} | {r['seconds']:.1f} | |")
        if block.get("stacked"):
            lines += ["", "### Stacked: prune -> INT8 (`graphopt quantize`, 64 calibration sentences) vs INT8 "
                      "alone (one interleaved run; latency vs the original after O2)", "",
                      "| model | latency | RF | cos |", "|---|---|---|---|"]
            for r in block["stacked"]:
                lines.append(f"| {r['label']} | {_fmt(r['latency_ratio'], 3)} | {_fmt(r['rank_fidelity'])} | "
                             f"{_fmt(r['cosine'])} |")
        lines.append("")
    if data.get("extra"):
        lines += ["## Allocation, and the 0.8 ratio (ts export, wanda, least squares; `tools/compare_pruning.py "
                  "--extra`)", "",
                  "`error`: kept counts by consumer output error per FLOP saved (12 levels per group); `global`: "
                  "FLAP's standardized scores; `uniform` as above.", "",
                  "| kinds | allocation | ratio | kept | RF | cos | s | kept heads / neurons per layer |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += extra_rows(data["extra"]) + [""]
    lines += targets(data) + data.get("notes", [])
    out.write_text("\n".join(lines) + "\n")


def method_table(path: Path, against: Path | None) -> str:
    """A worker's rows (``--worker EXPORT METHODS`` writes WORK/EXPORT.json) as a markdown table, with the wanda
    rows of the same (kinds, reconstruction, ratio) from ``against`` (another worker JSON, e.g. the main sweep's)
    beside them."""
    rows = json.loads(path.read_text())["rows"]
    base = {}
    if against is not None:
        base = {(r["kinds"], r["recon"], r["ratio"]): r for r in json.loads(against.read_text())["rows"]
                if r["method"] == "wanda"}
    lines = ["| kinds | method | reconstruction | ratio | kept | RF | cos | s | wanda RF | wanda cos |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = base.get((r["kinds"], r["recon"], r["ratio"]), {})
        lines.append(f"| {r['kinds']} | {r['method']} | {r['recon']} | {r['ratio']} | {r['achieved']:.3f} | "
                     f"{_fmt(r['rank_fidelity'])} | {_fmt(r['cosine'])} | {r['seconds']:.1f} | "
                     f"{_fmt(w.get('rank_fidelity'))} | {_fmt(w.get('cosine'))} |")
    return "\n".join(lines)


def targets(data: dict) -> list[str]:
    """The issue's targets, checked against the rows (which hold, with the numbers)."""
    lines = ["## Targets", ""]
    for export, block in data["exports"].items():
        rows = block["rows"]
        ls = [r for r in rows if r["recon"] == "least-squares"]
        low = [r for r in ls if r["ratio"] <= 0.6]
        if low:
            best = max(low, key=lambda r: r["rank_fidelity"])
            lat = block["latency"].get(f"{best['kinds']} {best['ratio']}")
            ok = best["rank_fidelity"] >= 0.95 and best["cosine"] >= 0.95 and lat is not None and lat <= 0.65
            lines.append(f"- {export}: <= 0.6 of the block FLOPs at <= 0.65 latency with RF >= 0.95 and cos >= 0.95: "
                         f"{'holds' if ok else 'does NOT hold'}; best at <= 0.6: {best['kinds']} {best['method']} "
                         f"ratio {best['ratio']}: RF {best['rank_fidelity']:.4f}, cos {best['cosine']:.4f}, latency "
                         f"{_fmt(lat, 3)}.")
        at8 = [r for r in data.get("extra", []) if r["ratio"] == 0.8] if export == "ts" else []
        if at8:
            best = max(at8, key=lambda r: r["rank_fidelity"])
            lines.append(f"- {export}: RF >= 0.985 at 0.8 of the FLOPs: "
                         f"{'holds' if best['rank_fidelity'] >= 0.985 else 'does NOT hold'}; best at 0.8 (allocation "
                         f"rows): {best['kinds']} {best['allocation']} RF {best['rank_fidelity']:.4f}, cos "
                         f"{best['cosine']:.4f}.")
        mid = [r for r in ls if r["ratio"] == 0.75]
        if mid and not at8:
            best = max(mid, key=lambda r: r["rank_fidelity"])
            lines.append(f"- {export}: RF >= 0.985 at 0.8 of the FLOPs: the sweep has 0.75 and 0.9; best at 0.75: "
                         f"{best['kinds']} {best['method']} RF {best['rank_fidelity']:.4f} "
                         f"({'holds even there' if best['rank_fidelity'] >= 0.985 else 'below 0.985'}).")
        misses = []
        for r in rows:
            if r["recon"] != "none":
                continue
            twin = next((x for x in ls if all(x[k] == r[k] for k in ("kinds", "method", "ratio"))), None)
            if twin is not None and twin["rank_fidelity"] <= r["rank_fidelity"]:
                misses.append(f"{r['kinds']} {r['method']} {r['ratio']}")
        n = sum(1 for r in rows if r["recon"] == "none")
        lines.append(f"- {export}: least squares beats no reconstruction (RF) in {n - len(misses)} of {n} "
                     "(kinds, method, ratio) cells" + (f"; not in: {', '.join(misses)}" if misses else "") + ".")
        c = block.get("cold")
        if c:
            ok = c["seconds"] < 120 and c["peak_rss_mb"] < 2048
            lines.append(f"- {export}: one `graphopt prune` with 256 calibration sentences: {c['seconds']:.1f} s, "
                         f"{c['peak_rss_mb']:.0f} MB peak RSS ({'holds' if ok else 'does NOT hold'}: < 120 s, "
                         "< 2 GB).")
    lines.append("")
    return lines


def ocr_main(args: argparse.Namespace, work: Path) -> int:
    """The PaddleOCR sweeps (one subprocess per model, in parallel), then latency, spliced into ``--out``."""
    import pruning_ocr

    out = Path(args.out)
    if args.rewrite:  # only the splice, from WORK/ocr.json
        notes = Path(args.notes).read_text().splitlines() if args.notes else None
        out.write_text(pruning_ocr.splice(out.read_text(), json.loads((work / "ocr.json").read_text()), args.rewrite,
                                          notes))
        return 0
    models = args.models.split(",")
    workers = [subprocess.Popen([sys.executable, __file__, "--work", str(work), "--ocr-methods", args.ocr_methods,
                                 "--ocr-worker", m]) for m in models]
    if any(w.wait() for w in workers):
        raise SystemExit("a PaddleOCR sweep worker failed")
    blocks = json.loads((work / "ocr.json").read_text()) if (work / "ocr.json").exists() else {}
    for m in models:  # merged with the models of earlier runs in WORK
        block = json.loads((work / f"ocr_{m}.json").read_text())
        lat = pruning_ocr.latency(m, work, [(str(r), work / f"ocr_{m}_wanda_least-squares_{r}.onnx") for r in RATIOS],
                                  args.seconds)
        block["latency"] = lat
        blocks[m] = block
    (work / "ocr.json").write_text(json.dumps(blocks))
    out.write_text(pruning_ocr.splice(out.read_text(), blocks, "python tools/compare_pruning.py "
                                      + " ".join(sys.argv[1:])))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "graphopt_pruning_bench"))
    p.add_argument("--exports", default="ts,dynamo")
    p.add_argument("--methods", default=",".join(METHODS), help="methods of the sweep (per export)")
    p.add_argument("--dynamo-methods", default="wanda", help="methods of the dynamo export's sweep")
    p.add_argument("--seconds", type=float, default=6.0, help="timed seconds per latency group")
    p.add_argument("--worker", nargs=2, metavar=("EXPORT", "METHODS"), help=argparse.SUPPRESS)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--cold", action="store_true", help="only re-measure the cold CLI runs into WORK/all.json")
    p.add_argument("--extra", action="store_true", help="only the allocation / 0.8 rows (WORK/extra.json)")
    p.add_argument("--extra-method", default="wanda", help="with --extra: the scores (another method writes "
                   "WORK/extra_METHOD.json)")
    p.add_argument("--latency-only", action="store_true", help="re-time every MiniLM latency column on the models "
                   "in WORK and rewrite the report (notes kept; the PaddleOCR block re-spliced from --ocr-work)")
    p.add_argument("--ocr-work", metavar="DIR", help="with --latency-only: the folder of the last --models run")
    p.add_argument("--stacked-only", action="store_true", help="rerun the ts stacked rows (prune -> INT8 vs INT8 "
                   "alone) on the models in WORK and replace their table in the report")
    p.add_argument("--notes", metavar="FILE", help="with --rewrite: markdown lines appended to the report")
    p.add_argument("--rewrite", metavar="COMMAND", help="rewrite the report from WORK/all.json (the command it "
                   "names as the generating one)")
    p.add_argument("--out", default=str(ROOT / "tools" / "benchmarks" / "pruning.md"))
    p.add_argument("--models", help="PaddleOCR models (det,rec) instead of MiniLM: their sections are spliced "
                   "into --out, the MiniLM rows kept (tools/pruning_ocr.py)")
    p.add_argument("--ocr-methods", default="wanda,flap", help="methods of the PaddleOCR sweeps")
    p.add_argument("--ocr-worker", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--method-table", nargs="+", metavar="JSON", help="print a worker JSON's rows as markdown (a "
                   "second JSON: its wanda rows beside them)")
    args = p.parse_args()
    if args.method_table:
        print(method_table(Path(args.method_table[0]),
                           Path(args.method_table[1]) if len(args.method_table) > 1 else None))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.ocr_worker:
        import pruning_ocr
        pruning_ocr.worker(args.ocr_worker, work, tuple(args.ocr_methods.split(",")), RATIOS, RECONS)
        return 0
    if args.models:
        return ocr_main(args, work)
    if args.extra:
        extra(work, args.extra_method)
        return 0
    if args.stacked_only:
        stacked_only(work, Path(args.out), args.seconds)
        return 0
    if args.latency_only:
        latency_only(work, Path(args.out), args.seconds, Path(args.ocr_work) if args.ocr_work else None)
        return 0
    if args.cold:
        data = json.loads((work / "all.json").read_text())
        for export in data["exports"]:
            data["exports"][export]["cold"] = cold(export, work)
            print(export, data["exports"][export]["cold"], flush=True)
        (work / "all.json").write_text(json.dumps(data, default=str))
        return 0
    if args.rewrite:
        data = json.loads((work / "all.json").read_text())
        if (work / "extra.json").exists():
            data["extra"] = json.loads((work / "extra.json").read_text())
        if args.notes:
            data["notes"] = Path(args.notes).read_text().splitlines()
        write(Path(args.out), args.rewrite, data)
        return 0
    if args.worker:
        worker(args.worker[0], work, tuple(args.worker[1].split(",")))
        return 0
    load = os.getloadavg()
    data = {"load": load, "exports": {}}
    workers = [subprocess.Popen([sys.executable, __file__, "--work", str(work), "--worker", export,
                                 args.methods if export == "ts" else args.dynamo_methods])
               for export in args.exports.split(",")]
    if any(w.wait() for w in workers):
        raise SystemExit("a sweep worker failed")
    for export in args.exports.split(","):
        block = json.loads((work / f"{export}.json").read_text())
        block["cold"] = cold(export, work)
        if not args.no_peer:
            fixed = {}
            for ratio in RATIOS:  # the FFN share of the FFN-only rows at the same block ratio
                r = next(x for x in block["rows"] if x["kinds"] == "ffn" and x["ratio"] == ratio)
                ffn = [k for k in r["kept"] if k.endswith("ffn")]
                fixed[ratio] = float(np.mean([r["kept"][k] / 1536 for k in ffn]))
            block["peer"] = peer(export, work, fixed)
        block["latency"] = latency(export, work, labels_of(export, work, block), args.seconds)
        block["stacked"] = stacked(export, work, args.seconds) if export == "ts" else []
        data["exports"][export] = block
        (work / "all.json").write_text(json.dumps(data, default=str))
        write(Path(args.out), "python tools/compare_pruning.py " + " ".join(sys.argv[1:]), data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

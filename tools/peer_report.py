"""The report of ``tools/compare_peers.py``: markdown tables (one per model),
the latency chart and the spread of the ratios against an earlier run."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

LEVELS = {"all": "ORT_ENABLE_ALL", "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
          "extended": "ORT_ENABLE_EXTENDED"}


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None or isinstance(value, str) else format(value, fmt)


def _t(seconds: Any) -> str:
    """Seconds: three decimals below 10 s (small models differ by milliseconds)."""
    return _f(seconds, ".3f" if isinstance(seconds, (int, float)) and seconds < 10 else ".1f")


def _cell(text: Any, n: int = 110) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 3] + "..."


def _ops(fused: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (fused or {}).items()) or "-"


def _valid(row: dict[str, Any]) -> str:
    checks = []
    if row.get("checker") not in (None, "ok"):
        checks.append(f"checker: {row['checker']}")
    for key in ("ort_load", "ort_run"):
        if row.get(key) not in (None, "ok"):
            checks.append(f"{key}: {row[key]}")
    if row.get("signature_diffs"):
        checks.append("signature changed: " + "; ".join(row["signature_diffs"]))
    if row.get("check_error"):
        checks.append(row["check_error"])
    return "ok" if not checks else _cell(" / ".join(checks))


def model_table(entry: dict[str, Any], levels: list[str], peak: float | None) -> str:
    """One model's table: the original, then a row per tool."""
    if entry.get("error"):
        return f"### {entry['model']}\n\ncannot be compared: {_cell(entry['error'], 300)}\n"
    inputs = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in entry.get("inputs", {}).items())
    gf = entry.get("flops")
    lines = [f"### {entry['model']}", "",
             f"{entry['size_mb']:.1f} MB, inputs {inputs}, "
             f"{'%.2f GFLOP' % (gf / 1e9) if gf else 'FLOPs unknown'} (MatMul/Gemm/Conv), "
             f"original median " + ", ".join(f"{_f(entry['original_ms'].get(lv))} ms at {LEVELS[lv]}"
                                            for lv in levels)
             + (f", {entry['gflops']:.0f} GFLOP/s ({entry['gflops'] / peak:.0%} of the GEMM peak)"
                if entry.get("gflops") and peak else "") + f"; compared in {entry.get('seconds', 0):.0f} s", ""]
    head = ["tool", "optimize s (wall)", "work s", "peak RSS MB", "nodes", "fused ops", "scale rel err", "cosine",
            "valid"] + [f"ratio {LEVELS[lv]}" for lv in levels] + ["GFLOP/s"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * 4 + ["---"] + ["---:"] * 2 + ["---"] + ["---:"] * (
        len(levels) + 1)) + "|")
    lines.append("| original | | | | " + f"{entry['nodes']} | {_cell(_ops(entry.get('fused')))} | | | | "
                 + " | ".join("1.000" for _ in levels) + f" | {_f(entry.get('gflops'), '.0f')} |")
    for tool, row in entry["tools"].items():
        if not row.get("ok"):
            lines.append(f"| {tool} | {_f(row.get('wall_s'), '.1f')} | | {_f(row.get('rss_mb'), '.0f')} | "
                         f"failed: {_cell(row.get('error', 'failed'))} |" + " |" * (len(head) - 5))
            continue
        ratios = []
        for lv in levels:
            err = row.get(f"bench_{lv}_error")
            ratios.append(f"error: {_cell(err, 60)}" if err else _f(row.get(f"ratio_{lv}"), ".3f"))
        cos = row.get("min_cosine")
        lines.append(f"| {tool} | {_f(row.get('wall_s'), '.1f')} | {_t(row.get('work_s'))} | "
                     f"{_f(row.get('rss_mb'), '.0f')} | {entry['nodes']} → {row.get('nodes', '-')} | "
                     f"{_cell(_ops(row.get('fused')))} | {_f(row.get('scale_rel_err'), '.1e')} | "
                     f"{'-' if cos is None else format(cos, '.6f')} | {_valid(row)} | " + " | ".join(ratios)
                     + f" | {_f(row.get('gflops'), '.0f')} |")
    return "\n".join(lines) + "\n"


def spread(doc: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Differences of the latency ratios (same model, tool and level) between
    this run and ``previous``: count, median and max of |now - before|, and
    the largest ones."""
    before = {(m["model"], t, lv): r.get(f"ratio_{lv}") for m in previous.get("models", [])
              for t, r in m.get("tools", {}).items() for lv in LEVELS}
    diffs = []
    for m in doc.get("models", []):
        for t, r in m.get("tools", {}).items():
            for lv in LEVELS:
                now, old = r.get(f"ratio_{lv}"), before.get((m["model"], t, lv))
                if isinstance(now, float) and isinstance(old, float):
                    diffs.append({"model": m["model"], "tool": t, "level": lv, "now": now, "before": old,
                                  "diff": now - old})
    if not diffs:
        return {"pairs": 0}
    absd = sorted(abs(d["diff"]) for d in diffs)
    return {"pairs": len(diffs), "median_abs_diff": statistics.median(absd), "max_abs_diff": absd[-1],
            "p90_abs_diff": absd[min(len(absd) - 1, int(0.9 * len(absd)))],
            "within_0.03": sum(a <= 0.03 for a in absd) / len(absd),
            "largest": sorted(diffs, key=lambda d: -abs(d["diff"]))[:8],
            "previous_started": previous.get("started")}


def report_markdown(doc: dict[str, Any]) -> str:
    """The whole report (``OUT_DIR/report.md``)."""
    m, roof, s = doc["machine"], doc["roofline"], doc["settings"]
    levels = s["levels"]
    lines = ["# graphopt vs peer optimizers", "",
             f"Run {doc.get('started', '?')} on {m['cpu']}, {m['cores']} cores, Python {m['python']} "
             f"({m['system']}); {doc.get('total_s', 0) / 60:.1f} min in all.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".", "",
             f"Command: `{doc['command']}`", "",
             f"**Roofline**: fp32 GEMM {roof['n']}×{roof['n']}×{roof['n']} on this machine: numpy "
             f"{roof['numpy_gflops']:.0f} GFLOP/s, one onnxruntime MatMul ({s['threads']} threads) "
             f"{roof['ort_gflops']:.0f} GFLOP/s; each model's achieved GFLOP/s is its MatMul/Gemm/Conv FLOPs over "
             f"its median latency at ORT_ENABLE_ALL.", "",
             f"Latency: onnxruntime CPU, {s['threads']} intra-op threads, spinning off, batch {s['batch']}, "
             f"sequence {s['sequence']} (image models: fixed shapes), interleaved run by run in groups of the "
             f"original + up to 3 variants, {s['seconds']:g} s timed per group (at least {s.get('min_runs', '?')} runs of each model) after "
             f"{s['warmup']} warm-up runs; "
             "ratio = median / the original's median in the same group (below 1 is faster; 0.97-1.03 is noise "
             "on this machine, BENCH.md). Optimize times: each tool in its own process; wall = spawn to exit "
             "(imports included), work = load + optimize + save. Scale rel err = max|a-b| / max|a| against the "
             "original's outputs in onnxruntime.", ""]
    if doc.get("skipped"):
        lines += ["Skipped (over --max-gb): " + ", ".join(f"{x['model']} ({x['size_gb']:.1f} GB)"
                                                         for x in doc["skipped"]), ""]
    sp = doc.get("spread")
    if sp and sp.get("pairs"):
        lines += [f"**Reproducibility** against the run of {sp.get('previous_started')}: {sp['pairs']} ratios, "
                  f"|difference| median {sp['median_abs_diff']:.3f}, p90 {sp['p90_abs_diff']:.3f}, max "
                  f"{sp['max_abs_diff']:.3f}; {sp['within_0.03']:.0%} within 0.03. Largest: "
                  + "; ".join(f"{d['model']} {d['tool']} {d['level']} {d['before']:.3f} → {d['now']:.3f}"
                              for d in sp["largest"][:5]) + ".", ""]
    lines += ["![latency ratios](latency.png)", ""]
    for entry in doc["models"]:
        lines.append(model_table(entry, levels, roof.get("peak_gflops")))
    return "\n".join(lines)


def chart(doc: dict[str, Any], path: Path) -> None:
    """Grouped bars: each tool's latency ratio at ORT_ENABLE_ALL, per model
    (PNG; nothing written without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = [m for m in doc["models"] if m.get("tools")]
    tools = list(doc["tools"])
    if not models:
        return
    width = 0.8 / max(1, len(tools))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(models) + 2), 4.5))
    cmap = plt.get_cmap("tab20")
    for i, tool in enumerate(tools):
        xs, ys = [], []
        for j, m in enumerate(models):
            ratio = m["tools"].get(tool, {}).get("ratio_all")
            if isinstance(ratio, float):
                xs.append(j + (i - len(tools) / 2 + 0.5) * width)
                ys.append(ratio)
        ax.bar(xs, ys, width, label=tool, color=cmap(i % 20))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(models)), [m["model"] for m in models], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("latency / original (ORT_ENABLE_ALL)")
    ax.set_ylim(0.6, 1.4)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)

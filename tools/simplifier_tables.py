"""Markdown tables of ``tools/compare_simplifiers.py``: one per model and a
summary with the acceptance points (graphopt vs onnxslim, onnxsim, onnxscript)."""

from __future__ import annotations

import math
from typing import Any

def _f(value: Any, fmt: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def _t(seconds: Any) -> str:
    """A time in seconds: milliseconds show below 10 s (small models differ by a few)."""
    if isinstance(seconds, (int, float)) and not math.isinf(seconds) and seconds < 10:
        return format(seconds, ".3f")
    return _f(seconds)


def _cell(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 3] + "..."


def model_table(result: dict[str, Any], metric: str) -> str:
    lines = [
        f"**{result['name']}** ({result['size_mb']:.1f} MB, {result['input_nodes']} nodes; inputs "
        f"{', '.join(f'{k}: {v}' for k, v in result.get('inputs', {}).items()) or '-'}; "
        f"load avg {result['loadavg_before']} -> {result['loadavg_after']})",
        "",
        "| tool | nodes | wall s | work s | opt s | peak RSS MB | checker | ORT | signature | max rel err "
        "| max abs err | min cosine | outputs |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for tool, e in result["tools"].items():
        if not e.get("ok"):
            lines.append(f"| {tool} | failed: {_cell(e.get('error', '?'), 160)} | {_t(e.get('wall_s'))} | - | - | "
                         f"{_f(e.get('rss_mb'), '.0f')} | - | - | - | - | - | - | - |")
            continue
        nodes = str(e.get("nodes", "-"))
        if e.get("function_nodes"):
            nodes += f" (+{e['function_nodes']} in functions)"
        ort_cell = e.get("ort_load", "-") if e.get("ort_load") != "ok" else e.get("ort_run", "-")
        sig = "same" if not e.get("signature_diffs") else "; ".join(e["signature_diffs"])
        outputs = "-" if "outputs_ok" not in e else ("ok" if e["outputs_ok"] else "FAIL: " + e.get("outputs_reason", ""))
        if e.get("check_error"):
            outputs = "check error: " + e["check_error"]
        lines.append(
            f"| {tool} | {nodes} | {_t(e.get('wall_s'))} | {_t(e.get('work_s'))} | {_t(e.get('opt_s'))} | "
            f"{_f(e.get('rss_mb'), '.0f')} | {_cell(e.get('checker', '-'))} | {_cell(ort_cell)} | {_cell(sig)} | "
            f"{_f(e.get('max_rel_err'), '.2e')} | {_f(e.get('max_abs_err'), '.2e')} | {_f(e.get('min_cosine'), '.7f')} | "
            f"{_cell(outputs)} |"
        )
    return "\n".join(lines)


def summary_table(results: list[dict[str, Any]], metric: str) -> str:
    lines = [
        f"| model | input nodes | graphopt nodes | min peer nodes | graphopt {metric} | fastest peer {metric} "
        "| graphopt RSS MB | max rel err | outputs | signature | nodes | time | overall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in results:
        g = r["tools"].get("graphopt", {})
        a = r["acceptance"]
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {_cell(r['error'], 120)} |" + " - |" * 10 + " FAIL |")
            continue
        peer_nodes = f"{a['min_peer_nodes']} ({a['min_peer_nodes_tool']})" if "min_peer_nodes" in a else "-"
        peer_time = f"{_t(a['fastest_peer_s'])} ({a['fastest_peer_tool']})" if "fastest_peer_s" in a else "-"
        gn = g.get("nodes", "failed" if g and not g.get("ok") else "-")
        lines.append(
            f"| {r['name']} | {r['input_nodes']} | {gn} | {peer_nodes} | {_t(g.get(metric))} | {peer_time} | "
            f"{_f(g.get('rss_mb'), '.0f')} | {_f(g.get('max_rel_err'), '.2e')} | {a.get('outputs', '-')} | "
            f"{a.get('signature', '-')} | {a.get('nodes', '-')} | {a.get('time', '-')} | {a.get('overall', '-')} |"
        )
    return "\n".join(lines)

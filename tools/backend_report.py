"""The markdown report of ``tools/sweep_backend.py``: counts per folder and
pipeline, non-ok (case, pipeline) pairs grouped by cause, an optional second
run (``--also``) and an earlier run (``--before``) for comparison. Rows are
``sweep_backend.Row`` objects (``folder``, ``name``, ``pipeline``, ``cls``,
``reason``)."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

__all__ = ["CLASSES", "cause_of", "count_table", "write_report"]

CLASSES = ("ok", "refused", "verify-failed", "crash", "mismatch", "timeout", "onnxruntime-unsupported")


def cause_of(row: Any) -> str:
    """A short group key for a non-ok row: the class and the reason with
    numbers, quoted names and paths blanked."""
    reason = re.sub(r"/\S+", "…", row.reason)  # paths name the case: blank them
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    reason = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", reason)
    return f"{row.cls}: {reason[:140]}"


def write_report(rows: list[Any], skipped: list[str], path: Path, command: str, before: dict | None,
                 label: str = "", also: dict | None = None) -> None:
    """Write the markdown report: counts per folder and pipeline, then each
    non-ok (case, pipeline) grouped by cause."""
    pipelines = list(dict.fromkeys(r.pipeline for r in rows))
    folders = list(dict.fromkeys(r.folder for r in rows))
    lines = ["# ONNX backend test data sweep", "",
             f"{label} Command: `{command}`".strip(), "",
             f"onnx {_version('onnx')}, onnxruntime {_version('onnxruntime')}; node cases regenerated from "
             "`onnx.backend.test.case.node` with numpy seeded 0. Classes are defined in "
             "`tools/sweep_backend.py`'s docstring.", ""]
    lines += count_table(rows, folders, pipelines)
    if skipped:
        lines += ["", f"Skipped (no model in the wheel, download only): {', '.join(skipped)}"]
    if also:
        lines += ["", f"## {also['title']}", "", also["note"], ""]
        lines += count_table(also["rows"], list(dict.fromkeys(r.folder for r in also["rows"])),
                              list(dict.fromkeys(r.pipeline for r in also["rows"])))
        lines += ["", "Non-ok (case, pipeline) pairs of that run by cause:", ""]
        lines += _cause_counts(also["rows"])
    if before:
        lines += ["", "## Before", "", before["note"], ""]
        lines += count_table(before["rows"], list(dict.fromkeys(r.folder for r in before["rows"])),
                              list(dict.fromkeys(r.pipeline for r in before["rows"])))
        lines += ["", "Non-ok (case, pipeline) pairs of that run by cause:", ""]
        lines += _cause_counts(before["rows"])
    bad = [r for r in rows if r.cls not in ("ok", "onnxruntime-unsupported")]
    lines += ["", "## Non-ok cases by cause", ""]
    if not bad:
        lines += ["None.", ""]
    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for r in bad:
        groups[cause_of(r)].append(r)
    for cause, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines += [f"### {cause} ({len(members)})", ""]
        for r in members:
            lines.append(f"- `{r.folder}/{r.name}` {r.pipeline}: {r.reason}")
        lines.append("")
    unsupported = [r for r in rows if r.cls == "onnxruntime-unsupported" and r.pipeline == pipelines[0]]
    lines += ["## onnxruntime-unsupported (excluded)", "",
              f"{len(unsupported)} cases whose original onnxruntime does not load or run:", ""]
    ugroups: dict[str, list[str]] = collections.defaultdict(list)
    for r in unsupported:
        ugroups[cause_of(r)].append(f"{r.folder}/{r.name}")
    for cause, names in sorted(ugroups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {cause} ({len(names)}): {', '.join(names[:8])}{' …' if len(names) > 8 else ''}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _cause_counts(rows: list[Any]) -> list[str]:
    """One line per cause of the non-ok rows: count per pipeline and three examples."""
    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for r in rows:
        if r.cls not in ("ok", "onnxruntime-unsupported"):
            groups[cause_of(r)].append(r)
    lines = []
    for cause, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        per = collections.Counter(r.pipeline for r in members)
        names = list(dict.fromkeys(f"{r.folder}/{r.name}" for r in members))
        lines.append(f"- {cause}: {', '.join(f'{p} {n}' for p, n in per.items())} (e.g. {', '.join(names[:3])})")
    return lines or ["None."]


def count_table(rows: list[Any], folders: list[str], pipelines: list[str]) -> list[str]:
    lines = ["| folder | pipeline | cases | " + " | ".join(CLASSES) + " |",
             "|---|---|---:|" + "---:|" * len(CLASSES)]
    for folder in [*folders, "all"]:
        for p in pipelines:
            sel = [r for r in rows if r.pipeline == p and (folder == "all" or r.folder == folder)]
            if not sel:
                continue
            c = collections.Counter(r.cls for r in sel)
            name = f"**{folder}**" if folder == "all" else folder
            lines.append(f"| {name} | {p} | {len(sel)} | " + " | ".join(str(c.get(k, 0)) for k in CLASSES) + " |")
    return lines


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)

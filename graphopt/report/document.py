"""The report of one command, built from the document its ``--json`` prints.

:func:`build_sections` reads whichever of these keys the document has (each
section is optional) and :func:`write_report` writes the page atomically:

==========================  ==================================================
document keys               section
==========================  ==================================================
``before``/``after``        summary (nodes, parameters, FLOPs, weights) and
(``ModelStats`` dicts),     the operator histogram; quantize/prune/factorize
``file_bytes``,             keys ``bytes_*``, ``params_*``, ``flops_*`` and
``latency_ms``, ``quality`` ``cosine``/``accuracy`` fill the same rows
``passes``                  per-pass table (ms, nodes before → after, stats)
``verify`` / ``outputs`` /  verification: per output errors, cosine,
``accuracy``                tolerances
``sqnr_db``, ``kept_float`` INT8 per-layer SQNR, layers kept float
``groups``                  pruning: kept/total heads, neurons, channels
``layers``                  low-rank: full → kept rank per layer
``layer_tables``            any further per-layer table: ``[{"id", "title",
                            "columns": [[header, field, unit]], "rows",
                            "highlight", "bars", "note"}]``
``prune``, ``factorize``,   a compress document's steps: their documents'
``quantize`` (nested)       per-layer tables, ids and keys prefixed
``frontier``                ``{"points": [{"latency_ms", "quality", "label",
                            ...}], "chosen": i, "x", "y", "xlabel",
                            "ylabel", "budget", "columns"}``
``models``                  bench: latency per model
``profiles``                per-operator latency ``{model: [{"op", "ms",
                            "share", "nodes"}]}``
==========================  ==================================================
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from graphopt.errors import InputError, SaveError
from graphopt.report import figures
from graphopt.report import sections as sec
from graphopt.report.html import Section, join_key, page

__all__ = ["KINDS", "NESTED", "build_sections", "check_report_path", "jsonable", "render_report", "write_report"]

KINDS = ("optimize", "quantize", "bench", "prune", "factorize", "compress")
"""Commands with a report; the kind only sets the title and the summary's
note, every section is chosen by the document's keys."""


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as the strings ``"inf"``, ``"-inf"``,
    ``"nan"``, tuples as lists and other non-JSON objects through ``str`` (as
    the CLI's ``json.dumps(..., default=str)`` does)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if value != value else "inf" if value > 0 else "-inf"
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    value: Any = doc
    for p in path:
        if not isinstance(value, Mapping) or p not in value:
            return None
        value = value[p]
    return value


def _first(doc: Mapping[str, Any], *candidates: tuple[str, ...]) -> tuple[Any, str]:
    """The first present value among ``candidates`` paths, with its key."""
    for path in candidates:
        value = _get(doc, *path)
        if value is not None:
            return value, "/".join(path)
    return None, ""


def _summary(doc: Mapping[str, Any], kind: str) -> Section | None:
    rows = []

    def row(label: str, before: tuple[tuple[str, ...], ...], after: tuple[tuple[str, ...], ...], unit: str = "") -> None:
        b, bk = _first(doc, *before)
        a, ak = _first(doc, *after)
        rows.append((label, b, bk, a, ak, unit))

    row("nodes", (("before", "nodes"),), (("after", "nodes"),))
    row("parameters", (("before", "parameters"), ("params_before",)), (("after", "parameters"), ("params_after",)))
    row("FLOPs", (("before", "flops"), ("flops_before",)), (("after", "flops"), ("flops_after",)))
    if kind == "prune":
        row("block FLOPs per position", (("block_flops_before",),), (("block_flops_after",),))
    row("weights", (("before", "bytes"),), (("after", "bytes"),), "B")
    row("file size", (("file_bytes", "before"), ("bytes_before",)), (("file_bytes", "after"), ("bytes_after",)), "B")
    row("latency (ms, median)", (("latency_ms", "before"),), (("latency_ms", "after"),))
    models = doc.get("models")
    if isinstance(models, list) and len(models) == 2 and "latency_ms" not in doc:
        rows.append(("latency (ms, median)", models[0].get("median_ms"), "models/0/median_ms",
                     models[1].get("median_ms"), "models/1/median_ms", ""))
    quality = doc.get("quality")
    if isinstance(quality, Mapping):
        for name in quality:
            row(f"quality: {name}", (("quality", name, "before"),), (("quality", name, "after"),))
    for label, path in (("worst output cosine", ("cosine",)), ("worst output cosine", ("accuracy", "cosine")),
                        ("rank fidelity", ("accuracy", "rank_fidelity"))):
        value = _get(doc, *path)
        if value is not None:
            rows.append((label, 1.0, "", value, "/".join(path), ""))
    if not any(b is not None or a is not None for _, b, _, a, _, _ in rows):
        return None
    note = {"quantize": "cosine against the float model's outputs (1 = identical)",
            "prune": "FLOPs and parameters of the prunable layers' groups as prune counts them",
            "factorize": "parameters and FLOPs of the factorizable layers only",
            "bench": "before = the first model, after = the second"}.get(kind, "")
    return sec.summary(rows, note)


def _verification(doc: Mapping[str, Any]) -> Section | None:
    verify = doc.get("verify")
    if isinstance(verify, Mapping) and verify.get("outputs") is not None:
        inputs = ", ".join(f"{k}: {v}" for k, v in (verify.get("inputs") or {}).items())
        note = ("check: |a−b| <= atol + rtol·|a| elementwise against the input model in onnxruntime"
                + (f"; inputs {inputs}" + (" (generated)" if verify.get("generated_inputs") else "") if inputs else ""))
        diffs = verify.get("signature_diffs") or []
        if diffs:
            note += "; signature differences: " + "; ".join(map(str, diffs))
        return sec.verification(verify["outputs"], "verify/outputs", ok=verify.get("ok"), note=note)
    accuracy = doc.get("accuracy")
    if isinstance(accuracy, Mapping) and accuracy.get("outputs") is not None:
        note = f"on {accuracy.get('batches')} {accuracy.get('data', '')} batches"
        return sec.verification(accuracy["outputs"], "accuracy/outputs", note=note, title="Accuracy")
    if isinstance(doc.get("outputs"), list):
        budget = doc.get("budget")
        note = f"against the float model on {doc.get('batches')} batches"
        if isinstance(budget, Mapping):
            note += (f"; budget {budget.get('metric')} >= {budget.get('threshold')} on {budget.get('data')} data: "
                     f"{budget.get('score')}")
        return sec.verification(doc["outputs"], "outputs", note=note, title="Accuracy",
                                ok=None if not isinstance(budget, Mapping) else
                                budget.get("score", 0) >= budget.get("threshold", 0))
    return None


def _per_layer(doc: Mapping[str, Any], prefix: str = "") -> list[Section]:
    """The per-layer sections of ``doc``; ``prefix``: the key of ``doc`` inside
    the whole document (a compress document nests ``prune``, ``factorize``
    and ``quantize`` documents), which the cells' keys and section ids carry."""
    out = []
    sid = (lambda name: f"{prefix}-{name}") if prefix else (lambda name: name)
    head = f"{prefix}: " if prefix else ""
    sqnr = doc.get("sqnr_db")
    if isinstance(sqnr, Mapping) and (sqnr or doc.get("kept_float")):
        kept = list(doc.get("kept_float") or [])
        names = sorted(sqnr, key=lambda k: float(sqnr[k]))  # lowest SQNR (most damaged) first
        rows = [{"name": k, "sqnr_db": sqnr[k], "float": "kept float" if k in kept else "int8"} for k in names]
        rows += [{"name": k, "float": "kept float"} for k in kept if k not in sqnr]
        section = sec.per_layer(
            sid("int8-layers"), head + "INT8 per layer", rows,
            [("layer", "name", ""), ("SQNR (dB)", "sqnr_db", ""), ("precision", "float", "")], "",
            keys=lambda i, f: join_key(prefix, "sqnr_db", names[i]) if f == "sqnr_db" else "",
            note=f"{len(sqnr)} quantized layers; kept float: {', '.join(kept) or 'none'}. "
                 "SQNR = 10·log10(signal power / quantization noise power) of the layer's output, in dB.")
        finite = {k: float(v) for k, v in sqnr.items() if math.isfinite(float(v))}
        if finite:
            section.body.insert(0, figures.grouped_barh(
                {"SQNR (dB)": dict(zip(sec.short_labels(list(finite)), finite.values()))}, xlabel="SQNR (dB)",
                title="SQNR per quantized layer (lower = more quantization noise)", alt="INT8 SQNR per layer",
                top=40, ascending=True, width=8.0))
        out.append(section)
    groups = doc.get("groups")
    if isinstance(groups, list) and groups:
        out.append(sec.per_layer(sid("pruning-layers"), head + "Pruning per group", groups,
                                 [("group", "name", ""), ("kind", "kind", ""), ("size", "size", ""),
                                  ("kept", "kept", ""), ("unit FLOPs", "unit_flops", "")], join_key(prefix, "groups"),
                                 bars=("size", "kept", "kept / total units (heads, neurons, channels)"),
                                 note="kept of size units per coupled group"))
    layers = doc.get("layers")
    if isinstance(layers, list) and layers:
        out.append(sec.per_layer(sid("lowrank-layers"), head + "Low-rank per layer", layers,
                                 [("layer", "name", ""), ("op", "kind", ""), ("K", "k", ""), ("N", "n", ""),
                                  ("full rank", "full_rank", ""), ("kept rank", "rank", ""),
                                  ("rel. error", "error", ""), ("params before", "params_before", ""),
                                  ("params after", "params_after", ""), ("left whole because", "reason", "")],
                                 join_key(prefix, "layers"), bars=("full_rank", "rank", "kept rank / full rank"),
                                 zero_is_whole=True, note="kept rank 0 = left whole"))
    for i, t in enumerate(doc.get("layer_tables") or []):
        out.append(sec.per_layer(sid(str(t.get("id", f"layers-{i}"))), head + str(t.get("title", "Per layer")),
                                 t["rows"], [tuple(c) for c in t["columns"]], join_key(prefix, "layer_tables", i, "rows"),
                                 highlight=t.get("highlight", ""), note=t.get("note", ""),
                                 bars=tuple(t["bars"]) if t.get("bars") else None))
    if not prefix:
        for name in NESTED:
            if isinstance(doc.get(name), Mapping):
                out.extend(_per_layer(doc[name], name))
    return out


NESTED = ("prune", "factorize", "quantize")
"""Keys under which a compress document may nest the documents of its steps;
their per-layer tables are shown after the top level's."""


def short_paths(paths: list[str]) -> tuple[list[str], str]:
    """Model paths without the folder they all share: ``(labels, folder)``,
    the folder '' when there is none or one path (as ``graphopt bench``'s table
    shows them)."""
    if len(paths) < 2:
        return list(paths), ""
    try:
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    except ValueError:  # different drives
        return list(paths), ""
    if folder in ("", os.sep):
        return list(paths), ""
    return [os.path.relpath(os.path.abspath(p), folder) for p in paths], folder


def build_sections(doc: Mapping[str, Any], kind: str) -> list[Section]:
    """The report's sections for ``doc`` (a command's ``--json`` document, after
    :func:`jsonable`), in reading order; see the module doc for the keys."""
    out: list[Section] = []
    summary = _summary(doc, kind)
    if summary is not None:
        out.append(summary)
    frontier = doc.get("frontier")
    if isinstance(frontier, Mapping) and frontier.get("points"):
        out.append(sec.frontier(frontier["points"], frontier.get("chosen"), "frontier/points",
                                x=frontier.get("x", "latency_ms"), y=frontier.get("y", "quality"),
                                xlabel=frontier.get("xlabel", "latency (ms)"), ylabel=frontier.get("ylabel", "quality"),
                                budget=frontier.get("budget"), columns=[tuple(c) for c in frontier.get("columns", [])]))
    models = doc.get("models")
    if isinstance(models, list) and models:
        labels, folder = short_paths([str(m.get("path")) for m in models])
        load = [", ".join(f"{x:.2f}" for x in doc.get(k) or []) for k in ("load_before", "load_after")]
        inputs = ", ".join(f"{k} {v}" for k, v in (doc.get("inputs") or {}).items())
        note = (f"onnxruntime {doc.get('provider')}, {doc.get('threads')} threads, opt level {doc.get('opt_level')}, "
                f"inputs {inputs}; load average {load[0]} before, {load[1]} after; runs interleaved; "
                "ratios within 0.97–1.03 are noise on a shared machine" + (f"; models in {folder}" if folder else ""))
        out.append(sec.bench_latency(models, "models", labels, note))
    verification = _verification(doc)
    if verification is not None:
        out.append(verification)
    before, after = _get(doc, "before", "ops"), _get(doc, "after", "ops")
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out.append(sec.op_histogram(before, after, "before/ops", "after/ops"))
    out.extend(_per_layer(doc))
    if isinstance(doc.get("passes"), list) and doc["passes"]:
        out.append(sec.passes(doc["passes"], "passes", changed_only=len(doc["passes"]) > 40))
    profiles = doc.get("profiles")
    if isinstance(profiles, Mapping) and profiles:
        paths = list(profiles)
        out.append(sec.profile(profiles, "profiles", dict(zip(paths, short_paths(paths)[0]))))
    refused = doc.get("refused") or []
    skipped = doc.get("not_factorizable") or {}
    if refused or skipped:
        items = [f"{r.get('site')} ({r.get('kind')}): {r.get('reason')}" for r in refused if isinstance(r, Mapping)]
        items += [f"{k}: {v}" for k, v in skipped.items()]
        out.append(sec.notes("refused", "Left whole", items))
    return out


def render_report(doc: Mapping[str, Any], kind: str = "optimize", title: str | None = None) -> str:
    """The report page (str) of ``doc``, a command's ``--json`` document.

    Args:
        doc: the document (JSON-like; non-finite floats allowed).
        kind: one of :data:`KINDS`.
        title: the page title (default ``graphopt <kind>: <input name>``).

    Raises:
        InputError: an unknown ``kind``.
    """
    if kind not in KINDS:
        raise InputError(f"unknown report kind {kind!r}; choose one of {', '.join(KINDS)}")
    doc = jsonable(doc)
    name = doc.get("input") or ", ".join(Path(str(m.get("path"))).name for m in doc.get("models") or [])
    title = title or f"graphopt {kind}: {Path(str(name)).name if doc.get('input') else name}"
    parts = [f"input {doc['input']}" if doc.get("input") else "",
             f"output {doc['output']}" if doc.get("output") else "",
             f"pipeline {doc['pipeline']}" if doc.get("pipeline") else "",
             f"target {doc['target']}" if doc.get("target") else "",
             f"ran in {doc['seconds']:.2f} s" if isinstance(doc.get("seconds"), (int, float)) and kind != "bench"
             else ""]
    return page(title, " · ".join(p for p in parts if p), build_sections(doc, kind),
                json.dumps(doc, allow_nan=False))


def check_report_path(path: str | os.PathLike | None) -> None:
    """Refuse a ``--report`` path that cannot be written, before a command does
    its work (None passes).

    Raises:
        InputError: the folder does not exist, or the path is a folder.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--report {path} is a folder; give the report's file name, e.g. {path / 'report.html'}")
    if not path.parent.is_dir():
        raise InputError(f"--report {path}: the folder {path.parent} does not exist; create it first")


def write_report(path: str | os.PathLike, doc: Mapping[str, Any], kind: str = "optimize",
                 title: str | None = None) -> Path:
    """Write the self-contained HTML report of ``doc`` to ``path`` atomically:
    rendered in full first, written to a temporary file in the same folder,
    fsynced, then moved into place with ``os.replace``; on any failure the
    temporary file is removed and an existing file at ``path`` is untouched.

    Args:
        path: the ``.html`` file to write (its folder must exist).
        doc: the command's ``--json`` document.
        kind: one of :data:`KINDS`.
        title: optional page title.

    Returns:
        The path written.

    Raises:
        InputError: an unknown ``kind``.
        SaveError: the file cannot be written (the OS error in the message).
    """
    path = Path(path)
    text = render_report(doc, kind, title)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the report private
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise SaveError(f"writing the report '{path}' failed: {e}; check that its folder exists and is "
                        "writable") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path

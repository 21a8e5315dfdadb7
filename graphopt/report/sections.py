"""Generic report sections, each built from parts of a command's JSON document.

Each function takes plain JSON values (dicts, lists, numbers) and the path
(``key``) where they sit in the document, and returns a
:class:`~graphopt.report.html.Section`; number cells record ``key/...`` so the
report can be checked against the document (see :mod:`graphopt.report.html`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from graphopt.report import figures
from graphopt.report.html import Cell, Section, cell, esc, join_key, table

__all__ = ["Column", "bench_latency", "frontier", "notes", "op_histogram", "passes", "per_layer", "profile", "short_labels",
           "summary", "verification"]


def _join(key: str, *parts: Any) -> str:
    """``key`` (already joined) extended by ``parts`` (escaped)."""
    tail = join_key(*parts)
    return f"{key}/{tail}" if key else tail


def _change(before: Any, after: Any) -> Cell:
    """The after/before change as a computed cell (``-12.5%``, or ``0.41x`` for latency-like rows)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (before, after)) or not before:
        return Cell("")
    ratio = after / before
    pct = (ratio - 1) * 100
    return Cell(f"{pct:+.1f}%" if pct == 0 or abs(pct) >= 0.1 else f"{pct:+.2g}%", ratio)


def summary(rows: Sequence[tuple[str, Any, str, Any, str, str]], note: str = "") -> Section:
    """The before → after table. Each row is ``(label, before, before_key,
    after, after_key, unit)`` (``unit`` as :func:`~graphopt.report.html.fmt_number`
    takes it; a key may be '' for a value not in the document); rows whose
    before and after are both None are dropped. A change column shows
    after/before − 1."""
    body = []
    for label, before, bkey, after, akey, unit in rows:
        if before is None and after is None:
            continue
        body.append([Cell(label), cell(before, bkey, unit), cell(after, akey, unit), _change(before, after)])
    s = Section("summary", "Summary")
    s.body.append(table(["", "before", "after", "change"], body, cls="summary"))
    if note:
        s.body.append(f'<p class="note">{esc(note)}</p>')
    return s


def op_histogram(before: Mapping[str, int], after: Mapping[str, int], key_before: str, key_after: str) -> Section:
    """Operator counts before and after: a grouped bar figure (largest 30
    operators) and a table of every operator whose count changed."""
    s = Section("ops", "Operator histogram")
    figure = figures.grouped_barh({"before": dict(before), "after": dict(after)}, xlabel="nodes", width=6.6,
                                  title="nodes per operator type", alt="operator histogram before and after")
    rows = []
    for op in sorted(set(before) | set(after), key=lambda o: (-max(before.get(o, 0), after.get(o, 0)), o)):
        b, a = before.get(op), after.get(op)
        if b != a:
            rows.append([Cell(op), cell(b or 0, _join(key_before, op) if b is not None else ""),
                         cell(a or 0, _join(key_after, op) if a is not None else ""),
                         Cell(f"{(a or 0) - (b or 0):+d}", (a or 0) - (b or 0))])
    if rows:
        side = table(["operator", "before", "after", "Δ"], rows, caption="operators whose count changed")
    else:
        side = '<p class="note">no operator count changed</p>'
    s.body.append(f'<div class="row">{figure}{side}</div>')
    return s


def passes(records: Sequence[Mapping[str, Any]], key: str, *, changed_only: bool = False) -> Section:
    """The pass table: index, pass spec, milliseconds, nodes before → after,
    non-zero stats; rolled-back passes marked. ``records`` are
    :class:`~graphopt.passmanager.manager.PassRecord` dicts; with
    ``changed_only`` passes that neither changed the model nor were rolled
    back are counted in a note instead of listed."""
    s = Section("passes", "Passes")
    rows, hidden = [], 0
    for i, r in enumerate(records):
        if changed_only and not r.get("modified") and not r.get("rolled_back"):
            hidden += 1
            continue
        flag = " (rolled back)" if r.get("rolled_back") else " (auto)" if r.get("auto") else ""
        stats = ", ".join(f"{k}={v}" for k, v in (r.get("stats") or {}).items() if v)
        ms = r.get("seconds", 0.0) * 1e3
        rows.append([cell(r.get("index"), _join(key, i, "index")), Cell(str(r.get("spec", r.get("name"))) + flag),
                     Cell(f"{ms:.1f}", ms), cell(r.get("nodes_before"), _join(key, i, "nodes_before")),
                     cell(r.get("nodes_after"), _join(key, i, "nodes_after")), Cell(stats)])
    s.body.append(table(["#", "pass", "ms", "nodes before", "nodes after", "stats"], rows))
    total = sum(r.get("seconds", 0.0) for r in records) * 1e3
    changed = sum(1 for r in records if r.get("modified"))
    s.body.append(f'<p class="note">{len(records)} passes ran in {total:.1f} ms; {changed} changed the model'
                  + (f"; {hidden} that changed nothing are not listed" if hidden else "") + "</p>")
    return s


def verification(outputs: Sequence[Mapping[str, Any]], key: str, *, ok: bool | None = None, note: str = "",
                 title: str = "Verification") -> Section:
    """Per-output accuracy against the original: whichever of max abs/rel
    error, scale-relative error, cosine, argmax agreement, rtol, atol and
    error/tolerance the outputs carry (``verify.compare`` or
    ``quantize``'s accuracy dicts), and pass/fail when present."""
    fields = [("max_abs_err", "max |a−b|"), ("max_abs", "max |a−b|"), ("max_rel_err", "max rel err"),
              ("scale_rel_err", "max|a−b| / max|a|"), ("cosine", "cosine"),
              ("argmax_agreement", "argmax agreement"), ("rtol", "rtol"), ("atol", "atol"),
              ("tol_ratio", "error / tolerance")]
    present = [(f, h) for f, h in fields if any(f in o for o in outputs)]
    has_ok = any("ok" in o for o in outputs)
    rows = []
    for i, o in enumerate(outputs):
        row = [Cell(str(o.get("name", i)))]
        row += [cell(o.get(f), _join(key, i, f) if o.get(f) is not None else "") for f, _ in present]
        if has_ok:
            row.append(Cell("ok" if o.get("ok") else f"FAIL {o.get('reason', '')}".strip()))
        rows.append(row)
    s = Section("verification", title)
    if ok is not None:
        s.body.append(f'<p><b class="{"ok" if ok else "fail"}">{"passed" if ok else "FAILED"}</b></p>')
    s.body.append(table(["output"] + [h for _, h in present] + (["result"] if has_ok else []), rows))
    if note:
        s.body.append(f'<p class="note">{esc(note)}</p>')
    return s


def short_labels(names: Sequence[str], width: int = 44) -> list[str]:
    """Figure labels for layer ``names``: the folder-like prefix they all share
    (up to a ``/``) dropped, then at most ``width`` characters, cut at the
    front with ``…``."""
    prefix = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    cut = prefix.rfind("/") + 1
    out = []
    for name in names:
        short = name[cut:] or name
        out.append(short if len(short) <= width else "…" + short[-(width - 1):])
    return out


Column = tuple[str, str, str]
"""A per-layer column: ``(header, field of the row dict, unit)``."""


def per_layer(id: str, title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], key: str, *,
              note: str = "", highlight: str = "", bars: tuple[str, str, str] | None = None,
              keys: Callable[[int, str], str] | None = None, zero_is_whole: bool = False) -> Section:
    """A per-layer table for a lossy pass: one row per layer dict in ``rows``
    (at ``key/<i>`` in the document), the ``columns`` given; rows whose
    ``highlight`` field is truthy are marked (e.g. layers kept float). With
    ``bars = (total field, kept field, figure title)`` a figure of the kept share per
    layer is drawn above the table (e.g. heads, neurons, rank;
    ``zero_is_whole``: a kept 0 means left whole, as factorize's rank). ``keys(i,
    field)`` overrides where a number cell says it comes from (default
    ``key/<i>/<field>``; '' for none), for rows the caller assembled.

    prune/factorize fill it from their ``--json`` dicts, e.g. factorize's
    ``layers`` with ``[("layer", "name", ""), ("full rank", "full_rank", ""),
    ("kept rank", "rank", ""), ("error", "error", "")]``."""
    s = Section(id, title)
    if bars is not None and rows:
        total, kept, label = bars
        labels = short_labels([str(r.get("name", i)) for i, r in enumerate(rows)])
        totals = [float(r.get(total) or 0) for r in rows]
        kepts = [float(r.get(kept) or (t if zero_is_whole else 0)) for r, t in zip(rows, totals)]
        s.body.append(figures.kept_fraction(labels, totals, kepts, title=label,
                                            alt=f"{title}: share kept per layer"))
    body = []
    for i, r in enumerate(rows):
        cells = [cell(r.get(f), ("" if f not in r or r.get(f) is None else keys(i, f) if keys else _join(key, i, f)),
                      unit) for _, f, unit in columns]
        body.append((bool(highlight and r.get(highlight)), cells))
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _ in columns)
    trs = "".join(f'<tr{" class=chosen" if mark else ""}>' + "".join(c.render() for c in cells) + "</tr>"
                  for mark, cells in body)
    s.body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></div>')
    if note:
        s.body.append(f'<p class="note">{esc(note)}</p>')
    return s


def frontier(points: Sequence[Mapping[str, Any]], chosen: int | None, key: str, *, x: str = "latency_ms",
             y: str = "quality", xlabel: str = "latency (ms)", ylabel: str = "quality",
             budget: float | None = None, columns: Sequence[Column] = ()) -> Section:
    """The latency vs quality frontier: every candidate in ``points`` (dicts
    with numeric ``x`` and ``y`` fields, optional ``label``; at ``key/<i>``),
    the Pareto frontier, the ``chosen`` index highlighted as a star and a
    table row, and the ``budget`` line. ``columns`` adds table columns beyond
    label, x and y (e.g. the technique mix)."""
    s = Section("frontier", "Latency vs quality")
    s.body.append(figures.frontier_plot(points, chosen, x=x, y=y, xlabel=xlabel, ylabel=ylabel, budget=budget,
                                        alt="latency vs quality frontier with the chosen point"))
    cols: list[Column] = [("candidate", "label", ""), (xlabel, x, ""), (ylabel, y, ""), *columns]
    trs = []
    for i, p in enumerate(points):
        cells = [cell(p.get(f, i if f == "label" else None),
                      _join(key, i, f) if f in p and p.get(f) is not None else "", unit) for _, f, unit in cols]
        trs.append(f'<tr{" class=chosen" if i == chosen else ""}>' + "".join(c.render() for c in cells) + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _ in cols)
    s.body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(trs)}</tbody>'
                  "</table></div>")
    if chosen is not None:
        s.body.append(f'<p class="note">chosen: candidate {esc(points[chosen].get("label", chosen))} '
                      "(highlighted)</p>")
    return s


def profile(profiles: Mapping[str, Sequence[Mapping[str, Any]]], key: str, labels: Mapping[str, str] | None = None
            ) -> Section:
    """Per-operator latency (onnxruntime's profiler, ``bench --profile``): one
    series per model (``{model: [{"op", "ms", "share", "nodes"}]}`` at
    ``key``), a grouped bar figure of ms per run per operator, and a table
    per model. ``labels`` maps a model key to the name shown."""
    labels = dict(labels or {})
    series = {labels.get(m, m): {o["op"]: o["ms"] for o in ops} for m, ops in profiles.items()}
    s = Section("profile", "Per-operator latency")
    s.body.append(figures.grouped_barh(series, xlabel="ms per run", title="kernel time per operator type",
                                       alt="per-operator latency profile"))
    tables = []
    for m, ops in profiles.items():
        rows = [[Cell(o["op"]), cell(o.get("ms"), _join(key, m, i, "ms")),
                 cell(o.get("share"), _join(key, m, i, "share"), "%"), cell(o.get("nodes"), _join(key, m, i, "nodes"))]
                for i, o in enumerate(ops)]
        tables.append(table(["operator", "ms / run", "share", "nodes"], rows, caption=labels.get(m, m)))
    s.body.append(f'<div class="row">{"".join(tables)}</div>')
    s.body.append('<p class="note">kernel time summed per operator type as onnxruntime ran the model (after its own '
                  "fusions), per run; share = of all kernel time</p>")
    return s


def bench_latency(models: Sequence[Mapping[str, Any]], key: str, labels: Sequence[str], note: str = "") -> Section:
    """The latency table of ``graphopt bench``: runs, median, p90, mean, min
    (ms), ratio to the first model, and the output comparison to it, with a
    bar figure of the medians."""
    cols: list[Column] = [("runs", "runs", ""), ("median ms", "median_ms", ""), ("p90 ms", "p90_ms", ""),
                          ("mean ms", "mean_ms", ""), ("min ms", "min_ms", ""), ("ratio", "ratio", ""),
                          ("max abs err", "max_abs_err", ""), ("cosine", "cosine", "")]
    s = Section("latency", "Latency")
    s.body.append(figures.grouped_barh({"median ms": {label: m["median_ms"] for label, m in zip(labels, models)}},
                                       xlabel="median latency (ms)", title="median latency per model",
                                       alt="median latency per model", keep_order=True))
    rows = [[Cell(label)] + [cell(m.get(f), _join(key, i, f) if m.get(f) is not None else "", u)
                             for _, f, u in cols] for i, (label, m) in enumerate(zip(labels, models))]
    s.body.append(table(["model"] + [h for h, _, _ in cols], rows))
    if note:
        s.body.append(f'<p class="note">{esc(note)}</p>')
    return s


def notes(id: str, title: str, items: Sequence[str]) -> Section:
    """A section of plain text lines (escaped), e.g. refused sites and reasons."""
    s = Section(id, title)
    s.body.append("<ul>" + "".join(f"<li>{esc(t)}</li>" for t in items) + "</ul>")
    return s


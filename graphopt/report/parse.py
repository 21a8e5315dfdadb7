"""Read a written report back: its sections, number cells, images, external
references and embedded JSON document. For tests and for tools that check a
report against the ``--json`` document it claims to show."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

__all__ = ["ParsedReport", "check_numbers", "parse_report"]


@dataclass
class ParsedReport:
    """What :func:`parse_report` found.

    Attributes:
        sections: section ids in page order.
        cells: ``(data-key, data-v)`` of every number cell that names its key.
        images: the ``src`` of every ``<img>``.
        svgs: how many inline ``<svg>`` elements there are.
        references: every ``href``/``src`` value that is not a ``data:`` URI or
            an in-page ``#anchor`` (a self-contained report has none).
        doc: the embedded JSON document (None when absent).
    """

    sections: list[str] = field(default_factory=list)
    cells: list[tuple[str, str]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    svgs: int = 0
    references: list[str] = field(default_factory=list)
    doc: Any = None


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = ParsedReport()
        self._json: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self.out.sections.append(a["id"] or "")
        if tag == "td" and a.get("data-key") is not None and a.get("data-v") is not None:
            self.out.cells.append((a["data-key"] or "", a["data-v"] or ""))
        if tag == "img":
            self.out.images.append(a.get("src") or "")
        if tag == "svg":
            self.out.svgs += 1
        if tag == "script" and a.get("type") == "application/json" and a.get("id") == "graphopt-json":
            self._json = []
        for name in ("href", "src"):
            value = a.get(name)
            if value is not None and not value.startswith(("data:", "#")):
                self.out.references.append(value)

    def handle_data(self, data: str) -> None:
        if self._json is not None:
            self._json.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._json is not None:
            self.out.doc = json.loads("".join(self._json))
            self._json = None


def parse_report(text: str) -> ParsedReport:
    """Parse a report's HTML ``text``.

    Raises:
        json.JSONDecodeError: the embedded document is not valid JSON.
    """
    parser = _Parser()
    parser.feed(text)
    parser.close()
    return parser.out


def check_numbers(parsed: ParsedReport, doc: Any) -> list[str]:
    """Every number cell of ``parsed`` whose value differs from ``doc`` at its
    key (or whose key ``doc`` lacks), as ``"key: shown != document"`` lines;
    an empty list when all agree. Values compare as floats (``"inf"`` strings
    of JSON documents included), exactly."""
    from graphopt.report.html import lookup

    problems = []
    for key, v in parsed.cells:
        try:
            expected = lookup(doc, key)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"{key}: not in the document")
            continue
        try:
            same = float(v) == float(expected) or (v == "nan" and str(expected) == "nan")
        except (TypeError, ValueError):
            same = False
        if not same:
            problems.append(f"{key}: {v} != {expected!r}")
    return problems

"""HTML building blocks of the report: escaped text, number cells that carry
their source, tables, sections and the page.

Every number a table shows from the command's ``--json`` document is written
as ``<td class="num" data-key="PATH" data-v="VALUE">shown</td>``: ``PATH`` is
the value's place in the document (keys and list indices joined by ``/``) and
``VALUE`` its exact ``repr``, so a reader (or a test) can check the report
against the document without trusting the rounding of the shown text.
Numbers computed for the report (ratios, sums) carry ``data-v`` but no
``data-key``.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = ["Cell", "Section", "cell", "esc", "fmt_number", "join_key", "lookup", "page", "table"]


def esc(text: Any) -> str:
    """``text`` (any object, via ``str``) escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def join_key(*parts: Any) -> str:
    """A document path from keys and list indices, JSON-pointer style (RFC
    6901 without the leading ``/``): ``~`` is written ``~0`` and ``/`` ``~1``,
    so tensor names such as ``/encoder/MatMul`` stay one part; empty leading
    parts are dropped."""
    parts = [str(p) for p in parts]
    while parts and not parts[0]:
        parts.pop(0)
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def lookup(doc: Any, path: str) -> Any:
    """The value at ``path`` (as :func:`join_key` writes it: dict keys and
    list indices) in ``doc``.

    Raises:
        KeyError: a key is missing. IndexError / ValueError: a bad list index.
    """
    value = doc
    for part in path.split("/") if path else []:
        part = part.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_number(value: Any, unit: str = "") -> str:
    """Readable text of a number: ints with thousands separators, floats to 4
    significant digits (6 decimals for values in [0.99, 1], e.g. cosines),
    ``unit="B"`` as decimal kB/MB/GB, ``unit="%"`` for a fraction in [0, 1];
    None as an empty string, other objects through ``str``."""
    if value is None:
        return ""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return {"inf": "∞", "-inf": "−∞", "nan": "NaN"}[value]
    if not _is_number(value):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "∞" if value > 0 else "−∞" if value < 0 else "NaN"
    if unit == "B":
        size = float(value)
        for suffix in ("B", "kB", "MB", "GB", "TB"):
            if abs(size) < 1000 or suffix == "TB":
                return f"{int(size)} B" if suffix == "B" else f"{size:.1f} {suffix}"
            size /= 1000
    if unit == "%":
        return f"{100 * value:.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    if 0.99 <= abs(value) <= 1.0:
        return f"{value:.6f}"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


@dataclass(frozen=True)
class Cell:
    """One table cell: shown ``text`` and, for a number, its exact value
    ``v`` and its ``key`` in the JSON document ('' for computed numbers)."""

    text: str
    v: Any = None
    key: str = ""

    def render(self) -> str:
        """The ``<td>`` (numbers right-aligned, with ``data-v``/``data-key``)."""
        if self.v is None:  # long names may break after '/' (<wbr>), never inside a word
            text = esc(self.text)
            return f"<td>{text.replace('/', '/<wbr>') if len(self.text) > 32 else text}</td>"
        key = f' data-key="{esc(self.key)}"' if self.key else ""
        return f'<td class="num"{key} data-v="{esc(repr(self.v))}">{esc(self.text)}</td>'


def cell(value: Any, key: str = "", unit: str = "", text: str | None = None) -> Cell:
    """A :class:`Cell` for ``value``: numbers (and the strings ``inf``/``nan``
    of JSON documents) become number cells that record ``key``, anything else
    plain text; ``text`` overrides the shown text."""
    number = _is_number(value) or (isinstance(value, str) and value in ("inf", "-inf", "nan"))
    shown = fmt_number(value, unit) if text is None else text
    if not number:
        return Cell(shown)
    v = float(value) if isinstance(value, str) else value
    return Cell(shown, v, key)


def table(columns: Sequence[str], rows: Iterable[Sequence[Cell | str | Any]], *, cls: str = "",
          caption: str = "") -> str:
    """An HTML table. ``rows`` hold :class:`Cell` objects, or plain values (made
    cells without a key). Columns whose header starts with ``#`` or whose
    cells are numbers are right-aligned by CSS (``td.num``)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = [c if isinstance(c, Cell) else cell(c) for c in row]
        body.append("<tr>" + "".join(c.render() for c in cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<table{klass}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Section:
    """One report section: an ``id`` (stable, for tests and links), a
    ``title``, and its HTML ``body`` (already escaped)."""

    id: str
    title: str
    body: list[str] = field(default_factory=list)

    def render(self) -> str:
        """``<section id=...><h2>title</h2>body</section>``."""
        return (f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>' + "\n".join(self.body)
                + "</section>")


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       margin: 0; background: #f5f6f8; color: #1d2330; }
header { background: #1d2a44; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c6cfdf; font-size: 13px; word-break: break-all; }
main { max-width: 1180px; margin: 0 auto; padding: 12px 24px 40px; }
nav { margin: 10px 0 4px; font-size: 13px; }
nav a { margin-right: 14px; color: #2456a6; text-decoration: none; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; margin: 16px 0; padding: 8px 20px 16px; }
h2 { font-size: 17px; margin: 10px 0 10px; color: #1d2a44; }
p.note { color: #555d6b; font-size: 13px; margin: 6px 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; color: #333; }
th { text-align: left; background: #eef1f6; padding: 4px 10px; border-bottom: 1px solid #cfd5df; white-space: nowrap; }
td { padding: 3px 10px; border-bottom: 1px solid #eceff3; vertical-align: top; max-width: 560px;
     overflow-wrap: break-word; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:hover td { background: #f7f9fc; }
tr.chosen td { background: #fff4d6; font-weight: 600; }
tr.fail td, td.fail { color: #b3261e; }
td.ok { color: #1e7b34; }
.scroll { max-height: 760px; overflow-y: auto; display: inline-block; border: 1px solid #eceff3; }
.scroll table { margin: 0; }
.row { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
figure { margin: 8px 0 12px; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555d6b; }
footer { color: #7a8291; font-size: 12px; text-align: center; padding: 10px; }
"""


def page(title: str, subtitle: str, sections: Sequence[Section], doc_json: str) -> str:
    """The whole self-contained HTML page: inline CSS, a link bar, the
    sections, and the JSON document in a non-executed
    ``<script type="application/json" id="graphopt-json">`` (``<`` escaped as
    ``\\u003c`` so the text cannot close the element). No external resource."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    safe_json = doc_json.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main><nav>{nav}</nav>\n"
        + "\n".join(s.render() for s in sections)
        + "</main><footer>written by graphopt; the JSON document this report was built from is embedded in the "
          "page source (script#graphopt-json)</footer>"
        f'<script type="application/json" id="graphopt-json">{safe_json}</script></body></html>\n'
    )

"""Self-contained HTML reports of graphopt commands.

One file per report: CSS inline, every figure an embedded PNG ``data:`` URI,
no script and no network reference, so it opens anywhere without graphopt.
The report is built from the same document the command's ``--json`` prints
(embedded in the page as ``script#graphopt-json``), and every number cell
names where in that document it comes from (``data-key``); see
:mod:`graphopt.report.document` for which keys make which section.

    from graphopt.report import write_report
    write_report("report.html", doc, kind="prune")   # doc: the --json dict
"""

from graphopt.report.document import KINDS, build_sections, check_report_path, jsonable, render_report, write_report
from graphopt.report.html import Section, lookup
from graphopt.report.parse import ParsedReport, check_numbers, parse_report

__all__ = ["KINDS", "ParsedReport", "Section", "build_sections", "check_numbers", "check_report_path", "jsonable", "lookup",
           "parse_report", "render_report", "write_report"]

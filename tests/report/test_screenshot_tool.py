"""tools/screenshot_report.py: bad input exits 2 without starting a browser; with
Debian's chromium installed, a small report renders to a PNG (skipped when no
chromium is on PATH)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import screenshot_report  # noqa: E402

from graphopt.report import write_report  # noqa: E402


def test_missing_report_exits_2(tmp_path, capsys):
    if screenshot_report.find_chromium() is None:
        assert screenshot_report.main([str(tmp_path / "r.html"), str(tmp_path / "o.png")]) == 2
        assert "chromium" in capsys.readouterr().err
        return
    assert screenshot_report.main([str(tmp_path / "missing.html"), str(tmp_path / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(screenshot_report.find_chromium() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_renders_a_png(tmp_path):
    doc = {"input": "m.onnx", "before": {"nodes": 3, "ops": {"Relu": 3}}, "after": {"nodes": 1, "ops": {"Relu": 1}}}
    report = write_report(tmp_path / "r.html", doc, kind="optimize")
    out = screenshot_report.screenshot(report, tmp_path / "r.png", width=800, height=600)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The HTML report writer on a synthetic document: every section present, every
figure embedded, no external reference, text escaped, numbers equal to the
document's, and an atomic write that leaves nothing on a failure."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_docs import full_doc  # noqa: E402

from graphopt.errors import InputError, SaveError  # noqa: E402
from graphopt.report import check_numbers, jsonable, parse_report, render_report, write_report  # noqa: E402

ALL_SECTIONS = ["summary", "frontier", "latency", "verification", "ops", "int8-layers", "pruning-layers",
                "lowrank-layers", "custom-layers", "passes", "profile", "refused"]


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(full_doc(), kind="compress")


def test_every_section_present_in_order(page):
    assert parse_report(page).sections == ALL_SECTIONS


def test_figures_embedded_as_png_data_uris(page):
    parsed = parse_report(page)
    # frontier, bench latency, op histogram, INT8 SQNR, pruning and low-rank bars, profile
    assert len(parsed.images) == 7
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_self_contained(page):
    parsed = parse_report(page)
    assert parsed.references == []
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script src" not in page and "@import" not in page


def test_text_is_escaped(page):
    assert "<b>tiny</b>" not in page and "&lt;b&gt;tiny&lt;/b&gt;" in page
    assert "Gelu<x>" not in page and "Gelu&lt;x&gt;" in page
    assert "attn<q>" not in page


def test_numbers_equal_the_document(page):
    parsed = parse_report(page)
    doc = jsonable(full_doc())
    assert check_numbers(parsed, doc) == []
    keys = {k for k, _ in parsed.cells}
    # one of each kind of section, including names with '/' and '~' (escaped as ~1 and ~0)
    assert {"before/nodes", "after/parameters", "file_bytes/after", "latency_ms/after",
            "quality/rank-fidelity/after", "frontier/points/2/latency_ms", "models/1/median_ms",
            "verify/outputs/0/cosine", "before/ops/Constant", "sqnr_db/~1encoder~1layer.0~1MatMul_output_0",
            "sqnr_db/a~0b", "groups/1/kept", "layers/0/rank", "layer_tables/0/rows/1/share",
            "passes/0/nodes_after", "profiles/a~1base.onnx/0/ms"} <= keys
    assert parsed.doc == doc


def test_check_numbers_catches_a_difference(page):
    doc = jsonable(full_doc())
    doc["after"]["nodes"] = 60
    assert check_numbers(parse_report(page), doc) == ["after/nodes: 59 != 60"]


def test_chosen_frontier_point_highlighted(page):
    frontier = page.split('<section id="frontier">')[1].split("</section>")[0]
    chosen = [row for row in frontier.split("<tr") if "class=chosen" in row]
    assert len(chosen) == 1 and "prune 0.7 + int8" in chosen[0]


def test_sections_follow_the_document(tmp_path):
    doc = {"before": {"nodes": 3, "ops": {"Relu": 3}}, "after": {"nodes": 1, "ops": {"Relu": 1}}}
    assert parse_report(render_report(doc, kind="optimize")).sections == ["summary", "ops"]
    assert parse_report(render_report({"input": "m.onnx"}, kind="prune")).sections == []


def test_unknown_kind_refused(tmp_path):
    with pytest.raises(InputError, match="unknown report kind"):
        write_report(tmp_path / "r.html", {}, kind="nope")
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("old")

    def failing_replace(src, dst):  # noqa: ANN001, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(SaveError, match="disk full"):
        write_report(out, full_doc(), kind="compress")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_into_missing_folder_is_a_save_error(tmp_path):
    with pytest.raises(SaveError, match="folder exists"):
        write_report(tmp_path / "missing" / "r.html", {"input": "m.onnx"})


def test_written_file_and_json_roundtrip(tmp_path):
    out = write_report(tmp_path / "r.html", full_doc(), kind="compress")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and oct(out.stat().st_mode & 0o777) != "0o600"
    assert parse_report(text).doc == json.loads(json.dumps(jsonable(full_doc()), allow_nan=False))


def test_nested_step_documents_of_compress():
    doc = {"prune": {"groups": [{"name": "l0/heads", "kind": "heads", "size": 4, "kept": 2, "unit_flops": 1.0}]},
           "quantize": {"sqnr_db": {"/a/MatMul": 31.5}, "kept_float": ["/b/MatMul"]},
           "factorize": {"layers": [{"name": "l0/fc", "kind": "MatMul", "k": 8, "n": 8, "full_rank": 8, "rank": 4}]}}
    parsed = parse_report(render_report(doc, kind="compress"))
    assert parsed.sections == ["prune-pruning-layers", "factorize-lowrank-layers", "quantize-int8-layers"]
    assert {"prune/groups/0/kept", "factorize/layers/0/rank", "quantize/sqnr_db/~1a~1MatMul"} <= {k for k, _ in
                                                                                                 parsed.cells}
    assert check_numbers(parsed, doc) == []

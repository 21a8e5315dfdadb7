"""What the CLI prints on an 80-column terminal (issue 20, item 7): the
``inspect`` dims column (brackets are not markup), rows that stay distinct
(folded, not cut to a shared prefix), the optimize table's verification rows
(the measure checked and its tolerance, not ``max_rel_err``) and file size,
the position-table cap of TensorRT profiles, and the ``--fp16`` hint."""

from __future__ import annotations

import io
import json
import logging
import shutil

import onnx
import pytest
from rich.console import Console

from conftest import MODELS
from graphopt.codegen.tensorrt.profiles import make_profile, parse_shapes
from graphopt.verify import compare
from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture

BERT = MODELS / "bert_tiny_ts.onnx"


@pytest.fixture
def screen(monkeypatch) -> io.StringIO:
    """Every CLI module's stdout console replaced by an 80-column one writing here."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, highlight=False, soft_wrap=True, color_system=None)
    for module in ("optimize", "info", "bench", "explain", "engine", "quantize"):
        monkeypatch.setattr(f"graphopt.cli.{module}.stdout", console)
    return buffer


def test_inspect_prints_the_dims_column(screen, capsys):
    code, _, stderr = run_cli(capsys, "inspect", BERT)
    assert code == 0, stderr
    text = screen.getvalue()
    assert "[batch,sequence]" in text and "[batch,sequence,64]" in text and "[batch,64]" in text


def test_optimize_table_at_80_columns(screen, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, _, stderr = run_cli(capsys, "optimize", BERT, "-o", out, "-p", "O2")
    assert code == 0, stderr
    text = screen.getvalue()
    assert "…" not in text
    for name in ("merge-sibling-matmuls", "fuse-attention", "fuse-activation", "com.microsoft::Attention"):
        assert name in text
    assert "max rel error" not in text
    report = compare(BERT, out, rtol=1e-4, atol_scale=1e-4)  # what optimize checked (fusions declare 1e-4)
    worst = report.worst_output
    scale = max(o.scale_rel_err for o in report.outputs)
    assert (f"verified ok on 2 outputs: |a-b| <= atol + rtol*|a| (worst {worst.name}: rtol {worst.rtol:g}, atol "
            f"{worst.atol:.3g}, error/tolerance {worst.tol_ratio:.3g}); scale-relative error max|a-b|/max|a| <= "
            f"{scale:.3g}, cosine >= 1.000000") in flat(text)
    size_before, size_after = BERT.stat().st_size, out.stat().st_size
    from rich import filesize

    assert (f"file size │ {filesize.decimal(size_before)} │ {filesize.decimal(size_after)} "
            f"({(size_after - size_before) / size_before:+.1%})") in flat(text)


def test_optimize_json_reports_file_bytes(tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", BERT, "-o", out, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["file_bytes"] == {"before": BERT.stat().st_size, "after": out.stat().st_size}


def test_bench_rows_differ_at_80_columns(screen, tmp_path, capsys):
    folder = tmp_path / "a_rather_long_folder_name_for_benchmark_models" / "exports_from_the_same_run"
    folder.mkdir(parents=True)
    for variant in ("variant_a", "variant_b"):
        shutil.copy(BERT, folder / f"bert_tiny_{variant}.onnx")
    code, _, stderr = run_cli(capsys, "bench", folder / "bert_tiny_variant_a.onnx", folder / "bert_tiny_variant_b.onnx",
                              "--runs", "1", "--warmup", "0")
    assert code == 0, stderr
    text = screen.getvalue()
    assert "…" not in text
    first_column = "".join(line.split("│")[0].strip() for line in text.splitlines() if "│" in line)
    assert "bert_tiny_variant_a.onnxbert_tiny_variant_b.onnx" in first_column  # folded, whole
    assert f"models in {folder}" in text


def test_explain_folds_node_names(screen, capsys):
    code, _, stderr = run_cli(capsys, "explain", "attention", BERT)
    assert code == 0, stderr
    assert "…" not in screen.getvalue()


def test_profile_warns_when_given_shapes_pass_the_position_table(caplog):
    proto = onnx.load(str(BERT), load_external_data=False)
    with caplog.at_level(logging.WARNING):
        profile = make_profile(proto, parse_shapes(["input_ids=1x1:1x64:4x256"]))
    assert profile.shapes["attention_mask"].max == (4, 256)  # what was given is kept
    assert ("--shapes gives dim 'sequence' (input 'input_ids') a max of 256, but the model's position table "
            "inner.embeddings.position_embeddings.weight has 128 rows: runs past 128 will fail") in caplog.text


def test_profile_without_a_position_table_keeps_512():
    proto = onnx.load(str(MODELS / "llama_gqa_tiny_ts.onnx"), load_external_data=False)
    assert make_profile(proto).shapes["input_ids"].max == (8, 512)


def test_build_engine_fp16_points_to_quantize_float(tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx")
    code, _, stderr = run_cli(capsys, "build-engine", BERT, "-o", tmp_path / "m.engine", "--fp16")
    assert code == 2
    assert "no float16 conversion" not in stderr
    assert "(make one with `graphopt quantize IN -o OUT --float fp16`, or --float bf16)" in flat(stderr)
    assert not list(tmp_path.iterdir())

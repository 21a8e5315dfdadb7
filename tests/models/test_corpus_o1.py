"""`graphopt optimize -p O1` on every committed model in models/: the output
passes onnx.checker (full check), loads in onnxruntime, keeps the output
signature, matches the input's outputs within 1e-5 relative, never has more
nodes than the input, and grows by at most 1% (file and stored tensors, see
``size_rule``)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from conftest import MODELS, sha256
from graphopt.cli.main import main
from graphopt.verify import compare, signature_differences
from size_rule import check_size_kept

CORPUS = sorted(MODELS.glob("*.onnx"))


def test_corpus_is_present():
    assert len(CORPUS) >= 9, "models/ should hold the committed corpus (see models/README.md)"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_o1(path: Path, tmp_path: Path, capsys):
    digest = sha256(path)
    out = tmp_path / f"{path.stem}.O1.onnx"
    code = main(["-q", "optimize", str(path), "-o", str(out), "-p", "O1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sha256(path) == digest, "the input model was modified"
    onnx.checker.check_model(str(out), full_check=True)
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert signature_differences(onnx.load(str(path), load_external_data=False),
                                 onnx.load(str(out), load_external_data=False)) == []
    result = compare(path, out, rtol=1e-5, atol=1e-6, seed=1)
    assert result.ok, result.summary()
    assert report["after"]["nodes"] <= report["before"]["nodes"]
    assert report["rolled_back"] == []
    check_size_kept(path, out, report)


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_o1_infers_shapes_once_and_confirms_in_its_second_round(path: Path):
    # What the first round's rewrites make knowable is carried by the shape
    # rules and by the passes' dim equalities, not by new ONNX inferences
    # (about 4 ms each on these models); the fixpoint's second round finds
    # nothing left to do.
    import graphopt.passes  # noqa: F401 - registers the passes
    from graphopt import ir
    from graphopt.passmanager import PassContext, PassManager

    model = ir.load(path)
    before = sum(1 for g in ir.all_graphs(model) for _ in g)
    report = PassManager("O1", PassContext(target="ort")).run(model).report
    fold_shapes = [r for r in report.records if r.name == "fold-shapes"]
    assert sum(r.stats["inferred"] for r in fold_shapes) == 1
    assert len(fold_shapes) == 2 and not fold_shapes[1].modified
    assert sum(1 for g in ir.all_graphs(model) for _ in g) < before

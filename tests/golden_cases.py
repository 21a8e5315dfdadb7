"""Golden-graph cases: parse, run, compare with the expected canonical text.

A case file ``tests/golden/<family>/<pass>/<case>.golden`` holds::

    # pipeline: dce
    # explain: what the case shows
    # target: ort                     (optional; default ort)
    # rtol: 1e-4                      (optional; default 1e-5: exact passes)
    # reason: RULE: TEXT              (optional, repeatable: after the run,
    #                                  `graphopt explain RULE` gives TEXT at a site)
    --- input
    <ONNX text syntax>            (or a line "model: models/foo.onnx")
    --- expected
    <canonical text, graphopt.ir.to_text>

A case whose file name starts with ``kept_`` is a "nothing changes" case: the
pipeline must leave the model's canonical text as it was. The test runs the
pipeline, compares the canonical text (a unified diff on
mismatch), runs the pipeline again on the result (idempotence: the text must
not change), and compares outputs with onnxruntime at the case's rtol (1e-5
by default; a fusion case states 1e-4, which is also its absolute floor
relative to the output's scale, see ``graphopt.verify.compare``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from graphopt import ir

GOLDEN = Path(__file__).resolve().parent / "golden"
ROOT = GOLDEN.parent.parent


@dataclass
class GoldenCase:
    path: Path
    pipeline: str
    target: str
    input_text: str
    expected: str | None
    rtol: float = 1e-5
    reasons: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return str(self.path.relative_to(GOLDEN).with_suffix(""))

    def load_input(self) -> ir.Model:
        text = self.input_text.strip()
        if text.startswith("model:"):
            return ir.load(ROOT / text.split(":", 1)[1].strip())
        return ir.from_text(text)

    def write_expected(self, text: str) -> None:
        head = self.path.read_text().split("--- expected", 1)[0]
        self.path.write_text(head + "--- expected\n" + text)


def parse_case(path: Path) -> GoldenCase:
    raw = path.read_text()
    header, _, rest = raw.partition("--- input\n")
    if not rest:
        raise ValueError(f"{path}: no '--- input' section")
    input_text, sep, expected = rest.partition("--- expected\n")
    meta = {}
    reasons = []
    for line in header.splitlines():
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            if key.strip() == "reason":
                rule, _, text = value.strip().partition(":")
                reasons.append((rule.strip(), text.strip()))
            else:
                meta[key.strip()] = value.strip()
    if "pipeline" not in meta:
        raise ValueError(f"{path}: no '# pipeline:' line")
    return GoldenCase(path, meta["pipeline"], meta.get("target", "ort"), input_text,
                      expected if sep else None, float(meta.get("rtol", 1e-5)), tuple(reasons))


def collect() -> list[GoldenCase]:
    return [parse_case(p) for p in sorted(GOLDEN.rglob("*.golden"))]


def diff(expected: str, actual: str, name: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        f"{name} (expected)", f"{name} (actual)"))

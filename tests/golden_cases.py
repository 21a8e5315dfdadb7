"""Golden-graph cases: parse, run, compare with the expected canonical text.

A case file ``tests/golden/<family>/<pass>/<case>.golden`` holds::

    # pipeline: dce
    # explain: what the case shows
    --- input
    <ONNX text syntax>            (or a line "model: models/foo.onnx")
    --- expected
    <canonical text, graphopt.ir.to_text>

The test runs the pipeline, compares the canonical text (a unified diff on
mismatch), runs the pipeline again on the result (idempotence: the text must
not change), and compares outputs with onnxruntime at 1e-5 relative.
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
    for line in header.splitlines():
        if line.startswith("#") and ":" in line:
            key, value = line[1:].split(":", 1)
            meta[key.strip()] = value.strip()
    if "pipeline" not in meta:
        raise ValueError(f"{path}: no '# pipeline:' line")
    return GoldenCase(path, meta["pipeline"], meta.get("target", "ort"), input_text,
                      expected if sep else None)


def collect() -> list[GoldenCase]:
    return [parse_case(p) for p in sorted(GOLDEN.rglob("*.golden"))]


def diff(expected: str, actual: str, name: str) -> str:
    return "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                        f"{name} (expected)", f"{name} (actual)"))

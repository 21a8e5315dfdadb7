"""Shared test configuration: the ``--update-golden`` option and model builders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the expected sections of golden cases (refused when CI is set)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--update-golden") and os.environ.get("CI"):
        raise pytest.UsageError("--update-golden is refused when CI is set: update goldens locally and review the diff")
    config._golden_updated = []  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    updated = getattr(config, "_golden_updated", [])
    if updated:
        terminalreporter.write_line(f"--update-golden rewrote {len(updated)} file(s):")
        for path in updated:
            terminalreporter.write_line(f"  {path}")


def sha256(path: Path) -> str:
    """Hex digest of a file's bytes (to prove inputs are never modified)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

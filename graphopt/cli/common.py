"""Shared CLI pieces: the rich console, logging, dim/input options, progress."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from graphopt.errors import InputError
from graphopt.passmanager import Instrument

__all__ = ["console", "setup_logging", "parse_dims", "add_dim_options", "Progress", "want_progress"]

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False, soft_wrap=True)


def setup_logging(quiet: bool, verbose: bool) -> None:
    """Route ``logging`` through rich on stderr: warnings by default, errors
    only under ``--quiet``, debug under ``--verbose``."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    root = logging.getLogger()
    root.handlers[:] = [RichHandler(console=console, show_time=False, show_path=False, markup=False)]
    root.setLevel(level)
    logging.getLogger("onnx_ir").setLevel(max(level, logging.ERROR))


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """``["batch=1", "sequence=128"]`` -> ``{"batch": 1, "sequence": 128}``.

    Raises:
        InputError: an item not of the form NAME=POSITIVE_INT.
    """
    dims: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit() or int(value) < 1:
            raise InputError(f"--dim expects NAME=SIZE with a positive integer size (e.g. --dim batch=1), got '{item}'")
        dims[name.strip()] = int(value)
    return dims


def add_dim_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--dim NAME=SIZE`` (repeatable) and ``--inputs PATH``."""
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="bind a symbolic input dim for generated inputs (repeatable), e.g. --dim sequence=128")
    parser.add_argument("--inputs", metavar="PATH",
                        help="input data: an .npz file or a directory of ONNX input_*.pb tensors")


def want_progress(args: Any) -> bool:
    """A progress bar only on a terminal, and not under --quiet or --json."""
    return console.is_terminal and not getattr(args, "quiet", False) and not getattr(args, "json", False)


class Progress(Instrument):
    """A rich spinner over passes: the running pass, and passes done so far."""

    def __init__(self) -> None:
        from rich.progress import Progress as RichProgress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                      TextColumn("{task.completed} passes"), TimeElapsedColumn(),
                                      console=console, transient=True)
        self._task = None

    def before_pipeline(self, model: Any, ctx: Any, pipeline: Any) -> None:
        self._progress.start()
        self._task = self._progress.add_task("starting", total=None)

    def before_pass(self, pass_: Any, model: Any, ctx: Any) -> None:
        self._progress.update(self._task, description=pass_.name)

    def committed(self, pass_: Any, model: Any, record: Any, ctx: Any) -> None:
        self._progress.advance(self._task)

    def after_pipeline(self, model: Any, ctx: Any, report: Any) -> None:
        self._progress.stop()

    def on_crash(self, pass_: Any, spec: str, snapshot: Any, exc: BaseException, ctx: Any) -> str | None:
        self._progress.stop()
        return None

"""Shared CLI pieces: the rich console, logging, dim/input options, progress."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable

from rich.console import Console
from rich.logging import RichHandler

from graphopt.errors import InputError
from graphopt.passmanager import Instrument

__all__ = ["console", "setup_logging", "parse_dims", "add_dim_options", "Progress", "want_progress"]

console = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


def setup_logging(quiet: bool, verbose: bool) -> Callable[[], None]:
    """Route ``logging`` through rich on stderr: warnings by default, errors
    only under ``--quiet``, debug under ``--verbose``.

    Returns:
        A function that restores the previous logging setup (``main`` calls it
        on return, so in-process callers keep their own handlers).
    """
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    root = logging.getLogger()
    onnx_ir_logger = logging.getLogger("onnx_ir")
    saved = (list(root.handlers), root.level, onnx_ir_logger.level)
    root.handlers[:] = [RichHandler(console=console, show_time=False, show_path=False, markup=False)]
    root.setLevel(level)
    onnx_ir_logger.setLevel(max(level, logging.ERROR))

    def restore() -> None:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        onnx_ir_logger.setLevel(saved[2])

    return restore


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

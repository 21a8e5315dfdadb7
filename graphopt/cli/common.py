"""Shared CLI pieces: the rich console, logging, dim/input options, progress."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable

from rich.console import Console
from rich.logging import RichHandler

from graphopt.errors import InputError
from graphopt.passmanager import Instrument
from graphopt.verify.feed import parse_dims, parse_shape_options  # noqa: F401 - re-exported (cli options)

__all__ = [
    "console", "setup_logging", "parse_dims", "parse_shape_options", "parse_values", "add_dim_options",
    "input_request", "make_runner", "Progress", "want_progress",
]

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


def parse_values(items: list[str] | None) -> dict[str, float | int | bool]:
    """``["sr=16000", "scale=0.5", "flag=true"]`` -> ``{"sr": 16000, "scale": 0.5,
    "flag": True}``: a fill value per input (int, float, or true/false).

    Raises:
        InputError: an item not of the form NAME=NUMBER, or a name given twice.
    """
    values: dict[str, float | int | bool] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        value: float | int | bool | None = None
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        if not sep or not name or value is None:
            raise InputError(f"--value expects INPUT=NUMBER (e.g. --value sr=16000; true/false for bool inputs), "
                             f"got '{item}'")
        if name in values:
            raise InputError(f"--value gives input '{name}' twice")
        values[name] = value
    return values


def add_dim_options(parser: argparse.ArgumentParser, inputs: bool = True, values: bool = True) -> None:
    """Add ``--dim NAME=SIZE``, ``--shape INPUT=AxB`` (both repeatable),
    ``--value INPUT=NUMBER`` (repeatable; unless ``values`` is False) and
    ``--inputs PATH`` (unless ``inputs`` is False)."""
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="bind a symbolic input dim for generated inputs (repeatable), e.g. --dim sequence=128")
    parser.add_argument("--shape", action="append", metavar="INPUT=SHAPE", help=(
        "the whole shape of one generated input (repeatable), e.g. --shape input=1x512: sizes dims the model "
        "leaves unnamed ([?, ?]); named dims of that input take the sizes given"))
    if values:
        parser.add_argument("--value", action="append", metavar="INPUT=NUMBER", help=(
            "fill an input with one value (repeatable), e.g. --value sr=16000 for a sample-rate scalar"))
    if inputs:
        parser.add_argument("--inputs", metavar="PATH", help=(
            "input data: an .npz file or a directory of ONNX input_*.pb tensors; inputs it leaves out are "
            "generated"))


def input_request(args: Any, model: Any) -> Any:
    """The :class:`~graphopt.verify.feed.InputRequest` of ``args``'s
    ``--dim``/``--shape``/``--value``/``--inputs``, checked against ``model``
    (a path or an ``onnx.ModelProto``; read without weights) before any pass
    runs.

    Raises:
        InputError: bad syntax, or a name or size the model does not have
            (:func:`graphopt.verify.feed.check_request`; the valid names are
            listed).
        LoadError: the model cannot be read.
    """
    import onnx

    from graphopt.verify.feed import InputRequest, check_request
    from graphopt.verify.inputs import _as_proto

    request = InputRequest(parse_dims(getattr(args, "dim", None)), parse_shape_options(getattr(args, "shape", None)),
                           parse_values(getattr(args, "value", None)))
    if not (request.dims or request.shapes or request.values or getattr(args, "inputs", None)):
        return request  # nothing to check: the model is not read here
    proto = model if isinstance(model, onnx.ModelProto) else _as_proto(model)
    if getattr(args, "inputs", None):
        from graphopt.verify import read_inputs

        request.arrays = read_inputs(args.inputs, model=proto)  # the model's types decode sequence/optional files
    check_request(proto, request)
    return request


def make_runner(args: Any, model: Any) -> Any:
    """A :class:`~graphopt.passmanager.ModelRunner` for ``args``'s input
    options, checked against ``model`` (path or proto) now (see
    :func:`input_request`)."""
    from graphopt.passmanager import ModelRunner

    request = input_request(args, model)
    return ModelRunner(inputs=request.arrays or None, dims=request.dims, shapes=request.shapes,
                       values=request.values)


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

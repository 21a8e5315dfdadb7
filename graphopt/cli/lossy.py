"""CLI pieces shared by the lossy commands (``graphopt quantize``, ``prune``,
``factorize``): reading ``--calib`` (a path, or ``generate``) and ``--eval``
into batches of model inputs.

Every reader goes through :class:`graphopt.calibrate.data.CalibrationData`, so
data that does not fit the model is an ``InputError`` (exit 2) before anything
is written. The accuracy report itself is
:func:`graphopt.calibrate.report.accuracy_report`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import onnx

__all__ = ["calibration_data", "evaluation_batches", "first_batches", "generated_data"]


def calibration_data(args: argparse.Namespace, proto: onnx.ModelProto) -> Any:
    """The ``--calib`` data of ``args`` for ``proto``: None without ``--calib``;
    ``--calib-count`` synthetic samples for ``--calib generate`` (see
    :func:`generated_data`); else a lazy
    :class:`~graphopt.calibrate.data.CalibrationData` of the path, in
    ``--batch-size`` batches, at most ``--calib-limit`` samples.

    Raises:
        InputError: an unreadable path (samples are checked as they are read:
            take :func:`first_batches` of one to check the first now).
    """
    from graphopt.calibrate.data import CalibrationData

    if args.calib is None:
        return None
    if args.calib == "generate":
        return generated_data(args, proto, args.calib_count, 0)
    return CalibrationData.from_path(args.calib, proto, batch_size=args.batch_size, limit=args.calib_limit)


def generated_data(args: argparse.Namespace, proto: onnx.ModelProto, count: int, seed: int) -> Any:
    """``count`` synthetic samples (seeds ``seed``, ``seed + 1``, ...) at sizes
    the model runs on: the defaults and ``--dim`` as
    ``CalibrationData.generated`` draws them, or, with ``--shape``/``--value``
    or when the defaults do not run, the sizes
    :func:`graphopt.verify.feed.runnable_inputs` found. ``args.request`` is the
    command's checked :func:`~graphopt.cli.common.input_request`.

    Raises:
        InputError: the model runs on no generated input (the message names
            --shape, --value).
    """
    from graphopt.calibrate.data import CalibrationData
    from graphopt.verify.feed import runnable_inputs

    request = args.request
    feed = runnable_inputs(args.input, request, seed=seed)
    if feed.grow is None and not request.shapes and not request.values:
        return CalibrationData.generated(proto, count=count, seed=seed, dims=request.dims)
    return CalibrationData.from_arrays([feed.sample(seed + i) for i in range(count)], proto)


def evaluation_batches(args: argparse.Namespace, proto: onnx.ModelProto, count: int) -> list[dict] | None:
    """The first ``count`` batches of the ``--eval`` data (held-out inputs for
    the accuracy report and the ``--budget`` search), in ``--batch-size``
    batches; None without ``--eval``.

    Raises:
        InputError: the data cannot be read or does not fit the model.
    """
    from graphopt.calibrate.data import CalibrationData

    if not args.eval:
        return None
    return first_batches(CalibrationData.from_path(args.eval, proto, batch_size=args.batch_size), count)


def first_batches(data: Iterable[dict], count: int) -> list[dict]:
    """The first ``count`` batches of ``data`` (fewer when it has fewer)."""
    batches = []
    for batch in data:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches

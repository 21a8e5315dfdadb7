"""Collect calibrated ranges of a model's tensors in one pass over the data.

:func:`collect_ranges` runs the model once per calibration batch in
onnxruntime (:func:`~graphopt.calibrate.activations.stream_activations`,
every requested tensor exposed as an output of one session) and feeds each
tensor's values to its own observer
(:mod:`~graphopt.passes.quantization.observers`). Only one batch's
activations are alive at a time; observers keep running statistics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from graphopt import ir
from graphopt.errors import InputError
from graphopt.calibrate.activations import stream_activations, values_by_name
from graphopt.calibrate.data import CalibrationData, check_sample, signature_proto, track
from graphopt.passes.quantization.observers import Observer, make_observer

log = logging.getLogger(__name__)

__all__ = ["TensorRange", "collect_ranges"]

_FLOAT_TYPES = ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16")


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one tensor.

    Attributes:
        rmin: lower end, ``<= 0`` (tensor units).
        rmax: upper end, ``>= 0``.
        method: the observer's method (``minmax``, ``percentile``, ...).
        count: finite values observed over all batches.
        nonfinite: NaN / Inf values seen and ignored.
    """

    rmin: float
    rmax: float
    method: str
    count: int
    nonfinite: int = 0

    @classmethod
    def from_observer(cls, observer: Observer) -> TensorRange:
        """The observer's current range and counts."""
        rmin, rmax = observer.range()
        return cls(rmin, rmax, observer.method, observer.count, observer.nonfinite)


def collect_ranges(
    model: ir.Model,
    names: Sequence[str],
    data: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    options: Mapping[str, object] | None = None,
    progress: bool = False,
) -> dict[str, TensorRange]:
    """Calibrate the ranges of ``names`` over ``data``.

    Args:
        model: the IR model (not modified).
        names: float tensors of the main graph (node outputs, graph inputs).
        data: batches ``{graph input name: array}``, e.g. a
            :class:`~graphopt.calibrate.data.CalibrationData`;
            each is validated against the model's inputs.
        method: ``minmax | percentile | entropy | mse``
            (:func:`~graphopt.passes.quantization.observers.make_observer`).
        options: the observer's options, e.g. ``{"percentile": 99.99}``.
        progress: a progress bar over batches on a terminal.

    Returns:
        ``{name: TensorRange}`` in the order of ``names``. A tensor with no
        finite value gets ``(0.0, 0.0)`` and a warning.

    Raises:
        InputError: unknown method or option; a name is not a value of the
            main graph, or is not a float tensor (by its declared type, or by
            the values onnxruntime returns); a batch does not match the
            model's inputs; ``data`` holds no batch.
        ModelRunError: onnxruntime fails on a batch.
    """
    names = list(dict.fromkeys(names))
    options = dict(options or {})
    observers = {name: make_observer(method, **options) for name in names}
    values = values_by_name(model.graph)
    missing = [n for n in names if n not in values]
    if missing:
        close = ", ".join(sorted(values)[:8])
        raise InputError(
            f"cannot calibrate {missing[0]!r}: it is not a value of the model's main graph "
            f"({len(missing)} such name(s)); values include: {close}, ..."
        )
    for name in names:
        dtype = values[name].dtype
        if dtype is not None and dtype.name not in _FLOAT_TYPES:
            raise InputError(
                f"cannot calibrate {name!r}: its element type is {dtype.name.lower()}; only float tensors "
                "(float, float16, double, bfloat16) get quantization ranges"
            )
    if not names:
        return {}
    signature = signature_proto(model)
    if isinstance(data, CalibrationData):
        batches: Iterable[Mapping[str, np.ndarray]] = data.iter(progress=progress)
    else:
        total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
        batches = track(data, total, "calibrating", progress)

    def checked():  # noqa: ANN202
        for index, batch in enumerate(batches):
            check_sample(signature, batch, f"batch {index}")
            yield batch

    seen = 0
    stream = stream_activations(model, names, checked())
    with contextlib.closing(stream):
        for acts in stream:
            for name in names:
                array = acts[name]
                if seen == 0 and array.dtype.kind not in "fV":
                    raise InputError(
                        f"cannot calibrate {name!r}: onnxruntime returns it as {array.dtype}, not a float tensor"
                    )
                observers[name].update(array)
            seen += 1
            del acts
    if seen == 0:
        raise InputError("calibration data holds no batch; give at least one sample")
    result = {name: TensorRange.from_observer(obs) for name, obs in observers.items()}
    for name, r in result.items():
        if r.count == 0:
            log.warning("calibration: tensor %s had no finite value in %d batch(es); range set to [0, 0]", name, seen)
        elif r.nonfinite:
            log.warning("calibration: tensor %s had %d NaN/Inf value(s), ignored", name, r.nonfinite)
    log.info("calibrated %d tensor(s) over %d batch(es) with %s", len(result), seen, method)
    return result

"""Calibration data: batches of model inputs (for INT8 calibration, pruning importance, low-rank spectra).

A :class:`CalibrationData` is a re-iterable sequence of input dicts
``{graph input name: numpy array}``. It is built from files
(:meth:`CalibrationData.from_path`), drawn synthetically
(:meth:`CalibrationData.generated`) or given in memory
(:meth:`CalibrationData.from_arrays`). Files are read one sample at a time
while iterating (with :func:`graphopt.verify.readers.read_inputs`), so a data
set larger than memory calibrates fine. Every sample is validated against the
model's declared inputs (names, dtype, rank, static dims) before it is used,
and an error names the sample's file or index.
"""

from __future__ import annotations

import difflib
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
from onnx import helper

from graphopt import ir
from graphopt.errors import InputError
from graphopt.verify.inputs import check_inputs, generate_inputs, input_specs
from graphopt.verify.readers import read_inputs

log = logging.getLogger(__name__)

__all__ = ["CalibrationData", "check_sample", "signature_proto", "track"]

_DATA_SET = re.compile(r"test_data_set_(\d+)")
_PB = re.compile(r"input_\d+\.pb")
T = TypeVar("T")


def signature_proto(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto:
    """A ModelProto holding only ``model``'s runtime inputs (names, element
    types, dims; no nodes, no weights): what :func:`check_sample` reads, cheap
    to check every sample against and to keep."""
    if isinstance(model, onnx.ModelProto):
        specs = [(s.name, s.elem_type, s.dims) for s in input_specs(model)]
    else:
        specs = []
        for value in model.graph.inputs:
            if value.name in model.graph.initializers:
                continue
            dims = None
            if value.shape is not None:
                dims = tuple(d if isinstance(d, int) else getattr(d, "value", None) for d in value.shape)
            elem = int(value.dtype) if value.dtype is not None else onnx.TensorProto.UNDEFINED
            specs.append((value.name, elem, dims))
    infos = [helper.make_tensor_value_info(n, elem, None if dims is None else list(dims)) for n, elem, dims in specs]
    return helper.make_model(helper.make_graph([], "signature", infos, []))


def check_sample(model: onnx.ModelProto, sample: Mapping[str, object], where: str) -> None:
    """Validate one input dict against the model's declared inputs.

    Checks the names (an unknown name lists close matches among the model's
    inputs), then dtype, rank and static dims with
    :func:`~graphopt.verify.inputs.check_inputs`.

    Args:
        model: the model (or its :func:`signature_proto`).
        sample: ``{input name: array}``.
        where: the sample's file or index, for the message.

    Raises:
        InputError: ``"<where>: <what>; <what to do>"``.
    """
    specs = {s.name: s for s in input_specs(model)}
    signature = ", ".join(f"{s.name}: {s.describe()}" for s in specs.values()) or "none"
    for name in sample:
        if name not in specs:
            lowered = {n.lower(): n for n in specs}
            close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3)]
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
            raise InputError(
                f"calibration {where}: {name!r} is not an input of the model{hint} "
                f"The model's inputs are: {signature}. Rename the array to the model's input name"
            )
    try:
        check_inputs(model, sample)
    except InputError as e:
        raise InputError(
            f"calibration {where}: {e}. Every calibration sample must match the model's inputs ({signature})"
        ) from e


def track(
    items: Iterable[T], total: int | None = None, description: str = "calibrating", progress: bool = False
) -> Iterator[T]:
    """Yield ``items``, with a rich progress bar on stderr when ``progress`` is
    true and stderr is a terminal (never otherwise: logs and pipes stay clean),
    checking the enclosing time limit (:func:`graphopt.deadline.check`) before
    each item.

    Args:
        total: the number of items, when known (else a spinner-like bar).
    """
    from graphopt.deadline import check

    if not (progress and sys.stderr.isatty()):
        for item in items:
            check(description)
            yield item
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=sys.stderr), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            check(description)
            yield item
            bar.advance(task)


class CalibrationData:
    """Re-iterable batches of model inputs ``{graph input name: np.ndarray}``.

    Iterating twice gives the same batches; ``len()`` is the number of
    batches. A batch concatenates ``batch_size`` consecutive samples along
    axis 0 (the last batch may be smaller). Samples are loaded one at a time
    during iteration and validated with :func:`check_sample` (when a model was
    given).

    Use the constructors :meth:`from_path`, :meth:`generated`,
    :meth:`from_arrays`.
    """

    def __init__(
        self,
        loaders: Sequence[tuple[str, Callable[[], dict[str, np.ndarray]]]],
        model: onnx.ModelProto | ir.Model | None = None,
        batch_size: int = 1,
    ) -> None:
        """``loaders``: ``(label, load)`` per sample, ``label`` naming it in errors."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise InputError(f"calibration batch_size must be a positive integer, got {batch_size!r}")
        self._loaders = list(loaders)
        self._model = signature_proto(model) if model is not None else None
        self.batch_size = int(batch_size)
        if self.batch_size > 1 and self._model is not None:
            for spec in input_specs(self._model):
                if not spec.dims or isinstance(spec.dims[0], int):
                    raise InputError(
                        f"calibration batch_size={self.batch_size} needs a dynamic first dim, but input "
                        f"{spec.name!r} is {spec.describe()}; use batch_size=1 or export the model "
                        "with a dynamic batch axis"
                    )

    @property
    def num_samples(self) -> int:
        """Samples (before batching)."""
        return len(self._loaders)

    def __len__(self) -> int:
        return -(-len(self._loaders) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iter()

    def iter(self, progress: bool = False, description: str = "calibrating") -> Iterator[dict[str, np.ndarray]]:
        """The batches, with a progress bar over them (see :func:`track`).

        Raises:
            InputError: a sample cannot be read or does not match the model
                (names the sample), or samples of one batch cannot be
                concatenated (their non-batch dims differ).
        """
        return track(self._batches(), len(self), description, progress)

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._loaders), self.batch_size):
            group = self._loaders[start : start + self.batch_size]
            samples = []
            for label, load in group:
                sample = load()
                if self._model is not None:
                    check_sample(self._model, sample, label)
                samples.append(sample)
            if len(samples) == 1:
                yield samples[0]
                continue
            batch = {}
            for name in samples[0]:
                parts = [s[name] for s in samples]
                try:
                    batch[name] = np.concatenate(parts, axis=0)
                except ValueError as e:
                    shapes = ", ".join(f"{label}: {tuple(p.shape)}" for (label, _), p in zip(group, parts))
                    raise InputError(
                        f"calibration: cannot batch input {name!r} of samples {shapes} along axis 0 ({e}); "
                        "samples of one batch must agree on all other dims: use batch_size=1"
                    ) from e
            yield batch

    def __repr__(self) -> str:
        return f"CalibrationData({self.num_samples} samples, batch_size={self.batch_size})"

    # -- constructors ------------------------------------------------------

    @classmethod
    def from_path(
        cls, path: str | Path, model_proto: onnx.ModelProto | ir.Model, batch_size: int = 1, limit: int | None = None
    ) -> CalibrationData:
        """Calibration samples from files, read lazily.

        Layouts of ``path``:

        - one ``.npz`` / ``.npy`` file: one sample (``read_inputs`` layouts);
        - a directory of ``input_N.pb`` files: one sample;
        - a directory of ``test_data_set_N/`` folders (ONNX backend test data
          layout): one sample each, in order of ``N``;
        - a directory of ``.npz`` / ``.npy`` files: one sample each, sorted by
          file name (zero-pad numbers: ``s_02`` sorts before ``s_10``).

        A directory holding several of these is read by the first that
        applies, in this order.

        Args:
            model_proto: the model whose inputs the samples feed (structure only).
            batch_size: samples per batch, concatenated along axis 0; needs a
                dynamic first dim on every model input.
            limit: use at most this many samples (the first ones).

        Raises:
            InputError: the path does not exist, holds none of these layouts,
                or ``batch_size`` / ``limit`` is invalid. Reading and
                validation errors are raised while iterating.
        """
        p = Path(path)
        model = signature_proto(model_proto)
        names = [s.name for s in input_specs(model)]
        if not p.exists():
            raise InputError(
                f"calibration data {str(p)!r} does not exist; give an .npz/.npy file or a directory of them, "
                "of input_N.pb files, or of test_data_set_N folders"
            )
        if p.is_file() or any(_PB.fullmatch(f.name) for f in p.iterdir()):
            files = [p]
        else:
            sets = sorted(
                ((int(m.group(1)), f) for f in p.iterdir() if f.is_dir() and (m := _DATA_SET.fullmatch(f.name))),
            )
            files = [f for _, f in sets] or sorted(
                (f for f in p.iterdir() if f.is_file() and f.suffix in (".npz", ".npy")), key=lambda f: f.name
            )
        if not files:
            found = sorted(f.name for f in p.iterdir())[:5]
            raise InputError(
                f"calibration data directory {str(p)!r} holds no samples (found: {', '.join(found) or 'nothing'}); "
                "put .npz files in it (one per sample, numpy.savez(path, input_name=array)), "
                "input_N.pb files, or test_data_set_N folders"
            )
        if limit is not None:
            if int(limit) != limit or limit < 1:
                raise InputError(f"calibration limit must be a positive integer, got {limit!r}")
            files = files[: int(limit)]
        log.info("calibration data %s: %d sample(s), batch size %d", p, len(files), batch_size)
        loaders = [(f"file {str(f)!r}", _file_loader(f, names)) for f in files]
        return cls(loaders, model, batch_size)

    @classmethod
    def generated(
        cls,
        model_proto: onnx.ModelProto | ir.Model,
        count: int = 8,
        seed: int = 0,
        dims: Mapping[str, int] | None = None,
    ) -> CalibrationData:
        """``count`` synthetic samples from
        :func:`~graphopt.verify.inputs.generate_inputs` with seeds ``seed``,
        ``seed + 1``, ... (float inputs standard normal, ids within the
        vocabulary, masks of ones; symbolic dims bound by ``dims``).

        Raises:
            InputError: ``count < 1``, or ``generate_inputs`` refuses ``dims`` /
                the model's inputs (raised here, for the first sample).
        """
        if int(count) != count or count < 1:
            raise InputError(f"calibration count must be a positive integer, got {count!r}")
        # generate_inputs reads the graph (embedding tables bound token ids), so an IR model is converted
        source = model_proto if isinstance(model_proto, onnx.ModelProto) else ir.to_proto(model_proto)
        generate_inputs(source, dims, seed)  # fail now on bad dims, not mid-calibration
        loaders = [
            (f"generated sample {i} (seed {seed + i})", _generated_loader(source, dims, seed + i))
            for i in range(int(count))
        ]
        return cls(loaders, source)

    @classmethod
    def from_arrays(
        cls,
        samples: Sequence[Mapping[str, np.ndarray]],
        model_proto: onnx.ModelProto | ir.Model | None = None,
        batch_size: int = 1,
    ) -> CalibrationData:
        """Samples given in memory, each ``{input name: array}``; validated
        against ``model_proto`` when given.

        Raises:
            InputError: ``samples`` is empty or not a list of dicts.
        """
        samples = list(samples)
        if not samples:
            raise InputError("calibration data is empty: give at least one {input name: array} dict")
        for i, s in enumerate(samples):
            if not isinstance(s, Mapping):
                raise InputError(f"calibration sample {i} is a {type(s).__name__}, not a dict of input name -> array")
        loaders = [(f"sample {i}", _memory_loader(s)) for i, s in enumerate(samples)]
        return cls(loaders, model_proto, batch_size)


def _file_loader(path: Path, names: list[str]) -> Callable[[], dict[str, np.ndarray]]:
    def load() -> dict[str, np.ndarray]:
        try:
            return read_inputs(path, names)
        except InputError as e:
            raise InputError(f"calibration file {str(path)!r}: {e}") from e

    return load


def _generated_loader(model: onnx.ModelProto, dims: Mapping[str, int] | None, seed: int):  # noqa: ANN202
    return lambda: generate_inputs(model, dims, seed)


def _memory_loader(sample: Mapping[str, np.ndarray]):  # noqa: ANN202
    return lambda: {k: np.asarray(v) for k, v in sample.items()}

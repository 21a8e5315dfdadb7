"""Inputs that the original model accepts: the user's choices checked against
the model, and a search for sizes when the defaults do not run.

A user sizes and sets inputs four ways, shared by every command that runs a
model (``optimize``, ``bisect``, ``verify``, ``bench``, ``quantize``):

- ``--dim NAME=SIZE`` binds a symbolic dim name wherever it appears;
- ``--shape INPUT=1x512`` gives one input's whole shape, as trtexec's and
  Polygraphy's ``--shapes`` spell it: the way to size unnamed dims (``[?, ?]``);
- ``--value INPUT=16000`` fills an input with one value (a scalar sample rate
  that picks an ``If`` branch);
- ``--inputs FILE`` gives real arrays, for all inputs or some: the rest are
  generated.

:func:`check_request` validates all of them against the model's declared
inputs before anything runs (unknown names, ranks, static dims, dtypes,
sequences past the model's position table). :func:`runnable_inputs` then
generates inputs and runs the *original* model on them in onnxruntime; when
it fails and some dims are free, it retries with larger free dims
(:data:`GROWTH`), and when nothing runs it raises an :class:`InputError`
(exit 2) that names ``--shape``, ``--value`` and ``--inputs``: a model that
cannot run on the inputs says nothing about a rewrite.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphopt.errors import InputError
from graphopt.verify.inputs import Growth, InputSpec, _check_dims, generate_inputs, input_specs
from graphopt.verify.runtime import ModelLike, ModelRunError, ModelSource, resolve_model, run_model, split_inputs
from graphopt.verify.tables import SEQUENCE_DIM, position_limit

__all__ = ["GROWTH", "Feed", "InputRequest", "check_request", "runnable_inputs", "parse_dims", "parse_shape_options"]

logger = logging.getLogger(__name__)

#: The sizes tried, in order, after the defaults fail: each ``Growth(batch,
#: size)`` sets the free dims (batch-like ones to ``batch``, the others to
#: ``size``). Batch stays 1 first (the cheapest run); then every free dim
#: takes the size, for models whose unnamed batch dims must agree (an input
#: ``[?, ?]`` beside a state ``[2, ?, 128]``). Powers of 4 from 16: a window
#: or kernel of 64, a frame of 256 or 512, a chunk of 1024 are common.
GROWTH: tuple[Growth, ...] = (
    Growth(1, 16), Growth(16, 16), Growth(1, 64), Growth(64, 64),
    Growth(1, 256), Growth(256, 256), Growth(1, 1024),
)  # fmt: skip


@dataclass
class InputRequest:
    """What the user said about the inputs (the module doc's four options).

    Attributes:
        dims: symbolic dim name -> size (``--dim``).
        shapes: input name -> whole shape (``--shape``).
        values: input name -> fill value (``--value``): int, float or bool.
        arrays: input name -> array (``--inputs``), all inputs or some.
        bound: the dims in effect, set by :func:`check_request`: ``dims``
            plus the named dims that shapes and arrays fix.
    """

    dims: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    values: dict[str, float | int | bool] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    bound: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """The request in CLI spelling, e.g. ``--dim sequence=200 --value sr=16000``."""
        parts = [f"--dim {k}={v}" for k, v in self.dims.items()]
        parts += [f"--shape {k}={'x'.join(map(str, v))}" for k, v in self.shapes.items()]
        parts += [f"--value {k}={v}" for k, v in self.values.items()]
        if self.arrays:
            parts.append(f"--inputs ({', '.join(self.arrays)})")
        return " ".join(parts)


@dataclass
class Feed:
    """Inputs the original model ran on, and its outputs on them.

    Attributes:
        inputs: ``{input name: array}`` for every runtime input.
        outputs: the original model's outputs on ``inputs`` (None when it was
            not run).
        grow: the :class:`Growth` that made them run (None: the defaults did).
        generated: the names of the inputs that were generated.
    """

    inputs: dict[str, np.ndarray]
    outputs: dict[str, Any] | None = None
    grow: Growth | None = None
    generated: tuple[str, ...] = ()
    _proto: onnx.ModelProto | None = None
    _request: InputRequest | None = None

    def sample(self, seed: int) -> dict[str, np.ndarray]:
        """Another set of inputs of the same shapes, drawn with ``seed``
        (calibration samples); given arrays and ``--value`` inputs stay."""
        if self._proto is None or self._request is None or not self.generated:
            return dict(self.inputs)
        shapes = {name: tuple(a.shape) for name, a in self.inputs.items()}
        drawn = generate_inputs(self._proto, self._request.dims, seed, shapes=shapes,
                                values=self._request.values)
        return {name: self.inputs[name] if name not in self.generated else drawn[name] for name in self.inputs}


def _inputs_text(specs: Sequence[InputSpec]) -> str:
    return ", ".join(f"{s.name}: {s.describe()}" for s in specs) or "(none)"


def _unknown_input(option: str, name: str, specs: Sequence[InputSpec]) -> InputError:
    close = difflib.get_close_matches(name, [s.name for s in specs], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return InputError(f"{option} names '{name}', which is not an input of the model{hint}; its inputs are: "
                      f"{_inputs_text(specs)}")


def _check_shape(option: str, spec: InputSpec, shape: tuple[int, ...]) -> None:
    if spec.dims is None:
        return
    if len(shape) != len(spec.dims):
        raise InputError(f"{option} gives '{spec.name}' rank {len(shape)} {list(shape)}, but the input has rank "
                         f"{len(spec.dims)}: {spec.describe()}")
    for axis, (want, got) in enumerate(zip(spec.dims, shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"{option} gives axis {axis} of '{spec.name}' size {got}, but the model fixes it to "
                             f"{want}: {spec.describe()}")


def _check_value(spec: InputSpec, value: float | int | bool) -> None:
    kind = spec.dtype.kind
    if kind in "iu" and (isinstance(value, float) and not value.is_integer()):
        raise InputError(f"--value {spec.name}={value}: the input is {spec.describe()}, an integer input; "
                         "give an integer")
    if kind in "iu":
        info = np.iinfo(spec.dtype)
        if not info.min <= int(value) <= info.max:
            raise InputError(f"--value {spec.name}={value} is outside {spec.dtype} [{info.min}, {info.max}]")
    if kind not in "iubfc" and not spec.dtype.name.startswith(("bfloat", "float")):
        raise InputError(f"--value {spec.name}: the input is {spec.describe()}; only numeric and bool inputs take "
                         "--value (give others with --inputs)")


def check_request(model: onnx.ModelProto, request: InputRequest) -> dict[str, int]:
    """Validate ``request`` against ``model``'s declared runtime inputs before
    anything runs.

    Returns:
        The dim bindings in effect: ``request.dims`` plus the named dims that
        ``--shape`` and ``--inputs`` arrays fix (also stored as
        ``request.bound``).

    Raises:
        InputError: a ``--dim`` name is no dim name of the inputs (the names,
            and the inputs with unnamed dims, are listed); a ``--shape``,
            ``--value`` or ``--inputs`` name is no input (the inputs are
            listed); a shape's rank or a static size differs from the model's;
            an input given twice (``--shape``/``--value`` and ``--inputs``);
            a ``--value`` that does not fit the input's dtype; two sizes for
            one dim name; a sequence-like dim past the model's position table.
    """
    specs = {s.name: s for s in input_specs(model)}
    structured = split_inputs(model)[1]  # sequence/optional/map inputs: only --inputs can give them
    listed = list(specs.values())
    _check_dims(model, request.dims)
    for option, names in (("--shape", request.shapes), ("--value", request.values), ("--inputs", request.arrays)):
        for name in names:
            if name not in specs and not (option == "--inputs" and name in structured):
                raise _unknown_input(option, name, listed)
    for name in request.arrays:
        if name in request.shapes or name in request.values:
            raise InputError(f"input '{name}' is given by --inputs and by --shape/--value; give it once")
    dims = dict(request.dims)
    origin = {name: f"--dim {name}={size}" for name, size in dims.items()}
    fixed = [("--shape", n, tuple(s)) for n, s in request.shapes.items()]
    fixed += [("--inputs", n, tuple(a.shape)) for n, a in request.arrays.items() if n in specs]
    for option, name, shape in fixed:
        spec = specs[name]
        _check_shape(option, spec, shape)
        for axis, (d, size) in enumerate(zip(spec.dims or (), shape)):
            if isinstance(d, str) and d.isidentifier():
                if d in dims and dims[d] != size:
                    raise InputError(f"dim '{d}' is {dims[d]} by {origin[d]} but {size} by {option} {name} "
                                     f"(axis {axis}); give one size")
                dims[d] = size
                origin.setdefault(d, f"{option} {name}")
    for name, array in request.arrays.items():
        if name in specs and array.dtype != specs[name].dtype:
            raise InputError(f"--inputs: '{name}' is {array.dtype}, but the model takes {specs[name].describe()}; "
                             f"convert it, e.g. array.astype(np.{specs[name].dtype})")
    for name, value in request.values.items():
        _check_value(specs[name], value)
    _check_positions(model, dims, origin)
    request.bound = dict(dims)
    return dims


def _check_positions(model: onnx.ModelProto, dims: Mapping[str, int], origin: Mapping[str, str]) -> None:
    """A sequence-like dim bound past the model's position table: exit 2 now,
    not an onnxruntime broadcast error later."""
    table = None
    for name, size in dims.items():
        if not SEQUENCE_DIM.search(name.lower()):
            continue
        table = table or position_limit(model)
        if table is not None and size > table.rows:
            raise InputError(
                f"{origin.get(name, name)} asks for {size} positions, but the model has a position table of "
                f"{table.rows} rows ({table.name}): it runs sequences of at most {table.rows}; "
                f"use {name}={table.rows} or less")


def _free(specs: Sequence[InputSpec], request: InputRequest, dims: Mapping[str, int]) -> bool:
    """Whether any generated input has a dim that nobody bound (growth can change it)."""
    for spec in specs:
        if spec.name in request.shapes or spec.name in request.arrays:
            continue
        for d in spec.dims or ():
            if d is None or (isinstance(d, str) and d not in dims):
                return True
    return False


def _feed_text(feed: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{n}: {a.dtype}{list(a.shape)}" if hasattr(a, "shape") else f"{n}: {type(a).__name__}"
                     for n, a in feed.items())


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def runnable_inputs(
    model: ModelLike | ModelSource,
    request: InputRequest | None = None,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    max_elements: int = 1 << 26,
) -> Feed:
    """Inputs on which the original ``model`` runs in onnxruntime.

    The request is checked first (:func:`check_request`). The inputs are
    generated (:func:`~graphopt.verify.inputs.generate_inputs`; given arrays
    kept) and the model is run on them; when onnxruntime fails while running
    and some dims are free, each :data:`GROWTH` step is tried in turn (feeds
    over ``max_elements`` elements in all are skipped), and the first that
    runs wins (the choice is logged).

    Args:
        model: the reference model: a path, ``onnx.ModelProto``, graphopt IR
            model or resolved :class:`~graphopt.verify.runtime.ModelSource`.
        request: the user's dims, shapes, values and arrays (None: none).
        seed: the generation seed.
        providers: onnxruntime execution providers (default CPU).

    Returns:
        A :class:`Feed` with the inputs and the model's outputs on them.

    Raises:
        InputError: the request does not fit the model (:func:`check_request`),
            or the model fails on every input tried: the message names the
            sizes tried, onnxruntime's error, and ``--shape``, ``--value`` and
            ``--inputs``.
        LoadError: onnxruntime cannot load the model (growing inputs cannot
            help).
    """
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    request = request or InputRequest()
    dims = check_request(source.proto, request)
    specs = input_specs(source.proto)
    generated = tuple(s.name for s in specs if s.name not in request.arrays)
    attempts: list[Growth | None] = [None]
    if generated and _free(specs, request, dims):
        attempts += list(GROWTH)
    tried: list[str] = []
    seen: set[tuple] = set()
    error: BaseException | None = None
    for grow in attempts:
        feed = generate_inputs(source.proto, dims, seed, shapes=request.shapes, values=request.values, grow=grow,
                               given=tuple(request.arrays))
        feed.update(request.arrays)
        key = tuple((n, getattr(a, "shape", id(a))) for n, a in feed.items())  # a list/None: a given input
        if key in seen or (grow is not None and sum(getattr(a, "size", 0) for a in feed.values()) > max_elements):
            continue
        seen.add(key)
        try:
            outputs = run_model(source, feed, providers)
        except ModelRunError as e:
            tried.append(_feed_text(feed))
            error = e
            logger.info("the model fails on %s: %s", _feed_text(feed), _first_line(e))
            continue
        if grow is not None:
            logger.warning("the model fails on inputs of the default sizes (%s); using %s. Give sizes with --shape "
                           "or --dim to choose them", tried[0], _feed_text(feed))
        return Feed(dict(feed), outputs, grow, generated, source.proto, request)
    assert error is not None
    given = f" with {request.describe()}" if request.describe() else ""
    if not generated:
        raise InputError(f"the original model {source.label} fails in onnxruntime on the inputs given{given}: "
                         f"{_first_line(error)}; check the --inputs data (or --shape/--value)") from error
    sizes = tried[0] if len(tried) == 1 else f"{len(tried)} sizes, from {tried[0]} to {tried[-1]}"
    long = [f"{name}={size}" for name, size in dims.items() if SEQUENCE_DIM.search(name.lower()) and size > 16]
    limit = (f"If {', '.join(long)} is past what the model supports (a position table or a fixed window), use a "
             "smaller size. ") if long else ""
    raise InputError(
        f"the original model {source.label} fails in onnxruntime on generated inputs{given} (tried {sizes}): "
        f"{_first_line(error)}. {limit}graphopt cannot tell which inputs it accepts: give input shapes with --shape "
        f"NAME=1x512, set scalar inputs with --value NAME=VALUE (e.g. a sample rate), or pass real inputs with "
        f"--inputs FILE.npz. The model's inputs: {_inputs_text(specs)}"
    ) from error


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


def parse_shape_options(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["input=1x512", "sr="]`` -> ``{"input": (1, 512), "sr": ()}``: whole
    input shapes, dims joined by ``x`` as trtexec and Polygraphy write them
    (an empty shape is a scalar); several items may share one argument,
    separated by commas.

    Raises:
        InputError: an item not of the form NAME=DIMxDIM..., a name given
            twice, or a dim of size 0.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for arg in items or []:
        for item in filter(None, (part.strip() for part in arg.split(","))):
            name, sep, text = item.rpartition("=")
            parts = [p.strip() for p in text.lower().split("x")] if text.strip() else []
            if not sep or not name or not all(p.isdigit() for p in parts):
                raise InputError(f"--shape expects INPUT=SHAPE with dims joined by x (e.g. --shape input=1x512; "
                                 f"INPUT= for a scalar), got '{item}'")
            if name.strip() in shapes:
                raise InputError(f"--shape gives input '{name.strip()}' twice")
            if any(int(p) == 0 for p in parts):
                raise InputError(f"--shape {item}: a dim of size 0 makes an empty input, on which verification "
                                 "compares nothing; give sizes of at least 1 (e.g. --shape input=1x512)")
            shapes[name.strip()] = tuple(int(p) for p in parts)
    return shapes

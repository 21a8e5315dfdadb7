"""Optimization profiles: the min/opt/max shape of every dynamic input.

A TensorRT engine of a model with dynamic axes holds kernels for a range of
shapes per input, its optimization profile (TensorRT developer guide,
"Working with Dynamic Shapes"): ``min`` and ``max`` bound what the engine
accepts, ``opt`` is the shape kernels are tuned for. graphopt builds one
profile per engine from ``--shapes`` and, for the dims not given, from the
model's dim names (:data:`DEFAULT_RANGES`):

==============================================  =====  =====  =====
dim                                             min    opt    max
==============================================  =====  =====  =====
batch-like (name has ``batch``; a dynamic      1      1      8
axis 0 that no other rule matches)
sequence-like (``seq``, ``length``, ``len``,    1      128    512
``token``, ``time``, ``frames``)
spatial (``height``/``width``; unnamed axes 2   32     224    1024
and 3 of a 4-D float input: NCHW images)
anything else                                   1      1      1
==============================================  =====  =====  =====

Inputs that share a dim name share its range: ``--shapes input_ids=1x1:1x128:8x512``
also sets ``attention_mask``'s ``[batch, sequence]``. Anything else gets 1
(what graphopt's verification inputs use too) and a warning naming the dim.
The rules are tried in the table's order.
A model's position table may allow fewer than 512 positions (BERT-style
``position_embeddings``, GPT-2's ``wpe``; found by
:func:`graphopt.verify.tables.position_limit`): TensorRT for RTX would still
build such an engine (its shape checks run when the engine runs), but a run
past the table fails. So the default sequence range is capped at the table's
rows (opt too, when larger), with a warning, and a ``--shapes`` range past
the table is warned about. A dim named ``?`` counts as unnamed.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import onnx

from graphopt.errors import InputError

__all__ = ["ShapeRange", "Profile", "model_inputs", "parse_shapes", "make_profile", "DEFAULT_RANGES", "ModelInput"]

log = logging.getLogger(__name__)

DEFAULT_RANGES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("batch", (1, 1, 8)),
    ("sequence", (1, 128, 512)),
    ("spatial", (32, 224, 1024)),
)
"""Kind of dim -> (min, opt, max); see the module docstring for the kinds."""

_SEQUENCE = re.compile(r"seq|length|len\b|token|time|frames")
_SPATIAL = re.compile(r"height|width|^h$|^w$")


@dataclass(frozen=True)
class ShapeRange:
    """An input's ``min``/``opt``/``max`` shapes (tuples of ints, elements)."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        """``{"min": [...], "opt": [...], "max": [...]}``."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def text(self) -> str:
        """``1x1:1x128:8x512``, the ``--shapes`` syntax."""
        return ":".join("x".join(map(str, s)) for s in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class ModelInput:
    """A graph input of the ONNX model: name, dims (int, a dim name, or
    None for an unnamed dynamic dim) and numpy dtype."""

    name: str
    dims: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.dims)


@dataclass
class Profile:
    """One optimization profile.

    Attributes:
        shapes: input name -> its range, for every input of the model in
            graph order (static inputs too: min = opt = max).
        origin: input name -> ``"given"`` (``--shapes``), ``"derived"`` (dims
            from the defaults or shared names) or ``"static"``.
    """

    shapes: dict[str, ShapeRange] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Sidecar form: ``{input: {"min", "opt", "max", "origin"}}``."""
        return {name: {**r.to_dict(), "origin": self.origin[name]} for name, r in self.shapes.items()}


def model_inputs(model: onnx.ModelProto) -> list[ModelInput]:
    """The graph inputs that are not initializers.

    Raises:
        InputError: an input is not a tensor or declares no shape (its rank
            is unknown, so no profile can be made).
    """
    inits = {t.name for t in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        if not v.type.HasField("tensor_type"):
            raise InputError(f"input '{v.name}' is not a tensor; TensorRT engines take tensor inputs only")
        tt = v.type.tensor_type
        if not tt.HasField("shape"):
            raise InputError(f"input '{v.name}' declares no shape, so its rank is unknown; give the model a "
                             "shaped input (e.g. re-export it with dynamic_axes) before building an engine")
        dims = tuple(_dim(d) for d in tt.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.dtype("float32")
        out.append(ModelInput(v.name, dims, np.dtype(dtype)))
    return out


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    """A static size, a dim name, or None (unnamed, ``?``, or negative)."""
    if d.HasField("dim_value") and d.dim_value >= 0:
        return d.dim_value
    return d.dim_param if d.dim_param not in ("", "?") else None


def _dims(text: str, item: str) -> tuple[int, ...]:
    if text == "":
        return ()
    parts = text.lower().split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--shapes: '{text}' in '{item}' is not a shape; write dims joined by x, e.g. 1x128")
    return tuple(int(p) for p in parts)


def parse_shapes(items: Iterable[str] | None) -> dict[str, ShapeRange]:
    """``["input_ids=1x1:1x128:8x512", "mask=1x128"]`` -> ranges by name.

    Each item is ``NAME=MIN:OPT:MAX`` or ``NAME=SHAPE`` (min = opt = max);
    several items may share one argument, separated by commas.

    Raises:
        InputError: bad syntax, ranks that differ between min/opt/max, a dim
            where min <= opt <= max does not hold, or a name given twice.
    """
    out: dict[str, ShapeRange] = {}
    for arg in items or []:
        for item in filter(None, (s.strip() for s in arg.split(","))):
            name, sep, spec = item.rpartition("=")
            if not sep or not name:
                raise InputError(f"--shapes expects NAME=MIN:OPT:MAX or NAME=SHAPE (e.g. input_ids=1x1:1x128:8x512), "
                                 f"got '{item}'")
            parts = spec.split(":")
            if len(parts) not in (1, 3):
                raise InputError(f"--shapes: '{item}' has {len(parts)} shapes; give one (all three equal) or "
                                 "three (min:opt:max)")
            shapes = [_dims(p.strip(), item) for p in parts]
            if len(parts) == 1:
                shapes *= 3
            if len({len(s) for s in shapes}) != 1:
                raise InputError(f"--shapes: min, opt and max of '{name}' have different ranks in '{item}'")
            for axis, (lo, mid, hi) in enumerate(zip(*shapes)):
                if not lo <= mid <= hi:
                    raise InputError(f"--shapes: axis {axis} of '{name}' has min {lo}, opt {mid}, max {hi}; "
                                     "TensorRT needs min <= opt <= max")
            if name in out:
                raise InputError(f"--shapes gives input '{name}' twice")
            out[name] = ShapeRange(*shapes)
    return out


def _kind(inp: ModelInput, axis: int, dim: str | None) -> str:
    name = (dim or "").lower()
    if "batch" in name or (dim is None and axis == 0):
        return "batch"
    if _SEQUENCE.search(name):
        return "sequence"
    image = len(inp.dims) == 4 and np.issubdtype(inp.dtype, np.floating) and axis >= 2
    if _SPATIAL.search(name) or image:
        return "spatial"
    if axis == 0:  # an exporter's own name for axis 0 (p2o.DynamicDimension.0): the batch
        return "batch"
    return "other"


def make_profile(model: onnx.ModelProto, given: dict[str, ShapeRange] | None = None) -> Profile:
    """The optimization profile for ``model``: ``given`` ranges, then
    shared dim names, then :data:`DEFAULT_RANGES`.

    Raises:
        InputError: a given name is not an input (the inputs are listed), a
            given rank differs from the input's, a given range contradicts a
            static dim, or two inputs sharing a dim name get different
            ranges for it.
    """
    given = dict(given or {})
    inputs = model_inputs(model)
    by_name = {i.name: i for i in inputs}
    for name in given:
        if name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise InputError(f"--shapes names '{name}', which is not an input of the model.{hint} "
                             f"Inputs: {', '.join(by_name) or '(none)'}")
    bound: dict[str, tuple[tuple[int, int, int], str]] = {}  # dim name -> (range, input that set it)
    for name, r in given.items():
        inp = by_name[name]
        if len(r.min) != len(inp.dims):
            raise InputError(f"--shapes gives '{name}' {len(r.min)} dims, but the input has rank {len(inp.dims)} "
                             f"{_describe(inp)}")
        for axis, dim in enumerate(inp.dims):
            triple = (r.min[axis], r.opt[axis], r.max[axis])
            if isinstance(dim, int):
                if triple != (dim, dim, dim):
                    raise InputError(f"--shapes gives axis {axis} of '{name}' {triple[0]}:{triple[1]}:{triple[2]}, "
                                     f"but the model fixes it to {dim} {_describe(inp)}")
            elif dim is not None:
                if dim in bound and bound[dim][0] != triple:
                    other = bound[dim]
                    raise InputError(f"inputs '{other[1]}' and '{name}' share dim '{dim}', but --shapes gives it "
                                     f"{':'.join(map(str, other[0]))} and {':'.join(map(str, triple))}")
                bound[dim] = (triple, name)
    profile = Profile()
    defaults = dict(DEFAULT_RANGES)
    table = _position_table(model)
    if table is not None:
        lo, mid, hi = defaults["sequence"]
        if hi > table.rows:
            defaults["sequence"] = (min(lo, table.rows), min(mid, table.rows), table.rows)
        for dim, (triple, name) in bound.items():
            if _SEQUENCE.search(dim.lower()) and triple[2] > table.rows:
                log.warning("--shapes gives dim '%s' (input '%s') a max of %d, but the model's position table %s "
                            "has %d rows: runs past %d will fail", dim, name, triple[2], table.name, table.rows,
                            table.rows)
    for inp in inputs:
        if inp.name in given:
            profile.shapes[inp.name], profile.origin[inp.name] = given[inp.name], "given"
            continue
        triples = []
        for axis, dim in enumerate(inp.dims):
            if isinstance(dim, int):
                triples.append((dim, dim, dim))
            elif dim is not None and dim in bound:
                triples.append(bound[dim][0])
            else:
                kind = _kind(inp, axis, dim)
                triple = defaults.get(kind, (1, 1, 1))
                if kind == "sequence" and table is not None and dict(DEFAULT_RANGES)["sequence"][2] > table.rows:
                    log.warning("input '%s' axis %d (%s): the model's position table %s has %d rows, so the default "
                                "sequence range %s is capped at %d; give --shapes %s=MIN:OPT:MAX to choose",
                                inp.name, axis, dim or "unnamed", table.name, table.rows,
                                ":".join(map(str, dict(DEFAULT_RANGES)["sequence"])), table.rows, inp.name)
                if kind == "other":
                    log.warning("input '%s' axis %d (%s) matches no default rule: fixed to 1 in the optimization "
                                "profile; give --shapes %s=MIN:OPT:MAX to make it dynamic",
                                inp.name, axis, dim or "unnamed", inp.name)
                if dim is not None:
                    bound[dim] = (triple, inp.name)
                triples.append(triple)
        r = ShapeRange(*(tuple(t[i] for t in triples) for i in range(3)))
        profile.shapes[inp.name] = r
        profile.origin[inp.name] = "derived" if inp.dynamic else "static"
    return profile


def _position_table(model: onnx.ModelProto) -> Any:
    """The model's position table (:func:`graphopt.verify.tables.position_limit`)."""
    from graphopt.verify.tables import position_limit

    return position_limit(model)


def _describe(inp: ModelInput) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in inp.dims) + "]"

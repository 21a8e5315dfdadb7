"""Input generation and validation for running ONNX models in onnxruntime.

:func:`generate_inputs` draws inputs that a model can actually run on: token ids
inside the vocabulary, attention masks of ones, position ids counting up, dynamic
dims bound to stated sizes. :func:`check_inputs` validates user-provided inputs
against a model's declared input signature before onnxruntime sees them, so a
mistake is reported by input name with expected vs got instead of as an
onnxruntime stack trace.

Both work on the ``onnx.ModelProto`` structure only; initializer *data* is never
read (only their dims), so a model loaded with ``load_external_data=False`` is
enough.
"""

from __future__ import annotations

import ast
import difflib
import logging
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from graphopt.errors import InputError, LoadError
from graphopt.verify.tables import GraphIndex as _GraphIndex

logger = logging.getLogger(__name__)

__all__ = [
    "DIM_DEFAULTS",
    "Growth",
    "InputSpec",
    "check_inputs",
    "generate_inputs",
    "input_specs",
    "model_dim_names",
    "numpy_dtype",
    "resolve_shape",
]

#: Sizes for symbolic dims that ``dims`` does not bind, matched in order against
#: the lower-cased dim name with :func:`re.search`; first match wins, and a name
#: that matches nothing gets 1. Batch-like dims get 1 (the cheapest valid run),
#: sequence-like dims 16 (long enough to exercise attention, masking and
#: position tables, short enough to keep verification fast), spatial dims 64
#: (a 64x64 image survives the stride-32 downsampling of common CNNs).
SPATIAL_DEFAULT = 64
"""Height/width of an NCHW float input whose spatial dims are unnamed: a
multiple of 32, as detection backbones (PaddleOCR's DBNet) need."""

DIM_DEFAULTS: tuple[tuple[str, int], ...] = (
    (r"batch", 1),
    (r"seq|length|len\b|token|time|frames", 16),
    (r"height|width|^h$|^w$", 64),
)

_FLOAT8_AND_BF16 = {
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
}


@dataclass(frozen=True)
class InputSpec:
    """A graph input as declared by the model.

    Attributes:
        name: the input's name.
        elem_type: ONNX ``TensorProto.DataType`` code (e.g. 1 = FLOAT, 7 = INT64).
        dims: one entry per axis: an ``int`` for a static size, a ``str`` for a
            symbolic ``dim_param`` (possibly an expression such as
            ``"past_sequence_length + 1"``), ``None`` for an unnamed dynamic dim.
            ``None`` for the whole tuple when the model declares no shape (rank
            unknown).
    """

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype onnxruntime expects for this input."""
        return numpy_dtype(self.elem_type, self.name)

    def describe(self) -> str:
        """``dtype[dim, ...]`` as text, e.g. ``int64[batch, 128]``."""
        dims = "?" if self.dims is None else ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{onnx.TensorProto.DataType.Name(self.elem_type).lower()}[{dims}]"


def numpy_dtype(elem_type: int, name: str = "") -> np.dtype:
    """The numpy dtype for an ONNX tensor element type (bfloat16 and float8 map to
    the ``ml_dtypes`` types that onnx uses).

    Raises:
        InputError: the element type has no numpy equivalent (e.g. UNDEFINED).
    """
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"input {name!r} has ONNX element type {elem_type}, which has no numpy "
            "equivalent; graphopt cannot feed it"
        ) from e


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's runtime inputs in declaration order.

    Graph inputs that are also initializers (IR < 4 style, or overridable
    weights) are left out: onnxruntime uses the initializer when they are not fed.
    So are sequence, optional and map inputs: they cannot be generated, only
    given (``--inputs`` as ONNX backend-test ``input_N.pb`` files,
    :func:`graphopt.verify.readers.read_inputs`); running without them fails in
    :func:`graphopt.verify.runtime.run_model` with a message that says so
    (:func:`graphopt.verify.runtime.split_inputs` lists them).
    """
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        if vi.type.WhichOneof("value") not in (None, "tensor_type"):
            continue  # sequence / optional / map: given, never generated (see the docstring)
        tt = vi.type.tensor_type
        dims: tuple[int | str | None, ...] | None = None
        if tt.HasField("shape"):
            dims = tuple(_dim(d) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, tt.elem_type, dims))
    return specs


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    kind = d.WhichOneof("value")
    if kind == "dim_value":
        # Some exporters (PaddlePaddle's paddle2onnx) write -1 for a dynamic dim.
        return int(d.dim_value) if d.dim_value >= 0 else None
    if kind == "dim_param" and d.dim_param and d.dim_param != "?":
        return d.dim_param
    return None


def _names_in(param: str) -> list[str]:
    """The dim names a ``dim_param`` refers to: itself, or the identifiers of an
    arithmetic expression (``"past_sequence_length + 1"``)."""
    expr = _parse_expr(param)
    if expr is None:
        return [param]
    return [n.id for n in ast.walk(expr) if isinstance(n, ast.Name)]


def _parse_expr(param: str) -> ast.expr | None:
    """Parse ``param`` as an arithmetic expression over names and ints, or None
    when it is a plain name or not such an expression."""
    if param.isidentifier():
        return None
    try:
        tree = ast.parse(param, mode="eval")
    except SyntaxError:
        return None
    allowed = (ast.Expression, ast.BinOp, ast.Name, ast.Constant, ast.Load,
               ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div)  # fmt: skip
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            return None
        if isinstance(node, ast.Constant) and not isinstance(node.value, int):
            return None
    return tree.body


def _eval_expr(expr: ast.expr, values: Mapping[str, int]) -> int:
    if isinstance(expr, ast.Constant):
        return int(expr.value)
    if isinstance(expr, ast.Name):
        return values[expr.id]
    assert isinstance(expr, ast.BinOp)
    a, b = _eval_expr(expr.left, values), _eval_expr(expr.right, values)
    if isinstance(expr.op, ast.Add):
        return a + b
    if isinstance(expr.op, ast.Sub):
        return a - b
    if isinstance(expr.op, ast.Mult):
        return a * b
    return a // b


def model_dim_names(model: onnx.ModelProto) -> list[str]:
    """Sorted names of the symbolic dims of the model's inputs (names inside
    ``dim_param`` expressions included): the names that ``dims`` may bind."""
    names: set[str] = set()
    for spec in input_specs(model):
        for d in spec.dims or ():
            if isinstance(d, str):
                names.update(_names_in(d))
    return sorted(names)


def default_dim(name: str) -> int:
    """The size an unbound symbolic dim gets, by :data:`DIM_DEFAULTS`."""
    lowered = name.lower()
    for pattern, size in DIM_DEFAULTS:
        if re.search(pattern, lowered):
            return size
    return 1


@dataclass(frozen=True)
class Growth:
    """Larger sizes for the dims nobody bound, for a model that rejects the
    defaults (a streaming audio model whose signal must be >= its window).

    Attributes:
        batch: the size of batch-like free dims: named ``*batch*``, an
            unnamed axis 0, or the only dynamic axis (not the last) of an input
            of rank >= 3 whose other dims are static (a recurrent state
            ``[2, ?, 128]``, LSTM ``h0 [layers, ?, hidden]``).
        size: the size of every other free dim (at least its default).
    """

    batch: int
    size: int


def _batch_like(dims: tuple[int | str | None, ...], axis: int) -> bool:
    """An unnamed dim that is probably the batch (rules in :class:`Growth`)."""
    if axis == 0:
        return True
    dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int)]
    return len(dims) >= 3 and dynamic == [axis] and axis != len(dims) - 1


def resolve_shape(spec: InputSpec, dims: Mapping[str, int], grow: Growth | None = None) -> tuple[int, ...]:
    """The concrete shape to generate for ``spec``.

    Static dims are kept; a symbolic dim takes ``dims[name]``, else
    :func:`default_dim`; an expression ``dim_param`` is evaluated over those
    values; an unnamed dynamic dim is 1, except the height and width of a
    rank-4 float input (NCHW image), which get :data:`SPATIAL_DEFAULT` when
    unnamed or named by no rule (e.g. ``p2o.DynamicDimension.1``). With
    ``grow``, the dims that ``dims`` leaves free (unnamed, or named and
    unbound) take ``grow.batch`` when batch-like, else the larger of
    ``grow.size`` and their default.

    Raises:
        InputError: the input has no declared shape (rank unknown), or an
            expression evaluates to a negative size.
    """
    if spec.dims is None:
        raise InputError(
            f"input {spec.name!r} declares no shape, so its rank is unknown; "
            "provide inputs explicitly (--inputs file.npz)"
        )
    shape = []
    image = len(spec.dims) == 4 and np.issubdtype(spec.dtype, np.floating)
    for i, d in enumerate(spec.dims):
        spatial = image and i >= 2  # NCHW height/width (PaddlePaddle and TF exports leave them unnamed)
        if isinstance(d, int):
            shape.append(d)
        elif d is None:
            default = SPATIAL_DEFAULT if spatial else 1
            if grow is not None:
                default = grow.batch if _batch_like(spec.dims, i) and not spatial else max(default, grow.size)
            shape.append(default)
        elif grow is not None and d not in dims and _parse_expr(d) is None:
            shape.append(grow.batch if "batch" in d.lower() else max(default_dim(d), grow.size))
        else:
            expr = _parse_expr(d)
            if expr is None:
                if d in dims:
                    shape.append(dims[d])
                elif spatial and not any(re.search(p, d.lower()) for p, _ in DIM_DEFAULTS):
                    shape.append(SPATIAL_DEFAULT)
                else:
                    shape.append(default_dim(d))
                continue
            values = {n: dims[n] if n in dims else default_dim(n) for n in _names_in(d)}
            size = _eval_expr(expr, values)
            if size < 0:
                raise InputError(
                    f"input {spec.name!r}: dim {d!r} evaluates to {size} with {values}; "
                    "bind its names with dims= to sizes that make it non-negative"
                )
            shape.append(size)
    return tuple(shape)


# ---------------------------------------------------------------------------
# generation


def _as_proto(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise LoadError(f"cannot read ONNX model {str(model)!r}: {e}") from e


def _check_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> None:
    names = model_dim_names(model)
    unknown = sorted(set(dims) - set(names))
    if unknown:
        specs = input_specs(model)
        unnamed = any(d is None for s in specs for d in s.dims or ())
        listed = ", ".join(names) if names else (
            "none (their dynamic dims are unnamed)" if unnamed else "none: every input dim is static")
        hint = ("; size an unnamed dim by giving its input's whole shape (--shape INPUT=AxB; shapes= in Python). "
                "The inputs: " + ", ".join(f"{s.name}: {s.describe()}" for s in specs)) if unnamed else ""
        close = [m for u in unknown for m in difflib.get_close_matches(u, names, n=1)]
        if close:
            hint += f" (did you mean {', '.join(repr(c) for c in close)}?)"
        raise InputError(
            f"dims {unknown} name no dim of the model's inputs; the model's dim names are: {listed}{hint}"
        )
    for name, size in dims.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
            raise InputError(f"dim {name!r} must be a non-negative integer, got {size!r}")


def generate_inputs(
    model: onnx.ModelProto | str | Path,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    values: Mapping[str, float | int | bool] | None = None,
    grow: Growth | None = None,
    given: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """Generate one set of inputs that the model can run on.

    Shapes come from :func:`resolve_shape`: static dims as declared, symbolic
    dims from ``dims`` (e.g. ``{"batch": 1, "sequence": 128}``) or else
    :data:`DIM_DEFAULTS` (batch 1, sequence/length 16, height/width 64, other
    names 1), unnamed dynamic dims 1. Values, by input (name matched
    case-insensitively):

    ========================  ===================================================
    name contains ``mask``    ones (for any dtype; bool ``True``): attend to all.
                              For float masks ones is right both for
                              multiplicative masks and for additive ones (a
                              constant added to every score leaves softmax as is)
    ``position_ids``          ``arange`` along the last axis (int dtypes), wrapped
                              into the position table when one is found
    ``token_type_ids`` /      uniform in ``[0, rows)`` of its embedding table
    ``segment_ids``           when found, else zeros
    other integer inputs      uniform in ``[0, vocab)`` where ``vocab`` is the row
                              count of the constant table the ids index: the
                              input is followed forward through index-preserving
                              ops (Cast, Unsqueeze, Reshape, Flatten, ...) to a
                              ``Gather`` (on the gather axis) or
                              ``com.microsoft.EmbedLayerNormalization``; the
                              smallest such table wins. No table: ``[0, 2)``,
                              except uint8 ``[0, 256)`` and int8 ``[-128, 128)``
                              (image / quantized data)
    bool                      ``True``
    float (16/32/64, bf16,    standard normal, drawn in float64 and cast
    float8), complex
    ========================  ===================================================

    Args:
        model: the model (only its structure is read); a path is loaded without
            external data.
        dims: sizes for symbolic dim names.
        seed: seed for ``numpy.random.default_rng``; the same seed gives the same
            inputs.
        shapes: whole shapes by input name (``--shape input=1x512``), used as
            given; a named dim of such an input binds that name for the other
            inputs unless ``dims`` binds it. Checked against the model by
            :func:`graphopt.verify.feed.check_request`.
        values: a fill value by input name (``--value sr=16000``): the input
            is ``numpy.full(shape, value)`` in its dtype.
        grow: larger sizes for free dims (:func:`resolve_shape`), as
            :func:`graphopt.verify.feed.runnable_inputs` tries them.
        given: names of inputs the caller has values for (``--inputs``):
            not generated and left out of the result (a string input among
            them is no error).

    Returns:
        ``{input name: array}`` in the model's input order, dtypes exactly as
        declared (bfloat16/float8 as ``ml_dtypes`` arrays).

    Raises:
        InputError: a ``dims`` entry names no dim of the model (the message lists
            the model's dim names), a size is not a non-negative int, an input has
            no declared shape, or an input is a string/non-tensor; a ``shapes``
            or ``values`` key is not an input.
        LoadError: ``model`` is a path that does not hold an ONNX model.
    """
    proto = _as_proto(model)
    dims = dict(dims or {})
    _check_dims(proto, dims)
    specs = input_specs(proto)
    if not specs:
        logger.info("model has no inputs; nothing to generate")
        return {}
    shapes, values = dict(shapes or {}), dict(values or {})
    unknown = sorted((set(shapes) | set(values)) - {s.name for s in specs})
    if unknown:
        raise InputError(f"{unknown} name no input of the model; its inputs are: {', '.join(s.name for s in specs)}")
    for spec in specs:  # a named dim of a shaped input binds that name for the others
        for d, size in zip(spec.dims or (), shapes.get(spec.name, ())):
            if isinstance(d, str) and d.isidentifier():
                dims.setdefault(d, size)
    index = _GraphIndex(proto.graph)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name in given:
            continue
        shape = tuple(shapes[spec.name]) if spec.name in shapes else resolve_shape(spec, dims, grow)
        if spec.name in values:
            out[spec.name] = np.full(shape, values[spec.name]).astype(spec.dtype)
        else:
            out[spec.name] = _generate_one(spec, shape, index, rng)
        logger.debug("generated input %s: %s %s", spec.name, out[spec.name].dtype, shape)
    return out


def _generate_one(spec: InputSpec, shape: tuple[int, ...], index: _GraphIndex, rng: np.random.Generator) -> np.ndarray:
    dtype = spec.dtype
    name = spec.name.lower()
    if spec.elem_type == onnx.TensorProto.STRING:
        raise InputError(f"input {spec.name!r} is a string tensor; graphopt cannot generate it: provide inputs")
    if "mask" in name:
        return np.ones(shape, dtype=dtype)
    if dtype == np.bool_:
        return np.ones(shape, dtype=np.bool_)
    if dtype.kind in "iu":
        vocab = index.vocab_size(spec.name)
        if "position" in name and shape:
            last = shape[-1]
            ids = np.broadcast_to(np.arange(last, dtype=np.int64), shape)
            if vocab is not None and last > vocab:
                logger.warning(
                    "input %s: %d positions but the position table has %d rows; wrapping",
                    spec.name, last, vocab,
                )  # fmt: skip
                ids = ids % vocab
            return np.ascontiguousarray(ids).astype(dtype)
        if ("token_type" in name or "segment" in name) and vocab is None:
            return np.zeros(shape, dtype=dtype)
        if vocab is not None:
            if vocab <= 0:
                raise InputError(f"input {spec.name!r} indexes an empty table; provide inputs")
            low, high = 0, vocab
        elif dtype == np.uint8:
            low, high = 0, 256
        elif dtype == np.int8:
            low, high = -128, 128
        else:
            low, high = 0, 2
        logger.debug("input %s: ids in [%d, %d)", spec.name, low, high)
        return rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    # float16/32/64; bfloat16 and float8 are ml_dtypes types of kind "V"
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------
# validation


def check_inputs(model: onnx.ModelProto | str | Path, inputs: Mapping[str, object]) -> None:
    """Validate user-provided inputs against the model's declared inputs.

    Checked, in this order: every name is a model input; every model input is
    given; each value is a numpy array (or array-like) whose dtype equals the
    declared element type exactly, whose rank equals the declared rank, and
    whose size on each static axis equals the declared size. Symbolic dims are
    not checked against each other: a symbolic dim with different sizes across
    inputs is logged as a warning (onnxruntime may still run it).

    Raises:
        InputError: naming the input and giving expected vs got.
    """
    proto = _as_proto(model)
    specs = {s.name: s for s in input_specs(proto)}
    unknown = [n for n in inputs if n not in specs]
    if unknown:
        raise InputError(
            f"input {unknown[0]!r} is not an input of the model; the model's inputs are: "
            + ", ".join(f"{s.name}: {s.describe()}" for s in specs.values())
        )
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise InputError(
            f"input {missing[0]!r} ({specs[missing[0]].describe()}) is missing; "
            f"given: {', '.join(inputs) or 'nothing'}"
        )
    bound: dict[str, tuple[int, str]] = {}
    for name, value in _items(inputs):
        spec = specs[name]
        expected = spec.dtype
        if spec.elem_type == onnx.TensorProto.STRING and value.dtype.kind in "OSU":
            pass  # onnxruntime takes str, bytes and object arrays for string tensors
        elif value.dtype != expected:
            raise InputError(
                f"input {name!r}: expected dtype {expected} ({spec.describe()}), got {value.dtype}; "
                f"convert it, e.g. array.astype(np.{expected})"
            )
        if spec.dims is None:
            continue
        if value.ndim != len(spec.dims):
            raise InputError(
                f"input {name!r}: expected rank {len(spec.dims)} ({spec.describe()}), "
                f"got rank {value.ndim} with shape {tuple(value.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.dims, value.shape)):
            if isinstance(want, int) and want != got:
                raise InputError(
                    f"input {name!r}: axis {axis} must be {want} ({spec.describe()}), "
                    f"got shape {tuple(value.shape)}"
                )
            if isinstance(want, str) and want.isidentifier():
                prev = bound.setdefault(want, (got, name))
                if prev[0] != got:
                    logger.warning(
                        "dim %r is %d in input %s but %d in input %s", want, prev[0], prev[1], got, name
                    )


def _items(inputs: Mapping[str, object]) -> Iterator[tuple[str, np.ndarray]]:
    for name, value in inputs.items():
        yield name, value if isinstance(value, np.ndarray) else np.asarray(value)


def needs_ort_value(elem_type: int) -> bool:
    """True for element types that onnxruntime's Python API cannot take from or
    return as numpy arrays (bfloat16, float8): those go through ``OrtValue``."""
    return elem_type in _FLOAT8_AND_BF16

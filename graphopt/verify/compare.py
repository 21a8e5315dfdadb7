"""Compare two models' outputs in onnxruntime.

Tolerance (``numpy.allclose`` / ``numpy.testing.assert_allclose`` semantics, the
first model's output ``a`` being the reference, the second's ``b``): an element
passes when ``|a - b| <= atol + rtol * |a|``. An output passes when every element
passes, NaNs sit at the same positions in both, and infinities are the same
signed infinities at the same positions. Defaults per reference dtype
(:data:`DEFAULT_TOLERANCES`): float32/float64/complex ``rtol = atol = 1e-5`` (the
"exact pass" bar of the design), float16 ``1e-3``, bfloat16 ``1e-2``, float8
``0.125`` (one unit in the last place), integers and bool exact. An explicit
``rtol``/``atol`` applies to every output, except that an output of a float
type narrower than float32 (float16, bfloat16, float8) is never held to less
than its dtype's default: explicit tolerances are written for float32 (the
context's ``verify.rtol`` is 1e-5), and one rounding in a different order
already moves a float16 result by one unit in the last place (2**-11
relative), which a float32-sized bar would call a failure. ``atol_scale`` (0 unless given)
raises the absolute floor to ``atol_scale * max|a|`` per output: a tolerance
relative to the output's scale, for rewrites that change the order of float
sums (fusions), whose rounding error is proportional to the magnitudes
summed, not to each element.

Reported per output, computed in float64 over the positions where both are
finite:

- ``max_abs_err = max |a - b|``
- ``max_rel_err = max |a - b| / max(|a|, atol)``: relative error, with ``atol``
  as the floor of the denominator so that elements near zero do not blow it up
  (floor ``finfo(float64).tiny`` when ``atol`` is 0)
- ``scale_rel_err = max |a - b| / max |a|``: the error relative to the
  output's scale (normwise, infinity norm)
- ``tol_ratio = max |a - b| / (atol + rtol * |a|)``: the share of the tolerance
  used; the output's elements pass iff it is ``<= 1``
- ``cosine``: cosine similarity of the flattened outputs
- ``argmax_agreement``: for float outputs of rank >= 2 whose last axis is longer
  than 1 (logits), the fraction of positions whose argmax over the last axis
  agrees (top-1 agreement); informational, not a pass criterion.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt.errors import InputError, VerificationError
from graphopt.verify.inputs import generate_inputs
from graphopt.verify.readers import read_inputs
from graphopt.verify.runtime import ModelLike, resolve_model, run_model, split_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TOLERANCES",
    "CompareReport",
    "OutputComparison",
    "compare",
    "compare_outputs",
    "signature_differences",
    "tolerances_for",
]

#: ``(rtol, atol)`` by reference dtype name; floats not listed use float32's.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-5, 1e-5),
    "float32": (1e-5, 1e-5),
    "float16": (1e-3, 1e-3),
    "bfloat16": (1e-2, 1e-2),
    "float8_e4m3fn": (0.125, 0.125),
    "float8_e4m3fnuz": (0.125, 0.125),
    "float8_e5m2": (0.25, 0.25),
    "float8_e5m2fnuz": (0.25, 0.25),
}
_EXACT = (0.0, 0.0)


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind in "fc" or dtype.name.startswith(("bfloat", "float"))


def tolerances_for(dtype: np.dtype, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    """Effective ``(rtol, atol)`` for an output of ``dtype``: the explicit values
    where given, else :data:`DEFAULT_TOLERANCES` (exact for integers, bool,
    strings). For floats narrower than float32 (float16, bfloat16, float8)
    each explicit value is raised to at least the dtype's default (module doc)."""
    if _is_float(dtype):
        default = DEFAULT_TOLERANCES.get(dtype.name, DEFAULT_TOLERANCES["float32"])
    else:
        default = _EXACT
    r = default[0] if rtol is None else rtol
    t = default[1] if atol is None else atol
    if _is_float(dtype) and dtype.kind != "c" and dtype.itemsize < 4:
        r, t = max(r, default[0]), max(t, default[1])
    return r, t


@dataclass
class OutputComparison:
    """The comparison of one output (formulas in the module doc).

    Attributes:
        name: output name.
        dtype, shape: the reference's numpy dtype name and shape.
        got_dtype, got_shape: the same for the compared output.
        max_abs_err, max_rel_err, tol_ratio: errors, in the output's units
            (abs) or dimensionless; ``inf`` when the shapes differ.
        cosine: cosine similarity in [-1, 1]; None for empty outputs or
            different shapes.
        argmax_agreement: fraction in [0, 1] of last-axis argmax positions that
            agree; None when the output does not look like logits.
        mismatched: number of elements outside tolerance, non-finite mismatches
            included.
        nonfinite_mismatch: elements where NaN/Inf placement differs.
        rtol, atol: the tolerances applied.
        ok: the output passes.
        reason: why it fails, "" when it passes.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    got_dtype: str
    got_shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float
    tol_ratio: float
    cosine: float | None
    argmax_agreement: float | None
    mismatched: int
    nonfinite_mismatch: int
    rtol: float
    atol: float
    ok: bool
    reason: str = ""
    scale_rel_err: float = 0.0


@dataclass
class CompareReport:
    """The result of comparing two models (or two sets of outputs).

    Attributes:
        outputs: one :class:`OutputComparison` per output present in both, in the
            reference's output order.
        signature_diffs: differences in input/output names, order, dtypes or
            declared dims; any entry fails the comparison.
        inputs: the inputs used, as ``{name: "dtype[shape]"}``.
        generated_inputs: the inputs were generated (with ``seed``), not given.
        seed: the generation seed.
    """

    outputs: list[OutputComparison] = field(default_factory=list)
    signature_diffs: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    generated_inputs: bool = False
    seed: int | None = None

    @property
    def ok(self) -> bool:
        """No signature difference and every output within tolerance."""
        return not self.signature_diffs and all(o.ok for o in self.outputs)

    @property
    def worst(self) -> float:
        """The largest ``max_rel_err`` over the outputs (0.0 when there are none)."""
        return max((o.max_rel_err for o in self.outputs), default=0.0)

    @property
    def worst_output(self) -> OutputComparison | None:
        """The output that is furthest outside its tolerance: failing outputs
        first, then by ``tol_ratio``; None when there are no outputs."""
        return max(self.outputs, key=lambda o: (not o.ok, o.tol_ratio), default=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps(..., allow_nan=False)`` works):
        non-finite floats are written as the strings ``"inf"``, ``"-inf"``,
        ``"nan"``; shapes as lists."""
        worst = self.worst_output
        return _jsonable(
            {
                "ok": self.ok,
                "worst_rel_err": self.worst,
                "worst_output": worst.name if worst else None,
                "signature_diffs": list(self.signature_diffs),
                "inputs": dict(self.inputs),
                "generated_inputs": self.generated_inputs,
                "seed": self.seed,
                "outputs": [asdict(o) for o in self.outputs],
            }
        )

    def summary(self) -> str:
        """Plain-text table, one line per output, for logs and the CLI."""
        lines = [f"signature: {d}" for d in self.signature_diffs]
        for o in self.outputs:
            top1 = "" if o.argmax_agreement is None else f" top1={o.argmax_agreement:.4f}"
            cos = "n/a" if o.cosine is None else f"{o.cosine:.6f}"
            status = "ok" if o.ok else f"FAIL ({o.reason})"
            lines.append(
                f"{o.name}: {o.dtype}{list(o.shape)} max_abs={o.max_abs_err:.3g} max_rel={o.max_rel_err:.3g} "
                f"scale_rel={o.scale_rel_err:.3g} cos={cos}{top1} {status}"
            )
        return "\n".join(lines)

    def raise_for_failure(self) -> None:
        """Raise when the comparison failed; do nothing when it passed.

        Raises:
            VerificationError: naming the signature differences, or the worst
                output with its errors and tolerance, and the other failing
                outputs.
        """
        if self.ok:
            return
        parts = []
        if self.signature_diffs:
            parts.append("signatures differ: " + "; ".join(self.signature_diffs))
        failing = [o for o in self.outputs if not o.ok]
        worst = self.worst_output
        if failing and worst is not None:
            parts.append(
                f"output {worst.name!r} differs: {worst.reason} (max_abs_err={worst.max_abs_err:.6g}, "
                f"max_rel_err={worst.max_rel_err:.6g}, rtol={worst.rtol:g}, atol={worst.atol:g}, "
                f"{worst.mismatched} of {math.prod(worst.shape)} elements outside)"
            )
            others = [o.name for o in failing if o is not worst]
            if others:
                parts.append(f"also failing: {', '.join(others)}")
        raise VerificationError("; ".join(parts))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------------------
# per-output comparison


def _compare_arrays(
    name: str, a: np.ndarray, b: np.ndarray, rtol: float | None, atol: float | None, atol_scale: float = 0.0
) -> OutputComparison:
    a, b = np.asarray(a), np.asarray(b)
    r, t = tolerances_for(a.dtype, rtol, atol)
    if atol_scale and a.dtype.kind in "fc" and a.size:
        finite_a = np.abs(a[np.isfinite(a)]) if a.dtype.kind == "f" else np.abs(a)
        if finite_a.size:
            t = max(t, atol_scale * float(finite_a.max()))
    base: dict[str, Any] = dict(
        name=name, dtype=a.dtype.name, shape=tuple(a.shape), got_dtype=b.dtype.name,
        got_shape=tuple(b.shape), rtol=r, atol=t,
    )  # fmt: skip
    if a.shape != b.shape:
        return OutputComparison(
            **base, max_abs_err=math.inf, max_rel_err=math.inf, scale_rel_err=math.inf, tol_ratio=math.inf, cosine=None,
            argmax_agreement=None, mismatched=max(a.size, b.size), nonfinite_mismatch=0, ok=False,
            reason=f"shape {tuple(a.shape)} vs {tuple(b.shape)}",
        )  # fmt: skip
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":
        mismatched = int(np.count_nonzero(a != b))
        err = 0.0 if mismatched == 0 else math.inf
        return OutputComparison(
            **base, max_abs_err=err, max_rel_err=err, scale_rel_err=err, tol_ratio=err, cosine=None,
            argmax_agreement=None,
            mismatched=mismatched, nonfinite_mismatch=0, ok=mismatched == 0 and a.dtype == b.dtype,
            reason="" if mismatched == 0 else f"{mismatched} elements differ",
        )  # fmt: skip
    wide = np.complex128 if a.dtype.kind == "c" or b.dtype.kind == "c" else np.float64
    x, y = a.astype(wide), b.astype(wide)
    nan_x, nan_y = np.isnan(x), np.isnan(y)
    finite = np.isfinite(x) & np.isfinite(y)
    nonfinite = int(np.count_nonzero((nan_x != nan_y) | (~finite & ~nan_x & ~nan_y & (x != y))))
    diff = np.abs(x[finite] - y[finite])
    mag = np.abs(x[finite])
    allowed = t + r * mag
    outside = int(np.count_nonzero(diff > allowed))
    max_abs = float(diff.max(initial=0.0))
    max_rel = float((diff / np.maximum(mag, t if t > 0 else np.finfo(np.float64).tiny)).max(initial=0.0))
    scale = float(mag.max(initial=0.0))
    scale_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(allowed > 0, diff / np.where(allowed > 0, allowed, 1.0), np.where(diff > 0, np.inf, 0.0))
    tol_ratio = float(ratios.max(initial=0.0))
    reasons = []
    if a.dtype != b.dtype:
        reasons.append(f"dtype {a.dtype.name} vs {b.dtype.name}")
    if nonfinite:
        reasons.append(f"NaN/Inf at different positions in {nonfinite} elements")
    if outside:
        reasons.append(f"{outside} elements outside |a-b| <= {t:g} + {r:g}*|a|")
    return OutputComparison(
        **base, max_abs_err=max_abs, max_rel_err=max_rel, scale_rel_err=scale_rel, tol_ratio=tol_ratio,
        cosine=cosine(x[finite], y[finite]), argmax_agreement=_argmax_agreement(a.dtype, x, y),
        mismatched=outside + nonfinite, nonfinite_mismatch=nonfinite, ok=not reasons, reason="; ".join(reasons),
    )  # fmt: skip


def cosine(x: np.ndarray, y: np.ndarray) -> float | None:
    """Cosine similarity of flattened ``x`` and ``y`` (|<x, y>| for complex),
    scaled first so that the float64 sums cannot overflow; 1.0 when both are
    zero, 0.0 when one is, None when empty."""
    if x.size == 0:
        return None
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()))
    if scale == 0.0:
        return 1.0
    x, y = x.ravel() / scale, y.ravel() / scale
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 0.0
    dot = np.vdot(x, y)
    value = abs(dot) if np.iscomplexobj(dot) else float(dot)
    return float(min(1.0, max(-1.0, value / (nx * ny))))



def _argmax_agreement(dtype: np.dtype, x: np.ndarray, y: np.ndarray) -> float | None:
    if not _is_float(dtype) or dtype.kind == "c" or x.ndim < 2 or x.shape[-1] <= 1 or x.size == 0:
        return None
    return float(np.mean(np.argmax(x, axis=-1) == np.argmax(y, axis=-1)))


def _flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Sequence outputs (lists from onnxruntime) become ``name[i]`` entries; a
    ``name[len]`` entry holds the length so that length changes are caught;
    an empty optional output becomes a ``name[empty]`` entry."""
    flat: dict[str, Any] = {}
    for name, value in outputs.items():
        if value is None:  # an empty optional
            flat[f"{name}[empty]"] = np.asarray(True)
        elif isinstance(value, (list, tuple)):
            flat[f"{name}[len]"] = np.asarray(len(value), dtype=np.int64)
            for i, item in enumerate(value):
                flat[f"{name}[{i}]"] = item
        else:
            flat[name] = value
    return flat


def compare_outputs(
    ref: Mapping[str, Any],
    got: Mapping[str, Any],
    rtol: float | None = None,
    atol: float | None = None,
    signature: Sequence[str] = (),
    atol_scale: float = 0.0,
) -> CompareReport:
    """Compare precomputed outputs (e.g. :func:`run_model` results) by name.

    Args:
        ref: reference outputs ``{name: array}`` (the ``a`` of the formulas).
        got: outputs to check (``b``).
        rtol, atol: tolerances; None takes the per-dtype defaults.
        signature: signature differences found elsewhere (see
            :func:`signature_differences`), added to the report.
        atol_scale: absolute floor relative to each output's largest
            magnitude (module doc); 0 keeps ``atol`` as it is.

    Returns:
        A :class:`CompareReport`. Outputs missing on either side, or in a
        different order, are recorded as signature differences.
    """
    ref, got = _flatten_outputs(ref), _flatten_outputs(got)
    diffs = list(signature)
    for name in ref:
        if name not in got:
            diffs.append(f"output {name!r} is missing from the second model")
    for name in got:
        if name not in ref:
            diffs.append(f"output {name!r} is only in the second model")
    common_ref = [n for n in ref if n in got]
    common_got = [n for n in got if n in ref]
    if common_ref != common_got:
        diffs.append(f"output order differs: {common_ref} vs {common_got}")
    report = CompareReport(signature_diffs=_unique(diffs))
    for name in common_ref:
        report.outputs.append(_compare_arrays(name, ref[name], got[name], rtol, atol, atol_scale))
    return report


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------
# model signatures


def _value_info_sig(vi: onnx.ValueInfoProto) -> tuple[int, tuple[int | str | None, ...] | None]:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        kind = d.WhichOneof("value")
        dims.append(int(d.dim_value) if kind == "dim_value" else (d.dim_param or None) if kind else None)
    return tt.elem_type, tuple(dims)


def _sig_diffs(kind: str, a: Sequence[onnx.ValueInfoProto], b: Sequence[onnx.ValueInfoProto]) -> list[str]:
    diffs = []
    sig_a = {vi.name: _value_info_sig(vi) for vi in a}
    sig_b = {vi.name: _value_info_sig(vi) for vi in b}
    for name in sig_a:
        if name not in sig_b:
            diffs.append(f"{kind} {name!r} is missing from the second model")
    for name in sig_b:
        if name not in sig_a:
            diffs.append(f"{kind} {name!r} is only in the second model")
    for name, (type_a, dims_a) in sig_a.items():
        if name not in sig_b:
            continue
        type_b, dims_b = sig_b[name]
        if type_a != type_b:
            names = onnx.TensorProto.DataType.Name
            diffs.append(f"{kind} {name!r} dtype {names(type_a).lower()} vs {names(type_b).lower()}")
        if dims_a is None or dims_b is None:
            continue
        if len(dims_a) != len(dims_b):
            diffs.append(f"{kind} {name!r} rank {len(dims_a)} vs {len(dims_b)}")
            continue
        for axis, (da, db) in enumerate(zip(dims_a, dims_b)):
            if da is not None and db is not None and da != db:
                diffs.append(f"{kind} {name!r} axis {axis} is {da!r} vs {db!r}")
    order_a = [n for n in sig_a if n in sig_b]
    order_b = [n for n in sig_b if n in sig_a]
    if order_a != order_b:
        diffs.append(f"{kind} order differs: {order_a} vs {order_b}")
    return diffs


def signature_differences(model_a: onnx.ModelProto, model_b: onnx.ModelProto) -> list[str]:
    """Differences between two models' declared runtime inputs and graph outputs:
    names, order, element types, ranks and dims (static sizes and symbolic names;
    an unnamed dynamic dim matches anything). Empty when the signatures agree."""
    inputs_a = _runtime_inputs(model_a)
    inputs_b = _runtime_inputs(model_b)
    return _sig_diffs("input", inputs_a, inputs_b) + _sig_diffs("output", model_a.graph.output, model_b.graph.output)


def _runtime_input_names(model: onnx.ModelProto) -> list[str]:
    return [vi.name for vi in _runtime_inputs(model)]


def _describe(value: Any) -> str:
    """``dtype[shape]`` of an input; ``sequence(n)`` / ``optional(empty)`` /
    ``map(n)`` for the structured ones."""
    if value is None:
        return "optional(empty)"
    if isinstance(value, (list, tuple)):
        return f"sequence({len(value)})"
    if isinstance(value, dict):
        return f"map({len(value)})"
    return f"{value.dtype.name}{list(value.shape)}"


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


# ---------------------------------------------------------------------------
# the entry point


def compare(
    model_a: ModelLike,
    model_b: ModelLike,
    inputs: Mapping[str, np.ndarray] | str | Path | None = None,
    dims: Mapping[str, int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    providers: Sequence[str] | None = None,
    seed: int = 0,
    optimization_level: str = "basic",
    atol_scale: float = 0.0,
    reference: Mapping[str, Any] | None = None,
) -> CompareReport:
    """Run two models in onnxruntime on the same inputs and compare their outputs.

    ``model_a`` is the reference. Each model may be a path (run from disk, so
    external data and models over 2 GB work), an ``onnx.ModelProto``, or a
    graphopt IR model (converted with ``graphopt.ir.to_proto``).

    Args:
        inputs: ``{name: array}``, or a path read with
            :func:`graphopt.verify.readers.read_inputs`, or None to generate them
            from ``model_a`` with :func:`graphopt.verify.inputs.generate_inputs`.
        dims: sizes for symbolic dims when generating.
        rtol, atol: tolerances (module doc); None takes the per-dtype defaults.
        providers: onnxruntime execution providers; default CPU.
        seed: input generation seed.
        optimization_level: onnxruntime graph optimization level for both
            sessions (``"disable"``, ``"basic"``, ``"extended"``, ``"all"``).
        atol_scale: absolute floor relative to each output's scale (module doc).
        reference: ``model_a``'s outputs on exactly ``inputs``, already
            computed with the same providers and optimization level (e.g. the
            :class:`~graphopt.verify.feed.Feed` that found runnable inputs):
            ``model_a`` is then not run again.

    Returns:
        A :class:`CompareReport`; call ``raise_for_failure()`` to turn a failure
        into an exception. Signature differences (inputs or outputs differing in
        name, order, dtype or declared dims) fail it; when the second model needs
        an input the first does not have, it is not run and the report holds the
        differences only. Inputs the second model dropped are left out of its feed.

    Raises:
        InputError: the inputs do not match the reference model, ``dims`` names
            an unknown dim, or the inputs file cannot be read.
        LoadError: a model cannot be read, or onnxruntime refuses it (its message
            is included).
        ModelRunError: onnxruntime fails while running a model.
    """
    source_a, source_b = resolve_model(model_a), resolve_model(model_b)
    structured = split_inputs(source_a.proto)[1]
    generated = inputs is None
    if inputs is None:
        feed = generate_inputs(source_a.proto, dims, seed)
    elif isinstance(inputs, (str, Path)):
        feed = read_inputs(inputs, model=source_a.proto)
    else:
        feed = {name: value if name in structured else np.asarray(value) for name, value in inputs.items()}
    signature = signature_differences(source_a.proto, source_b.proto)
    described = {name: _describe(value) for name, value in feed.items()}
    seed_used = seed if generated else None
    ref = dict(reference) if reference is not None else run_model(source_a, feed, providers, optimization_level)
    names_b = _runtime_input_names(source_b.proto)
    try:
        if any(name not in feed for name in names_b):
            raise InputError("it needs inputs the first model does not have")
        got = run_model(source_b, {n: feed[n] for n in names_b}, providers, optimization_level)
    except InputError as e:
        logger.warning("not running the second model: %s", e)
        signature = _unique([*signature, f"the second model cannot run on the first model's inputs: {e}"])
        return CompareReport(signature_diffs=signature, inputs=described, generated_inputs=generated, seed=seed_used)
    report = compare_outputs(ref, got, rtol, atol, signature, atol_scale)
    report.inputs, report.generated_inputs, report.seed = described, generated, seed_used
    logger.info("compare: %s", "ok" if report.ok else "FAILED")
    logger.debug("compare details:\n%s", report.summary())
    return report

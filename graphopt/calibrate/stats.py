"""Per-channel activation statistics, streamed over calibration batches.

The numbers that structured pruning and low-rank factorization read from
calibration data, computed once and shared (DESIGN, "One calibration layer"):
for each requested value ``X`` (an internal activation, e.g. the input of a
MatMul ``[..., C]`` or of a Conv ``[N, C, H, W]``) with its channels on
``axis``, the rows are ``X`` with the channel axis moved last and every other
axis flattened (``[R, C]``), and :func:`collect_stats` accumulates in float64

- ``rows``: R, the number of rows seen (tokens, or ``N * H * W`` pixels);
- ``mean``, ``var`` (population variance, ddof 0): per channel, merged across
  batches with Chan et al.'s pairwise update of Welford's running moments, so
  no cancellation from ``E[x^2] - E[x]^2``;
- ``sq_sum``: ``||X_j||^2``, the squared column norm (Wanda's ``||X_j||_2``
  is its square root, :attr:`ChannelStats.norms`);
- ``abs_mean``: mean ``|x_j|`` (ASVD's activation magnitude);
- optionally ``gram``: ``X^T X`` (C x C, unnormalized sums; least-squares
  reconstruction, GPTQ-style Hessians, SVD-LLM whitening), only where asked
  (``8 C^2`` bytes per value);
- optionally cross products ``X^T Y`` with other values ``Y`` of the same
  model (e.g. a consumer's output), or of a *reference* model run on the same
  batches (``X_pruned^T X_unpruned``: reconstruction targets that undo error
  carried in from earlier layers, :func:`graphopt.calibrate.reconstruct.reconstruct`).

Activations come from onnxruntime with the values added as graph outputs of a
copy of the model (:func:`graphopt.calibrate.activations.activation_session`);
only one batch's activations are alive at a time.

A token mask (``mask="attention_mask"``, a graph input ``[N, T]`` matching the
activation's leading dims ``[N, T, C]``) drops padded rows. The MiniLM
calibration sets are one unpadded sentence per sample, where every row is a
real token and no mask is needed; padded batches need it.

Results are cached in a :class:`~graphopt.calibrate.cache.StatsCache` keyed by the model's content
fingerprint (:func:`model_fingerprint`), the calibration data object, the mask
and the request, so that pruning and low-rank (and a second pass over an
unchanged model) read the same numbers; :meth:`StatsCache.for_context` keeps
one in a :class:`~graphopt.passmanager.context.PassContext`'s analyses.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg.blas import dsyrk as _syrk

from graphopt import ir
from graphopt.calibrate.activations import activation_session, values_by_name
from graphopt.calibrate.cache import StatsCache, model_fingerprint
from graphopt.calibrate.data import CalibrationData, track
from graphopt.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "ChannelStats",
    "PairCosine",
    "StatRequest",
    "StatsCache",
    "collect_cosines",
    "collect_stats",
    "model_fingerprint",
]

_FLOAT_TYPES = ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16")


@dataclass(frozen=True)
class StatRequest:
    """What to accumulate for one value.

    Attributes:
        value: a float value of the model's main graph (node output or graph input).
        axis: the channel axis (``-1`` for a MatMul input ``[..., C]``, ``1``
            for a Conv input ``[N, C, H, W]``).
        gram: accumulate ``X^T X`` (C x C float64).
        cross: values ``Y`` of the same model whose ``X^T Y`` is accumulated
            (their channels on the same ``axis``; same number of rows as ``X``).
        cross_reference: values ``Y`` of the *reference* model (given to
            :func:`collect_stats`), run on the same batches: ``X^T Y_ref``.
    """

    value: str
    axis: int = -1
    gram: bool = False
    cross: tuple[str, ...] = ()
    cross_reference: tuple[str, ...] = ()

    def covers(self, other: StatRequest) -> bool:
        """Whether stats collected for ``self`` answer ``other`` too."""
        return (
            self.value == other.value
            and self.axis == other.axis
            and (self.gram or not other.gram)
            and set(other.cross) <= set(self.cross)
            and set(other.cross_reference) <= set(self.cross_reference)
        )


@dataclass(eq=False)
class ChannelStats:
    """Running per-channel statistics of one value (all float64).

    Attributes:
        value: the value's name.
        axis: its channel axis, as requested.
        rows: rows seen (tokens / pixels; masked rows excluded).
        mean: ``[C]`` per-channel mean.
        m2: ``[C]`` sum of squared deviations from the mean (``var * rows``).
        sq_sum: ``[C]`` ``sum_r x_rj^2`` = ``||X_j||_2^2``.
        abs_sum: ``[C]`` ``sum_r |x_rj|``.
        gram: ``[C, C]`` ``X^T X`` (sums, not divided by ``rows``), or None when not asked.
        cross: ``{Y name: [C, D] X^T Y}`` for same-model values.
        cross_reference: ``{Y name: [C, D] X^T Y_ref}`` for reference-model values.

    Objects returned by :func:`collect_stats` may be shared through a
    :class:`StatsCache`: read them, do not modify them.
    """

    value: str
    axis: int
    rows: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    sq_sum: np.ndarray | None = None
    abs_sum: np.ndarray | None = None
    gram: np.ndarray | None = None
    cross: dict[str, np.ndarray] = field(default_factory=dict)
    cross_reference: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """C, the channel count (0 before the first batch)."""
        return 0 if self.mean is None else int(self.mean.shape[0])

    @property
    def var(self) -> np.ndarray:
        """``[C]`` population variance (ddof 0) per channel."""
        return self.m2 / max(self.rows, 1)

    @property
    def abs_mean(self) -> np.ndarray:
        """``[C]`` mean ``|x_j|``."""
        return self.abs_sum / max(self.rows, 1)

    @property
    def norms(self) -> np.ndarray:
        """``[C]`` ``||X_j||_2`` (Wanda's activation norm)."""
        return np.sqrt(self.sq_sum)

    _pending: list[tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]] = field(
        default_factory=list, repr=False
    )
    _pending_rows: int = field(default=0, repr=False)
    _upper: np.ndarray | None = field(default=None, repr=False)

    def update(
        self,
        x: np.ndarray,
        gram: bool = False,
        cross: Mapping[str, np.ndarray] | None = None,
        cross_reference: Mapping[str, np.ndarray] | None = None,
        flush_rows: int = 2048,
    ) -> None:
        """Add rows ``x`` (``[R, C]`` float64) to the running statistics.

        Means and ``m2`` merge at once by Chan, Golub & LeVeque's pairwise
        update of Welford's moments (exact in exact arithmetic, stable in
        float64). The Gram and cross products are rank-R updates that are
        cheap only for many rows at a time: rows (and the paired ``cross`` /
        ``cross_reference`` rows ``{Y name: [R, D]}``) are buffered until
        ``flush_rows`` (at least C) accumulate, then added in one BLAS call
        (``dsyrk`` for the Gram, its upper triangle). Call :meth:`finish`
        before reading ``gram`` or the cross products.
        """
        n_b = x.shape[0]
        if self.mean is None:
            c = x.shape[1]
            self.mean, self.m2 = np.zeros(c), np.zeros(c)
            self.sq_sum, self.abs_sum = np.zeros(c), np.zeros(c)
            if gram:
                self._upper = np.zeros((c, c), order="F")
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        m2_b = np.square(x - mean_b).sum(axis=0)
        total = self.rows + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + np.square(delta) * (self.rows * n_b / total)
        self.rows = total
        self.sq_sum += np.einsum("rc,rc->c", x, x)
        self.abs_sum += np.abs(x).sum(axis=0)
        if self._upper is not None or cross or cross_reference:
            self._pending.append((x, dict(cross or {}), dict(cross_reference or {})))
            self._pending_rows += n_b
            if self._pending_rows >= max(flush_rows, x.shape[1]):
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = np.concatenate([p[0] for p in self._pending]) if len(self._pending) > 1 else self._pending[0][0]
        if self._upper is not None:
            # x.T is a Fortran-ordered [C, R] view: dsyrk(trans=0) adds x.T @ x to the upper triangle, no copy
            self._upper = _syrk(1.0, x.T, beta=1.0, c=self._upper, trans=0, lower=0, overwrite_c=1)
        for index, table in ((1, self.cross), (2, self.cross_reference)):
            for name in self._pending[0][index]:
                y = np.concatenate([p[index][name] for p in self._pending])
                product = x.T @ y
                if name in table:
                    table[name] += product
                else:
                    table[name] = product
        self._pending, self._pending_rows = [], 0

    def finish(self) -> ChannelStats:
        """Flush buffered rows and fill ``gram`` (symmetric ``[C, C]``); returns ``self``."""
        self._flush()
        if self._upper is not None:
            upper = np.triu(self._upper)
            self.gram = upper + np.triu(upper, 1).T
        return self


@dataclass
class PairCosine:
    """Running mean of the row-wise cosine between two values of equal shape
    (ShortGPT's Block Influence reads ``1 - mean_cosine`` of a block's input
    and output hidden states).

    Attributes:
        first, second: the value names.
        rows: rows (tokens) seen.
        cos_sum: sum over rows of ``<a_r, b_r> / (||a_r|| ||b_r||)`` (a zero row counts as cosine 1).
    """

    first: str
    second: str
    rows: int = 0
    cos_sum: float = 0.0

    @property
    def mean_cosine(self) -> float:
        """The cosine averaged over rows."""
        return self.cos_sum / max(self.rows, 1)


def _as_model(model: ir.Model | str | Path, role: str) -> ir.Model:
    if isinstance(model, (str, Path)):
        return ir.load(model)
    if not isinstance(model, ir.Model):
        raise InputError(
            f"the {role} must be a graphopt.ir Model or a path to an .onnx file, got {type(model).__name__}"
        )
    return model


def _check_values(model: ir.Model, names: Iterable[str], role: str) -> None:
    values = values_by_name(model.graph)
    for name in names:
        if name not in values:
            some = ", ".join(sorted(values)[:8])
            raise InputError(
                f"cannot collect statistics of {name!r}: it is not a value of the {role}'s main graph "
                f"(values include: {some}, ...); name a node output or graph input"
            )
        dtype = values[name].dtype
        if dtype is not None and dtype.name not in _FLOAT_TYPES:
            raise InputError(
                f"cannot collect statistics of {name!r}: its element type is {dtype.name.lower()}; "
                "only float activations have channel statistics"
            )


class _Runs:
    """One onnxruntime session per model, fed the same batches in lockstep."""

    def __init__(self, models: Sequence[tuple[ir.Model, list[str]]]) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="graphopt-stats-"))
        self._sessions = []
        try:
            for i, (model, names) in enumerate(models):
                folder = self._workdir / str(i)
                folder.mkdir()
                session, _ = activation_session(model, names, folder)
                self._sessions.append((session, list(dict.fromkeys(names)), {x.name for x in session.get_inputs()}))
        except BaseException:
            self.close()
            raise

    def run(self, batch: Mapping[str, np.ndarray], index: int) -> list[dict[str, np.ndarray]]:
        from graphopt.verify.runtime import ModelRunError

        out = []
        for session, names, feeds in self._sessions:
            feed = {k: np.asarray(v) for k, v in batch.items() if k in feeds}
            try:
                results = session.run(names, feed) if names else []
            except Exception as e:  # onnxruntime's own exception types
                raise ModelRunError(f"onnxruntime failed on calibration batch {index}: {e}") from e
            out.append(dict(zip(names, results)))
        return out

    def close(self) -> None:
        self._sessions = []
        shutil.rmtree(self._workdir, ignore_errors=True)


def _batches(data: Iterable[Mapping[str, np.ndarray]], progress: bool, what: str) -> Iterator[Mapping[str, np.ndarray]]:
    if isinstance(data, CalibrationData):
        return data.iter(progress=progress, description=what)
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    return track(data, total, what, progress)


def _rows(array: np.ndarray, axis: int, name: str, index: int, keep: np.ndarray | None) -> np.ndarray:
    """``array`` as float64 rows ``[R, C]`` (channel axis last), masked rows dropped."""
    if array.dtype.kind not in "fV":
        raise InputError(f"cannot collect statistics of {name!r}: onnxruntime returns it as {array.dtype}")
    if array.ndim == 0 or not -array.ndim <= axis < array.ndim:
        raise InputError(
            f"statistics of {name!r}: channel axis {axis} is out of range for its shape {array.shape} "
            f"(batch {index}); use -1 for [..., C] and 1 for [N, C, H, W]"
        )
    moved = np.moveaxis(array, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1]).astype(np.float64)
    if keep is not None:
        if keep.size != rows.shape[0] or axis % array.ndim != array.ndim - 1:
            raise InputError(
                f"statistics of {name!r}: the token mask of batch {index} has shape {keep.shape}, but the value's "
                f"shape is {array.shape} with channels on axis {axis}; a mask applies to [N, T, C] activations "
                "whose leading dims match it: leave mask unset for this value"
            )
        rows = rows[keep.reshape(-1)]
    if not np.isfinite(rows).all():
        raise InputError(
            f"statistics of {name!r}: batch {index} holds NaN or Inf activations; check the calibration inputs "
            "(ranges, dtypes) or the model"
        )
    return rows


def _mask_of(batch: Mapping[str, np.ndarray], mask: str | None, index: int) -> np.ndarray | None:
    if mask is None:
        return None
    if mask not in batch:
        raise InputError(
            f"token mask {mask!r} is not in calibration batch {index} (it holds {sorted(batch)}); "
            "name the graph input that carries the attention mask, or leave mask unset for unpadded data"
        )
    return np.asarray(batch[mask]) != 0


def collect_stats(
    model: ir.Model | str | Path,
    requests: Sequence[StatRequest | str],
    data: Iterable[Mapping[str, np.ndarray]],
    *,
    reference: ir.Model | str | Path | None = None,
    mask: str | None = None,
    cache: StatsCache | None = None,
    progress: bool = False,
    flush_rows: int = 2048,
) -> dict[str, ChannelStats]:
    """Stream per-channel statistics of activations over calibration batches.

    Runs ``model`` (and ``reference``, when a request reads it) once per batch
    in onnxruntime with the requested values as extra outputs; each batch's
    activations are reduced into running float64 sums and dropped.

    Args:
        model: a graphopt IR model (not modified) or a path to one.
        requests: :class:`StatRequest` per value, or plain value names
            (channels last, no Gram). A value may appear once.
        data: batches ``{graph input name: array}``, e.g. a
            :class:`~graphopt.calibrate.data.CalibrationData` (re-iterable).
        reference: a second model run on the same batches, whose values the
            requests' ``cross_reference`` read (the unpruned model).
        mask: a graph input name (e.g. ``"attention_mask"``, ``[N, T]``)
            whose zero entries drop the matching rows of ``[N, T, C]``
            activations; None keeps every row (unpadded data).
        cache: a :class:`StatsCache`; requests it covers are not recomputed.
        progress: a progress bar over batches on a terminal.
        flush_rows: rows buffered per value with a Gram or cross products
            before one BLAS update (at least C): memory ``8 * max(flush_rows, C)
            * (C + D)`` bytes per such value on top of the ``8 C^2`` Gram.

    Returns:
        ``{value: ChannelStats}`` in the order of ``requests``.

    Raises:
        InputError: a name is not a float value of the main graph, a value is
            requested twice, the channel axis is out of range or the channel
            count changes between batches, cross values have a different row
            count, the mask is missing or does not match, activations are not
            finite, ``cross_reference`` without ``reference``, or ``data``
            holds no batch.
        ModelRunError: onnxruntime fails on a batch.
    """
    reqs = [StatRequest(r) if isinstance(r, str) else r for r in requests]
    seen_values: set[str] = set()
    for r in reqs:
        if not isinstance(r, StatRequest):
            raise InputError(f"a statistics request must be a value name or a StatRequest, got {type(r).__name__}")
        if r.value in seen_values:
            raise InputError(f"value {r.value!r} is requested twice; merge the requests into one StatRequest")
        seen_values.add(r.value)
        if r.cross_reference and reference is None:
            raise InputError(
                f"request for {r.value!r} reads reference values {list(r.cross_reference)}, but no reference "
                "model was given: pass reference=<the unpruned model>"
            )
    model = _as_model(model, "model")
    ref_model = _as_model(reference, "reference model") if reference is not None else None
    _check_values(model, [n for r in reqs for n in (r.value, *r.cross)], "model")
    if ref_model is not None:
        _check_values(ref_model, [n for r in reqs for n in r.cross_reference], "reference model")

    result: dict[str, ChannelStats] = {}
    todo = reqs
    keys: dict[str, tuple] = {}
    if cache is not None:
        fp = model_fingerprint(model)
        reads_ref = ref_model is not None and any(r.cross_reference for r in reqs)
        ref_fp = model_fingerprint(ref_model) if reads_ref else None
        todo = []
        for r in reqs:
            keys[r.value] = cache._key(fp, ref_fp if r.cross_reference else None, data, mask, r.value)
            hit = cache.lookup(keys[r.value], r)
            if hit is not None:
                result[r.value] = hit
            else:
                todo.append(r)
        if not todo:
            log.info("activation statistics of %d value(s) from the cache", len(reqs))
            return {r.value: result[r.value] for r in reqs}

    if int(flush_rows) != flush_rows or flush_rows < 1:
        raise InputError(f"flush_rows must be a positive integer, got {flush_rows!r}")
    fresh = _collect(model, ref_model, todo, data, mask, progress, int(flush_rows))
    for r in todo:
        result[r.value] = fresh[r.value]
        if cache is not None:
            cache.store(keys[r.value], r, fresh[r.value])
    return {r.value: result[r.value] for r in reqs}


def _collect(
    model: ir.Model,
    ref_model: ir.Model | None,
    reqs: Sequence[StatRequest],
    data: Iterable[Mapping[str, np.ndarray]],
    mask: str | None,
    progress: bool,
    flush_rows: int,
) -> dict[str, ChannelStats]:
    names = list(dict.fromkeys(n for r in reqs for n in (r.value, *r.cross)))
    ref_names = list(dict.fromkeys(n for r in reqs for n in r.cross_reference))
    models = [(model, names)] + ([(ref_model, ref_names)] if ref_names else [])
    stats = {r.value: ChannelStats(r.value, r.axis) for r in reqs}
    runs = _Runs(models)
    count = 0
    try:
        for index, batch in enumerate(_batches(data, progress, "activation statistics")):
            keep = _mask_of(batch, mask, index)
            acts = runs.run(batch, index)
            own, ref = acts[0], (acts[1] if len(acts) > 1 else {})
            for r in reqs:
                s = stats[r.value]
                x = _rows(own[r.value], r.axis, r.value, index, keep)
                if s.mean is not None and x.shape[1] != s.channels:
                    raise InputError(
                        f"statistics of {r.value!r}: batch {index} has {x.shape[1]} channels on axis {r.axis}, "
                        f"earlier batches {s.channels}; the channel axis must have a fixed size"
                    )
                crosses: list[dict[str, np.ndarray]] = [{}, {}]
                for table, source, ynames in ((crosses[0], own, r.cross), (crosses[1], ref, r.cross_reference)):
                    for yname in ynames:
                        y = _rows(source[yname], r.axis, yname, index, keep)
                        if y.shape[0] != x.shape[0]:
                            raise InputError(
                                f"cross statistics {r.value!r} x {yname!r}: batch {index} gives {x.shape[0]} and "
                                f"{y.shape[0]} rows; both values need the same rows (tokens) on axis {r.axis}"
                            )
                        table[yname] = y
                s.update(x, gram=r.gram, cross=crosses[0], cross_reference=crosses[1], flush_rows=flush_rows)
            count += 1
            del acts, own, ref
    finally:
        runs.close()
    if count == 0:
        raise InputError("calibration data holds no batch; give at least one sample")
    for s in stats.values():
        s.finish()
    grams = sum(1 for r in reqs if r.gram)
    log.info("activation statistics of %d value(s) (%d with Gram) over %d batch(es)", len(reqs), grams, count)
    return stats


def collect_cosines(
    model: ir.Model | str | Path,
    pairs: Sequence[tuple[str, str]],
    data: Iterable[Mapping[str, np.ndarray]],
    *,
    axis: int = -1,
    mask: str | None = None,
    progress: bool = False,
) -> dict[tuple[str, str], PairCosine]:
    """The row-wise cosine of value pairs of equal shape, averaged over
    calibration rows (tokens): the input of ShortGPT's Block Influence
    (:func:`graphopt.calibrate.importance.block_influence`), with
    ``(block input, block output)`` hidden states as the pairs.

    Args:
        model: a graphopt IR model (not modified) or a path to one.
        pairs: ``(first, second)`` value names, e.g. the residual stream before
            and after a Transformer block.
        data: calibration batches.
        axis: the hidden (feature) axis; rows are every other position.
        mask: a token mask graph input, as in :func:`collect_stats`.
        progress: a progress bar over batches on a terminal.

    Returns:
        ``{(first, second): PairCosine}`` in the order of ``pairs``.

    Raises:
        InputError: unknown or non-float names, shapes that differ within a
            pair, a bad mask, non-finite activations, no batch.
        ModelRunError: onnxruntime fails on a batch.
    """
    model = _as_model(model, "model")
    pairs = [tuple(p) for p in pairs]
    names = list(dict.fromkeys(n for p in pairs for n in p))
    _check_values(model, names, "model")
    result = {p: PairCosine(p[0], p[1]) for p in pairs}
    runs = _Runs([(model, names)])
    count = 0
    try:
        for index, batch in enumerate(_batches(data, progress, "block influence")):
            keep = _mask_of(batch, mask, index)
            acts = runs.run(batch, index)[0]
            for a_name, b_name in pairs:
                a = _rows(acts[a_name], axis, a_name, index, keep)
                b = _rows(acts[b_name], axis, b_name, index, keep)
                if a.shape != b.shape:
                    raise InputError(
                        f"block influence {a_name!r} -> {b_name!r}: shapes {acts[a_name].shape} and "
                        f"{acts[b_name].shape} differ; give the residual stream before and after one block"
                    )
                entry = result[(a_name, b_name)]
                entry.cos_sum += float(_row_cosines(a, b).sum())
                entry.rows += a.shape[0]
            count += 1
            del acts
    finally:
        runs.close()
    if count == 0:
        raise InputError("calibration data holds no batch; give at least one sample")
    return result


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair of ``[R, C]`` float64 arrays; a pair with a zero row counts as 1."""
    dot = np.einsum("rc,rc->r", a, b)
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out = np.ones_like(dot)
    nz = norm > 0
    out[nz] = dot[nz] / norm[nz]
    return out

"""Per-tensor range observers for INT8 calibration.

An observer sees a tensor's values one calibration batch at a time
(:meth:`Observer.update`) and keeps only running statistics: a min and max, or
a fixed-size histogram. :meth:`Observer.range` gives the range ``(rmin, rmax)``
to quantize with; it always contains zero (QDQ needs 0.0 exactly
representable). NaN and +-Inf are ignored and counted in ``nonfinite``.

Methods (``make_observer(method)``):

==============  ============================================================
``minmax``      running min / max, or ORT's moving average of per-batch
                min / max (``averaging=True``)
``percentile``  the ``percentile``-th percentile of ``|x|`` (symmetric) or the
                two tails of ``x`` (asymmetric), as onnxruntime's
                ``PercentileCalibrater``
``entropy``     the clip threshold minimizing KL(P || Q) between the ``|x|``
                histogram and its quantized form: TensorRT's calibration
                (Migacz, "8-bit Inference with TensorRT", GTC 2017)
``mse``         the clip range minimizing the expected quantization MSE over
                the histogram, as NVIDIA pytorch-quantization's ``mse``
                calibrator (``_compute_amax_mse``)
==============  ============================================================

Symmetry: a tensor that never had a negative value (ReLU, Sigmoid outputs)
gets ``[0, t]`` from every method. A signed tensor gets ``[-t, t]`` from the
histogram methods unless ``symmetric=False``; minmax is asymmetric unless
``symmetric=True``.

Streaming histogram: bins are aligned at 0 with a power-of-2 width ``w``
(bin ``k`` holds ``[k w, (k+1) w)``), chosen as the smallest power of 2 with
``max|x| <= num_bins * w``. When a batch exceeds the range, ``w`` doubles and
bins ``2j, 2j+1`` merge into ``j`` exactly, so the histogram after any
sequence of batches equals the one built from all values at once. Between
``num_bins / 2`` and ``num_bins`` bins span ``[0, max|x|]``.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from graphopt.errors import InputError

__all__ = [
    "EntropyObserver", "MSEObserver", "MinMaxObserver", "OBSERVERS", "Observer",
    "PercentileObserver", "make_observer",
]  # fmt: skip


class Observer:
    """Base class: running count, non-finite count and exact min / max.

    Attributes:
        method: the registered name (``minmax``, ``percentile``, ...).
        count: finite values seen so far.
        nonfinite: NaN / +-Inf values seen (and ignored).
    """

    method = ""

    def __init__(self) -> None:
        self.count = 0
        self.nonfinite = 0
        self.min = math.inf
        self.max = -math.inf
        self._cached: tuple[float, float] | None = None

    def update(self, array: object) -> None:
        """Add one batch of values.

        Args:
            array: any shape, any real float or int dtype (float16 / bfloat16
                are widened to float32). Only its finite values are used.

        Raises:
            InputError: the values are not real numbers (bool, complex, str).
        """
        x = np.asarray(array)
        if x.dtype.kind not in "fiuV" or x.dtype.kind == "V" and x.dtype.itemsize > 2:
            raise InputError(f"{self.method} observer: cannot observe values of dtype {x.dtype}; give a float tensor")
        x = x.reshape(-1)
        if x.dtype != np.float64:
            x = x.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
        if x.size == 0:
            return
        self.count += int(x.size)
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self._cached = None
        self._observe(x, lo, hi)

    def _observe(self, x: np.ndarray, lo: float, hi: float) -> None:
        """Update method state with finite, flat values ``x`` (min ``lo``, max ``hi``)."""

    def range(self) -> tuple[float, float]:
        """``(rmin, rmax)`` with ``rmin <= 0 <= rmax``, in the tensor's units;
        ``(0.0, 0.0)`` before any finite value was seen."""
        if self.count == 0:
            return 0.0, 0.0
        if self._cached is None:
            lo, hi = self._compute()
            self._cached = (min(float(lo), 0.0), max(float(hi), 0.0))
        return self._cached

    def _compute(self) -> tuple[float, float]:
        raise NotImplementedError

    @property
    def nonnegative(self) -> bool:
        """True when no negative value was seen (``[0, t]`` ranges)."""
        return self.min >= 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count}, range={self.range()})"


class MinMaxObserver(Observer):
    """Running min / max of the values.

    Args:
        averaging: instead of the global min / max, a moving average of each
            batch's min / max: ``m <- m + c (m_batch - m)``, the first batch
            taken as is (onnxruntime ``MinMaxCalibrater(moving_average=True)``).
        averaging_constant: ``c`` above, in ``(0, 1]`` (ORT's default 0.01).
        symmetric: ``[-m, m]`` with ``m = max(|min|, |max|)`` for signed tensors.

    Raises:
        InputError: ``averaging_constant`` outside ``(0, 1]``.
    """

    method = "minmax"

    def __init__(self, averaging: bool = False, averaging_constant: float = 0.01, symmetric: bool = False) -> None:
        super().__init__()
        if not 0.0 < averaging_constant <= 1.0:
            raise InputError(f"minmax: averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging, self.constant, self.symmetric = averaging, averaging_constant, symmetric
        self._avg: list[float] | None = None

    def _observe(self, x: np.ndarray, lo: float, hi: float) -> None:
        if self._avg is None:
            self._avg = [lo, hi]
        else:
            self._avg[0] += self.constant * (lo - self._avg[0])
            self._avg[1] += self.constant * (hi - self._avg[1])

    def _compute(self) -> tuple[float, float]:
        lo, hi = self._avg if self.averaging and self._avg is not None else (self.min, self.max)
        if self.symmetric and lo < 0.0:
            m = max(-lo, hi)
            return -m, m
        return lo, hi


class _HistogramObserver(Observer):
    """A streaming, 0-aligned, power-of-2-width histogram (module doc).

    ``counts[k + num_bins]`` holds bin ``k`` for ``k`` in ``[-num_bins, num_bins]``.
    """

    def __init__(self, num_bins: int = 2048, symmetric: bool = True) -> None:
        super().__init__()
        if int(num_bins) != num_bins or num_bins < 16:
            raise InputError(f"{self.method}: num_bins must be an integer >= 16, got {num_bins}")
        self.num_bins = int(num_bins)
        self.symmetric = symmetric
        self.width = 0.0  # 0 until a non-zero value is seen; zeros always land in bin 0
        self.counts = np.zeros(2 * self.num_bins + 1, dtype=np.int64)

    def _observe(self, x: np.ndarray, lo: float, hi: float) -> None:
        amax = max(-lo, hi)
        if amax > 0.0 and amax > self.num_bins * self.width:
            self._widen(amax)
        if self.width == 0.0:
            self.counts[self.num_bins] += x.size
            return
        if x.dtype == np.float32 and not 2.0**-126 <= self.width <= 2.0**100:
            x = x.astype(np.float64)  # keep the power-of-2 width exact
        k = np.floor(x / x.dtype.type(self.width)).astype(np.int64)
        np.clip(k, -self.num_bins, self.num_bins, out=k)
        self.counts += np.bincount(k + self.num_bins, minlength=self.counts.size)

    def _widen(self, amax: float) -> None:
        """Grow ``width`` to the smallest power of 2 with ``amax <= num_bins * width``."""
        target = 2.0 ** math.ceil(math.log2(amax / self.num_bins))
        if self.width == 0.0:
            self.width = target
            return
        if target <= self.width:
            return
        shift = min(63, round(math.log2(target) - math.log2(self.width)))  # bin k -> k // 2**shift
        k = np.arange(-self.num_bins, self.num_bins + 1, dtype=np.int64)
        merged = np.bincount((k >> shift) + self.num_bins, weights=self.counts, minlength=self.counts.size)
        self.counts = np.rint(merged).astype(np.int64)
        self.width = target

    def magnitude_histogram(self) -> tuple[np.ndarray, float]:
        """The histogram of ``|x|``: ``(counts, width)``, ``counts[i]`` holding
        ``[i w, (i+1) w)``, trimmed after the last non-empty bin (int64)."""
        n = self.num_bins
        folded = self.counts[n:].copy()
        folded[:n] += self.counts[:n][::-1]  # bin -k-1 of x is bin k of |x|
        return _trim(folded), self.width

    def signed_histogram(self) -> tuple[np.ndarray, int, float]:
        """``(counts, first_bin, width)``: bin ``i`` holds ``[(first_bin + i) w, ...)``."""
        nz = np.flatnonzero(self.counts)
        first, last = (int(nz[0]), int(nz[-1])) if nz.size else (self.num_bins, self.num_bins)
        return self.counts[first : last + 1], first - self.num_bins, self.width

    def _threshold(self) -> float:
        raise NotImplementedError

    def _compute(self) -> tuple[float, float]:
        if self.width == 0.0:
            return 0.0, 0.0
        t = min(self._threshold(), max(-self.min, self.max))
        if self.nonnegative:
            return 0.0, t
        return -t, t


def _trim(counts: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(counts)
    return counts[: int(nz[-1]) + 1] if nz.size else counts[:1]


def _quantile(counts: np.ndarray, first: int, width: float, q: float) -> float:
    """The ``q``-quantile (``0 <= q <= 1``) of a histogram, linear within the bin."""
    cum = np.cumsum(counts, dtype=np.float64)
    target = q * cum[-1]
    if abs(target - round(target)) < 1e-9 * cum[-1]:
        target = float(round(target))  # counts are integers: 0.01 * 1100 is 11, not 11.000000000000002
    i = min(int(np.searchsorted(cum, target)), counts.size - 1)
    before = cum[i - 1] if i > 0 else 0.0
    inside = (target - before) / counts[i] if counts[i] else 1.0
    return (first + i + min(max(inside, 0.0), 1.0)) * width


class PercentileObserver(_HistogramObserver):
    """Clip at a percentile of the value distribution.

    Args:
        percentile: in ``(0, 100]``; symmetric: the threshold ``t`` is the
            ``percentile``-th percentile of ``|x|`` and the range ``[-t, t]``
            (``[0, t]`` for non-negative tensors); asymmetric: the range is the
            ``(100 - p) / 2`` and ``100 - (100 - p) / 2`` percentiles of ``x``
            (onnxruntime ``PercentileCalibrater``).
        num_bins: histogram resolution (module doc); the result is exact to
            within one bin width, interpolated linearly inside the bin.
        symmetric: see ``percentile``.

    Raises:
        InputError: ``percentile`` outside ``(0, 100]``, ``num_bins < 16``.
    """

    method = "percentile"

    def __init__(self, percentile: float = 99.999, num_bins: int = 2048, symmetric: bool = True) -> None:
        if not 0.0 < percentile <= 100.0:
            raise InputError(f"percentile: percentile must be in (0, 100], got {percentile}")
        super().__init__(num_bins, symmetric)
        self.percentile = float(percentile)

    def _compute(self) -> tuple[float, float]:
        if self.symmetric or self.nonnegative or self.width == 0.0:
            return super()._compute()
        counts, first, width = self.signed_histogram()
        tail = (100.0 - self.percentile) / 200.0
        lo = max(_quantile(counts, first, width, tail), self.min)
        hi = min(_quantile(counts, first, width, 1.0 - tail), self.max)
        return lo, hi

    def _threshold(self) -> float:
        counts, width = self.magnitude_histogram()
        return _quantile(counts, 0, width, self.percentile / 100.0)


def _smooth(d: np.ndarray, inside: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Give each empty bin (of the first ``i`` per row) ``eps``, taken evenly
    from the non-empty ones (MXNet / onnxruntime ``smooth_distribution``); rows
    with no mass come back NaN."""
    zero = inside & (d == 0)
    n_zero = zero.sum(axis=1, keepdims=True)
    n_nonzero = inside.sum(axis=1, keepdims=True) - n_zero
    with np.errstate(divide="ignore", invalid="ignore"):
        eps1 = np.where(n_nonzero > 0, eps * n_zero / n_nonzero, np.nan)
    return d + eps * zero - eps1 * (inside & ~zero)


def entropy_threshold(counts: np.ndarray, num_quantized_bins: int = 128, stride: int = 1) -> int:
    """TensorRT's KL-divergence threshold search on a histogram of ``|x|``.

    For each candidate ``i`` (``num_quantized_bins, ..., len(counts)``, every
    ``stride``-th): P is ``counts[:i]`` with the clipped tail
    ``sum(counts[i:])`` added to its last bin; Q merges ``counts[:i]`` into
    ``num_quantized_bins`` groups (bin ``j`` into group
    ``j * num_quantized_bins // i``) and spreads each group's total evenly over
    the bins where P is non-zero. Both are smoothed (empty bins get 1e-4 of a
    count, as MXNet / onnxruntime), and the chosen ``i`` minimizes
    ``KL(P || Q) = sum P log(P / Q)`` over normalized P, Q (the last of equal
    minima). Bin 0 is first set to bin 1's count, so a ReLU's spike at zero
    does not dominate (as NVIDIA pytorch-quantization's
    ``_compute_amax_entropy``). Source: Migacz, "8-bit Inference with
    TensorRT", GTC 2017.

    Args:
        counts: 1-D int or float counts, bin ``j`` holding ``[j w, (j+1) w)``.

    Returns:
        the number of bins kept ``i``: the threshold is ``i * w``. All bins
        when there are at most ``num_quantized_bins``.
    """
    h = np.asarray(counts, dtype=np.float64).copy()
    n, nq = h.size, num_quantized_bins
    if n <= nq:
        return n
    h[0] = h[1]
    suffix = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # suffix[i] = sum(h[i:])
    candidates = np.arange(nq, n + 1, stride)
    idx = np.arange(n)
    best, best_i = math.inf, n
    for chunk in np.array_split(candidates, max(1, candidates.size // 64)):
        c = chunk[:, None]
        rows = np.arange(chunk.size)
        inside = idx[None, :] < c  # (C, n): the first i bins of each candidate
        p = np.where(inside, h[None, :], 0.0)
        flat = (rows[:, None] * (nq + 1) + np.where(inside, idx[None, :] * nq // c, nq)).ravel()
        sums = np.bincount(flat, weights=p.ravel(), minlength=chunk.size * (nq + 1))
        p[rows, chunk - 1] += suffix[chunk]
        nonzero = np.bincount(flat, weights=(p > 0).ravel(), minlength=chunk.size * (nq + 1))
        per = np.divide(sums, nonzero, out=np.zeros_like(sums), where=nonzero > 0)
        q = np.where(p > 0, per[flat].reshape(p.shape), 0.0)
        p, q = _smooth(p, inside), _smooth(q, inside)
        p /= p.sum(axis=1, keepdims=True)
        q /= q.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(inside & (p > 0), p * np.log(p / q), 0.0).sum(axis=1)
        kl[~np.isfinite(kl)] = math.inf  # no mass left in Q
        for i, d in zip(chunk.tolist(), kl.tolist()):
            if d <= best:
                best, best_i = d, i
    return int(best_i)


class EntropyObserver(_HistogramObserver):
    """Clip where the quantized histogram loses least information (KL divergence).

    Args:
        num_bins: histogram resolution (module doc; TensorRT uses 2048).
        num_quantized_bins: levels of the quantized distribution (128: int8
            magnitudes, as TensorRT); at most ``num_bins // 2``.
        stride: test every ``stride``-th candidate threshold (faster, coarser).

    The range is ``[-t, t]`` (``[0, t]`` for non-negative tensors) with ``t``
    from :func:`entropy_threshold` on the ``|x|`` histogram.

    Raises:
        InputError: bad ``num_bins`` / ``num_quantized_bins`` / ``stride``.
    """

    method = "entropy"

    def __init__(self, num_bins: int = 2048, num_quantized_bins: int = 128, stride: int = 1) -> None:
        super().__init__(num_bins, True)
        if not 2 <= num_quantized_bins <= self.num_bins // 2:
            raise InputError(
                f"entropy: num_quantized_bins must be in [2, num_bins // 2 = {self.num_bins // 2}], "
                f"got {num_quantized_bins}"
            )
        if stride < 1:
            raise InputError(f"entropy: stride must be >= 1, got {stride}")
        self.num_quantized_bins, self.stride = int(num_quantized_bins), int(stride)

    def _threshold(self) -> float:
        counts, width = self.magnitude_histogram()
        return entropy_threshold(counts, self.num_quantized_bins, self.stride) * width


class MSEObserver(_HistogramObserver):
    """Clip range minimizing the expected quantization MSE over the histogram.

    Each histogram bin stands for its count of values at the bin centre ``c``;
    the error of a candidate range is ``sum(count * (fake_quant(c) - c)^2)``
    (NVIDIA pytorch-quantization's ``_compute_amax_mse``; ModelOpt's ``mse``
    calibrator searches clip ranges the same way).

    - symmetric (default for ``dtype="int8"``): candidates ``t`` are the
      centres of ``|x|`` bins ``start_bin - 1, ...`` (every ``stride``-th);
      ``[-t, t]`` on 254 steps (int8 -127..127), non-negative tensors
      ``[0, t]`` on 255 steps.
    - asymmetric (``dtype="uint8"`` or ``symmetric=False``) on a signed
      tensor: ``[lo, hi]`` on 255 steps with a rounded zero point; ``hi`` over
      the positive bin centres and ``lo`` over the negative ones, each
      searched with the other fixed, three rounds from ``[min, max]``.

    Args:
        num_bins: histogram resolution (module doc).
        dtype: ``"int8"`` or ``"uint8"``: the type the tensor is quantized to.
        symmetric: override the ``dtype``'s default.
        start_bin: smallest symmetric candidate, in bins (pytorch-quantization: 128).
        stride: test every ``stride``-th candidate.

    Raises:
        InputError: unknown ``dtype``, bad ``num_bins`` / ``start_bin`` / ``stride``.
    """

    method = "mse"

    def __init__(
        self, num_bins: int = 2048, dtype: str = "int8", symmetric: bool | None = None,
        start_bin: int = 128, stride: int = 1,
    ) -> None:  # fmt: skip
        if dtype not in ("int8", "uint8"):
            raise InputError(f"mse: dtype must be 'int8' or 'uint8', got {dtype!r}")
        super().__init__(num_bins, dtype == "int8" if symmetric is None else symmetric)
        if not 1 <= start_bin <= self.num_bins // 2 or stride < 1:
            raise InputError(
                f"mse: start_bin must be in [1, num_bins // 2 = {self.num_bins // 2}] and stride >= 1, "
                f"got start_bin={start_bin}, stride={stride}"
            )
        self.dtype, self.start_bin, self.stride = dtype, int(start_bin), int(stride)

    def _threshold(self) -> float:
        counts, width = self.magnitude_histogram()
        centers = (np.arange(counts.size) + 0.5) * width
        picks = np.arange(min(self.start_bin, counts.size) - 1, counts.size, self.stride)
        highs = centers[picks]
        lows = np.zeros_like(highs) if self.nonnegative else -highs
        steps = 255 if self.nonnegative else 254
        return float(highs[_argmin_error(counts, centers, lows, highs, steps)])

    def _compute(self) -> tuple[float, float]:
        if self.symmetric or self.nonnegative or self.width == 0.0:
            return super()._compute()
        counts, first, width = self.signed_histogram()
        centers = (first + np.arange(counts.size) + 0.5) * width
        neg = np.append(centers[centers < 0][:: self.stride], self.min)
        pos = np.append(centers[centers > 0][:: self.stride], max(self.max, 0.0))
        lo, hi = self.min, max(self.max, 0.0)
        for _ in range(3):
            hi = float(pos[_argmin_error(counts, centers, np.full(pos.size, lo), pos, 255)])
            lo = float(neg[_argmin_error(counts, centers, neg, np.full(neg.size, hi), 255)])
        return lo, hi


def fake_quant(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, steps: int) -> np.ndarray:
    """Quantize-dequantize ``x`` (shape ``(1, n)``) on ``steps`` uniform steps
    over each candidate range ``[lo, hi]`` (``lo <= 0 <= hi``, shape ``(C, 1)``),
    zero exactly representable (rounded zero point). Returns ``(C, n)``."""
    scale = (hi - lo) / steps
    scale = np.where(scale > 0, scale, 1.0)
    zero = np.clip(np.rint(-lo / scale), 0, steps)
    q = np.clip(np.rint(x / scale) + zero, 0, steps)
    return (q - zero) * scale


def _argmin_error(counts: np.ndarray, centers: np.ndarray, lows: np.ndarray, highs: np.ndarray, steps: int) -> int:
    """Index of the candidate ``(lows[j], highs[j])`` of least
    ``sum(counts * (fake_quant(centers) - centers)^2)`` (the first of equal minima)."""
    c = centers[None, :].astype(np.float64)
    w = np.asarray(counts, dtype=np.float64)[None, :]
    best, best_j = math.inf, 0
    for chunk in np.array_split(np.arange(lows.size), max(1, lows.size // 64)):
        err = ((fake_quant(c, lows[chunk, None], highs[chunk, None], steps) - c) ** 2 * w).sum(axis=1)
        j = int(np.argmin(err))
        if err[j] < best:
            best, best_j = float(err[j]), int(chunk[j])
    return best_j


OBSERVERS: dict[str, type[Observer]] = {
    cls.method: cls for cls in (MinMaxObserver, PercentileObserver, EntropyObserver, MSEObserver)
}
"""Observer classes by method name."""


def make_observer(method: str, **options: object) -> Observer:
    """A new observer for ``method`` (``minmax | percentile | entropy | mse``).

    Args:
        method: a key of :data:`OBSERVERS`.
        options: keyword arguments of that observer's class.

    Raises:
        InputError: unknown method (lists the methods) or option (lists the
            method's options), or an option value out of range.
    """
    cls = OBSERVERS.get(method)
    if cls is None:
        raise InputError(f"unknown calibration method {method!r}; choose one of: {', '.join(OBSERVERS)}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise InputError(
            f"calibration method {method!r} has no option {unknown[0]!r}; its options are: {', '.join(allowed)}"
        )
    return cls(**options)

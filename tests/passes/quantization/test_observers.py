"""Range observers against hand-computed values and direct (non-streaming)
reference implementations on the same histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.passes.quantization.observers import (
    EntropyObserver,
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    entropy_threshold,
    make_observer,
)

RNG = np.random.default_rng(0)


def observe(observer, *batches):  # noqa: ANN001, ANN201
    for b in batches:
        observer.update(np.asarray(b, dtype=np.float32))
    return observer


# -- minmax ---------------------------------------------------------------


def test_minmax_running_and_zero_included():
    obs = observe(MinMaxObserver(), [1.0, -2.0, 3.0], [0.5, 7.0, -1.0])
    assert obs.range() == (-2.0, 7.0)
    assert obs.count == 6 and obs.method == "minmax"
    assert observe(MinMaxObserver(), [1.0, 2.0, 3.0]).range() == (0.0, 3.0)
    assert observe(MinMaxObserver(), [-3.0, -1.0]).range() == (-3.0, 0.0)
    assert MinMaxObserver().range() == (0.0, 0.0)


def test_minmax_moving_average():
    # batch 1: (-2, 3) taken as is; batch 2 (-1, 7): m += 0.5 (m_batch - m)
    obs = observe(MinMaxObserver(averaging=True, averaging_constant=0.5), [1.0, -2.0, 3.0], [0.5, 7.0, -1.0])
    assert obs.range() == (-1.5, 5.0)


def test_minmax_symmetric_and_nonfinite_ignored():
    obs = observe(MinMaxObserver(symmetric=True), [1.0, np.nan, np.inf, -3.0, -np.inf])
    assert obs.range() == (-3.0, 3.0)
    assert (obs.count, obs.nonfinite) == (2, 3)
    assert observe(MinMaxObserver(symmetric=True), [0.0, 2.0]).range() == (0.0, 2.0)


# -- percentile -------------------------------------------------------------


def test_percentile_symmetric_hand_computed():
    x = np.arange(1, 1001, dtype=np.float32)  # 1..1000
    obs = observe(PercentileObserver(percentile=99.0), x)
    # max 1000, 2048 bins -> width 2^ceil(log2(1000/2048)) = 0.5; value v sits in bin 2v.
    # 99% of 1000 values = 990 values: the 990th (990.0) fills bin 1980, whose right edge is 990.5.
    assert obs.width == 0.5
    assert obs.range() == (0.0, 990.5)
    assert abs(obs.range()[1] - np.percentile(x, 99.0)) <= obs.width
    signed = observe(PercentileObserver(percentile=99.0), np.concatenate([-x, x]))
    assert signed.range() == (-990.5, 990.5)


def test_percentile_asymmetric_tails():
    x = np.concatenate([-np.arange(1, 101), np.arange(1, 1001)]).astype(np.float32)  # 1100 values
    obs = observe(PercentileObserver(percentile=98.0, symmetric=False), x)
    # 1% per tail = 11 values: lower = 11th smallest (-90, bin -180, right edge -89.5);
    # upper = 1089th value = 989 (bin 1978, right edge 989.5).
    assert obs.range() == (-89.5, 989.5)
    lo, hi = np.percentile(x, [1.0, 99.0])
    assert abs(obs.range()[0] - lo) <= obs.width and abs(obs.range()[1] - hi) <= obs.width


def test_percentile_of_relu_output_starts_at_zero():
    x = np.maximum(RNG.standard_normal(10_000), 0.0).astype(np.float32)
    for method in ("percentile", "entropy", "mse"):
        rmin, rmax = observe(make_observer(method), x).range()
        assert rmin == 0.0 and 0.0 < rmax <= x.max(), method


# -- entropy ----------------------------------------------------------------


def reference_entropy(counts: np.ndarray, nq: int) -> int:
    """Migacz's pseudo-code, one candidate at a time (MXNet/ORT smoothing)."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    best, best_i = math.inf, len(bins)
    for i in range(nq, len(bins) + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        groups = np.arange(i) * nq // i  # bin j -> quantized level
        total = np.bincount(groups, weights=bins[:i], minlength=nq)
        nonzero = np.bincount(groups, weights=p > 0, minlength=nq)
        q = np.where(p > 0, total[groups] / np.maximum(nonzero[groups], 1), 0.0)  # expand over P's non-zero bins

        def smooth(d):
            zeros = d == 0
            if zeros.all():
                return None
            return d + 1e-4 * zeros - 1e-4 * zeros.sum() / (~zeros).sum() * ~zeros

        p, q = smooth(p), smooth(q)
        if p is None or q is None:
            continue
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
        if not math.isfinite(kl):
            kl = math.inf
        if kl <= best:
            best, best_i = kl, i
    return best_i


def test_entropy_clips_outlier_uniform_bulk():
    bulk = RNG.uniform(0.0, 4.0, 100_000)
    obs = observe(EntropyObserver(num_quantized_bins=16), bulk, [64.0])
    # width 2^ceil(log2(64/2048)) = 1/32: the bulk fills bins 0..127. A threshold below 4 piles
    # clipped bulk into P's last bin; one above 4 leaves the outlier in a group that Q has no
    # mass for. So the minimum is at exactly 128 bins = 4.0.
    assert obs.width == 1 / 32
    assert obs.range() == (0.0, 4.0)
    counts, _ = obs.magnitude_histogram()
    assert entropy_threshold(counts, 16) == reference_entropy(counts, 16) == 128


def test_entropy_clips_outlier_normal_signed():
    x = np.concatenate([RNG.standard_normal(20_000), [100.0]])
    obs = observe(EntropyObserver(), x)
    rmin, rmax = obs.range()
    assert rmin == -rmax
    # width 1/16; the smallest candidate is 128 bins = 8.0 (> max of the bulk), the outlier is at 100
    assert obs.width == 1 / 16
    assert 8.0 <= rmax < 100.0
    counts, width = obs.magnitude_histogram()
    assert rmax == reference_entropy(counts, 128) * width


def test_entropy_few_bins_keeps_all():
    assert entropy_threshold(np.array([5, 3, 1]), 128) == 3


# -- mse --------------------------------------------------------------------


def reference_mse(counts: np.ndarray, width: float, start_bin: int, steps: int, signed: bool) -> float:
    best, best_t = math.inf, 0.0
    centers = (np.arange(len(counts)) + 0.5) * width
    for i in range(start_bin, len(counts) + 1):
        t = centers[i - 1]
        scale = (2 * t if signed else t) / steps
        zero = steps // 2 if signed else 0
        q = (np.clip(np.rint(centers / scale) + zero, 0, steps) - zero) * scale
        err = float(np.sum(counts * (q - centers) ** 2))
        if err < best:
            best, best_t = err, t
    return best_t


def test_mse_clips_single_outlier_uint_range():
    x = np.concatenate([RNG.uniform(0.0, 1.0, 1_000_000), [2.0]])
    obs = observe(MSEObserver(), x)
    rmin, t = obs.range()
    # Keeping the outlier needs t >= 2: noise N (t/255)^2 / 12 >= 1e6 * 5.1e-6 = 5.1. Clipping it at
    # t ~ 1 costs (2 - t)^2 + 1.28 t^2 ~ 2.3, increasing on (1, 2); clipping the bulk to 1 - d costs
    # 1e6 d^3 / 3 > 1 for d > 0.0144. So 0.985 <= t <= 1 (+ bin discretization).
    assert rmin == 0.0
    assert 0.985 <= t <= 1.0 + 3 * obs.width
    counts, width = obs.magnitude_histogram()
    assert t == reference_mse(counts, width, 128, 255, signed=False)


def test_mse_symmetric_int8_signed():
    x = np.concatenate([RNG.uniform(-1.0, 1.0, 1_000_000), [2.0]])
    obs = observe(MSEObserver(), x)
    rmin, rmax = obs.range()
    assert rmin == -rmax and 0.985 <= rmax <= 1.0 + 3 * obs.width
    counts, width = obs.magnitude_histogram()
    assert rmax == reference_mse(counts, width, 128, 254, signed=True)


def test_mse_asymmetric_uint8_signed():
    x = np.concatenate([RNG.uniform(-0.5, 1.0, 1_000_000), [2.0]])
    rmin, rmax = observe(MSEObserver(dtype="uint8"), x).range()
    # the bulk's own range [-0.5, 1] is kept (within a few bins), the outlier clipped
    assert -0.5 <= rmin <= -0.49 and 0.985 <= rmax <= 1.01


# -- streaming histograms ---------------------------------------------------


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_streaming_rebinning_equals_one_shot(method):
    # ranges grow batch by batch: 0.01 -> 1 -> 30 -> 1000 (the width doubles 17 times)
    batches = [RNG.standard_normal(5_000) * s for s in (0.01, 1.0, 30.0)] + [np.array([-1000.0])]
    streamed = observe(make_observer(method), *batches)
    once = observe(make_observer(method), np.concatenate(batches))
    assert streamed.width == once.width
    np.testing.assert_array_equal(streamed.counts, once.counts)
    for a, b in zip(streamed.range(), once.range()):
        assert abs(a - b) <= once.width
    assert streamed.count == once.count == 15_001


def test_all_zeros_then_values():
    obs = observe(PercentileObserver(percentile=100.0), np.zeros(10), [0.0, 3.0])
    assert obs.range() == (0.0, 3.0)
    assert obs.magnitude_histogram()[0][0] == 11  # zeros kept in bin 0 before the width was known
    assert observe(EntropyObserver(), np.zeros(4)).range() == (0.0, 0.0)


# -- factory and options ----------------------------------------------------


def test_make_observer_errors():
    assert isinstance(make_observer("percentile", percentile=99.9), PercentileObserver)
    with pytest.raises(InputError, match="unknown calibration method 'kl'; choose one of: minmax, percentile, "
                                         "entropy, mse"):  # fmt: skip
        make_observer("kl")
    with pytest.raises(InputError, match="has no option 'bins'; its options are: num_bins, num_quantized_bins"):
        make_observer("entropy", bins=10)
    with pytest.raises(InputError, match=r"percentile must be in \(0, 100\], got 101"):
        make_observer("percentile", percentile=101)
    with pytest.raises(InputError, match="dtype must be 'int8' or 'uint8'"):
        make_observer("mse", dtype="int4")
    with pytest.raises(InputError, match="cannot observe values of dtype bool"):
        MinMaxObserver().update(np.array([True]))

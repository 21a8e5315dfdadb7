"""Importance scores on hand-computed examples: magnitude, Wanda, FLAP
fluctuation per neuron and per head-sized unit, Block Influence, FLAP's
per-layer standardization, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphopt.calibrate.importance import (
    block_influence,
    fluctuation_scores,
    magnitude_scores,
    per_unit,
    standardize,
    wanda_scores,
)
from graphopt.errors import InputError

W = np.array([[1.0, -2.0], [3.0, 4.0], [0.0, 1.0], [-1.0, -1.0]])  # consumer rows, C=4, N=2


def test_magnitude():
    np.testing.assert_array_equal(magnitude_scores([W], p=1), [3.0, 7.0, 1.0, 2.0])
    np.testing.assert_array_equal(magnitude_scores([W], unit=2, p=1), [10.0, 3.0])
    np.testing.assert_allclose(magnitude_scores([W], unit=2), [math.sqrt(30.0), math.sqrt(3.0)], rtol=1e-15)
    # with the producer's output columns (given transposed, [C, M]) and a bias [C]
    producer = np.array([[2.0], [0.0], [1.0], [1.0]])
    bias = np.array([0.0, 1.0, 0.0, 2.0])
    np.testing.assert_array_equal(magnitude_scores([W, producer, bias], p=1), [5.0, 8.0, 2.0, 5.0])
    np.testing.assert_allclose(magnitude_scores([W, producer, bias], unit=4), [math.sqrt(33 + 6 + 5)], rtol=1e-15)


def test_wanda():
    sq = np.array([4.0, 1.0, 9.0, 16.0])  # ||X_j|| = 2, 1, 3, 4
    np.testing.assert_array_equal(wanda_scores(W, sq), [6.0, 7.0, 3.0, 8.0])
    np.testing.assert_array_equal(wanda_scores(W, sq, unit=2), [13.0, 11.0])
    np.testing.assert_allclose(wanda_scores(W, sq, p=2), [2 * math.sqrt(5), 5.0, 3.0, 4 * math.sqrt(2)], rtol=1e-15)


def test_fluctuation():
    var = np.array([1.0, 2.0, 0.5, 0.0])  # row squared norms 5, 25, 1, 2
    np.testing.assert_array_equal(fluctuation_scores(W, var), [5.0, 50.0, 0.5, 0.0])
    np.testing.assert_array_equal(fluctuation_scores(W, var, unit=2), [55.0, 0.5])


def test_conv_weight_rows_any_trailing_shape():
    w = np.arange(12, dtype=np.float64).reshape(2, 3, 2)  # e.g. [C_in, C_out, k] after a transpose
    np.testing.assert_array_equal(magnitude_scores([w], p=1), [15.0, 51.0])
    np.testing.assert_array_equal(fluctuation_scores(w, [1.0, 0.0]), [55.0, 0.0])


def test_block_influence():
    x_in = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    x_out = np.array([[[2.0, 0.0], [1.0, 1.0]]])  # cosines 1 and 1/sqrt(2)
    assert block_influence(x_in, x_out) == pytest.approx(1 - (1 + 1 / math.sqrt(2)) / 2, rel=1e-15)
    assert block_influence(x_in, x_in) == pytest.approx(0.0, abs=1e-15)
    assert block_influence(np.zeros((2, 3)), np.ones((2, 3))) == 0.0  # a zero row counts as unchanged
    assert block_influence(0.75) == 0.25
    # features on axis 1 ([N, C, H, W])
    a = np.moveaxis(x_in, -1, 1)
    assert block_influence(a, np.moveaxis(x_out, -1, 1), axis=1) == block_influence(x_in, x_out)


def test_standardize():
    out = standardize({"layer0": [1.0, 2.0, 3.0], "layer1": [5.0, 5.0]})
    s = math.sqrt(1.5)
    np.testing.assert_allclose(out["layer0"], [-s, 0.0, s], rtol=1e-15)
    np.testing.assert_array_equal(out["layer1"], [0.0, 0.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: per_unit(np.ones(6), 4), "units of 4"),
        (lambda: per_unit(np.ones(6), 0), "positive integer"),
        (lambda: magnitude_scores([W], p=3), "1 or 2"),
        (lambda: magnitude_scores([W, np.ones(3)]), "agree"),
        (lambda: magnitude_scores([]), "at least one"),
        (lambda: wanda_scores(W, np.ones(3)), "one norm per"),
        (lambda: wanda_scores(W, -np.ones(4)), "negative"),
        (lambda: fluctuation_scores(W, np.ones(5)), "one per"),
        (lambda: block_influence(np.ones((2, 3)), np.ones((3, 2))), "one shape"),
    ],
)
def test_refusals(call, match):  # noqa: ANN001
    with pytest.raises(InputError, match=match):
        call()

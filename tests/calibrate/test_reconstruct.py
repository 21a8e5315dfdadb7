"""Reconstruction: exact refits where the removed input is zero or constant,
least squares beating plain deletion on correlated channels, FLAP's bias
compensation, the general X_new / X_ref form, the eigendecomposition fallback
on a singular Gram, refusals."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from graphopt.calibrate.reconstruct import (
    bias_compensation,
    least_squares,
    output_error,
    reconstruct,
    refit_kept,
    solve_ridge,
    whiten,
)
from graphopt.errors import InputError


def test_exact_when_removed_activations_are_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8))
    x[:, [2, 5]] = 0.0
    w = rng.standard_normal((8, 5))
    keep = np.array([0, 1, 3, 4, 6, 7])
    r = refit_kept(x.T @ x, keep, w, ridge=0.0)
    assert r.method == "cholesky" and r.weight.shape == (6, 5) and r.ridge == 0.0
    np.testing.assert_allclose(x[:, keep] @ r.weight, x @ w, rtol=0, atol=1e-6)
    # the boolean-mask form and a tiny ridge agree
    mask = np.ones(8, bool)
    mask[[2, 5]] = False
    np.testing.assert_allclose(refit_kept(x.T @ x, mask, w, ridge=1e-12).weight, r.weight, atol=1e-9)


def test_least_squares_beats_deletion_on_correlated_channels():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((500, 4))
    x = np.column_stack([base, base[:, 0] + 0.1 * rng.standard_normal(500), base[:, 1] - base[:, 2]])
    w = rng.standard_normal((6, 3))
    g = x.T @ x
    keep = [0, 1, 2, 3]
    deleted = output_error(g[np.ix_(keep, keep)], g[keep], g, w, w[keep])
    r = refit_kept(g, keep, w, ridge=0.0)
    refit = output_error(g[np.ix_(keep, keep)], g[keep], g, w, r.weight)
    assert deleted == pytest.approx(np.sum((x[:, keep] @ w[keep] - x @ w) ** 2), rel=1e-10)
    assert refit == pytest.approx(np.sum((x[:, keep] @ r.weight - x @ w) ** 2), rel=1e-8)
    # channel 5 is exactly base1 - base2 and is recovered; channel 4 leaves only the part of it the kept
    # channels cannot explain (its noise, ~0.1^2 * 500 rows), times ||w_4||^2
    assert deleted == pytest.approx(3108.6545, rel=1e-6) and refit == pytest.approx(17.5771, rel=1e-5)
    resid = x[:, 4] - x[:, keep] @ np.linalg.lstsq(x[:, keep], x[:, 4], rcond=None)[0]
    assert refit == pytest.approx(np.sum(resid**2) * np.sum(w[4] ** 2), rel=1e-8)
    # the ridge trades a little fit for a smaller weight, still far below deletion
    ridged = refit_kept(g, keep, w, ridge=1e-2)
    assert refit < output_error(g[np.ix_(keep, keep)], g[keep], g, w, ridged.weight) == pytest.approx(18.7644, rel=1e-5)


def test_intercept_absorbs_a_constant_removed_channel():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 5))
    x[:, 3] = 5.0
    w = rng.standard_normal((5, 4))
    b = rng.standard_normal(4)
    keep = [0, 1, 2, 4]
    r = refit_kept(x.T @ x, keep, w, ridge=0.0, bias=b, mean=x.mean(axis=0), rows=100)
    np.testing.assert_allclose(x[:, keep] @ r.weight + r.bias, x @ w + b, atol=1e-9)
    np.testing.assert_allclose(r.bias, b + 5.0 * w[3], atol=1e-9)
    # without the intercept, the bias is passed through unchanged
    np.testing.assert_array_equal(refit_kept(x.T @ x, keep, w, bias=b).bias, b)


def test_bias_compensation_analytic():
    w = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]])
    mean = np.array([10.0, -2.0, 4.0])
    # remove channels 1 and 2: b + (-2) * [3, -1] + 4 * [0.5, 4] = [1, -1] + [-6, 2] + [2, 16]
    np.testing.assert_array_equal(bias_compensation(w, mean, [0], bias=np.array([1.0, -1.0])), [-3.0, 17.0])
    np.testing.assert_array_equal(bias_compensation(w, mean, np.array([True, True, False])), [2.0, 16.0])
    np.testing.assert_array_equal(bias_compensation(w, mean, [0, 1, 2]), [0.0, 0.0])


def test_general_form_undoes_a_mixed_input():
    rng = np.random.default_rng(3)
    x_ref = rng.standard_normal((300, 4))
    mix = np.array([[1.0, 0.2, 0, 0], [0, 1.0, 0.3, 0], [0, 0, 1.0, -0.5], [0.1, 0, 0, 1.0]])
    x_new = x_ref @ mix  # the pruned model's input drifted by an invertible mix
    w = rng.standard_normal((4, 2))
    r = reconstruct(x_new.T @ x_new, x_new.T @ x_ref, w, ridge=0.0)
    np.testing.assert_allclose(x_new @ r.weight, x_ref @ w, atol=1e-9)
    np.testing.assert_allclose(r.weight, np.linalg.solve(mix, w), atol=1e-9)
    # fewer new channels than the reference: the best fit of the 3 kept, drifted columns
    sub = x_new[:, :3]
    r3 = reconstruct(sub.T @ sub, sub.T @ x_ref, w, ridge=0.0)
    np.testing.assert_allclose(r3.weight, np.linalg.lstsq(sub, x_ref @ w, rcond=None)[0], atol=1e-9)


def test_least_squares_against_any_target_with_intercept():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((120, 3)) + [1.0, -2.0, 0.5]
    t = rng.standard_normal((120, 2)) + 3.0
    r = least_squares(x.T @ x, x.T @ t, ridge=0.0, sum_x=x.sum(axis=0), sum_target=t.sum(axis=0), rows=120)
    coef = np.linalg.lstsq(np.column_stack([x, np.ones(120)]), t, rcond=None)[0]
    np.testing.assert_allclose(r.weight, coef[:3], atol=1e-10)
    np.testing.assert_allclose(r.bias, coef[3], atol=1e-10)
    plain = least_squares(x.T @ x, x.T @ t, ridge=0.0)
    assert plain.bias is None
    np.testing.assert_allclose(plain.weight, np.linalg.lstsq(x, t, rcond=None)[0], atol=1e-10)
    # the intercept is not penalized: a huge ridge shrinks the weight to ~0 and leaves the target's mean
    big = least_squares(x.T @ x, x.T @ t, ridge=1e9, sum_x=x.sum(axis=0), sum_target=t.sum(axis=0), rows=120)
    np.testing.assert_allclose(big.bias, t.mean(axis=0), rtol=1e-6)


def test_singular_gram_falls_back_and_says_so(caplog):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 3))
    x = np.column_stack([x, x[:, 1]])  # channel 3 duplicates channel 1
    w = rng.standard_normal((4, 2))
    with caplog.at_level(logging.WARNING, logger="graphopt.calibrate.reconstruct"):
        r = refit_kept(x.T @ x, [0, 1, 2, 3], w, ridge=0.0, where="ffn.down")
    assert (r.method, r.dropped) == ("eigh", 1)
    assert "not positive definite" in caplog.text and "ffn.down" in caplog.text
    np.testing.assert_allclose(x @ r.weight, x @ w, atol=1e-9)
    # minimum norm: the duplicated pair shares its weight equally
    np.testing.assert_allclose(r.weight[1], r.weight[3], atol=1e-9)
    # an all-zero Gram drops everything and returns zeros
    z, lam, method, dropped = solve_ridge(np.zeros((2, 2)), np.ones((2, 1)))
    assert (method, dropped, lam) == ("eigh", 2, 0.0) and not z.any()
    # a positive ridge makes it definite again: no fallback
    assert refit_kept(x.T @ x, [0, 1, 2, 3], w, ridge=1e-6).method == "cholesky"


def test_whitening_factor_and_fallback(caplog):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 4))
    g = x.T @ x
    wh = whiten(g, ridge=0.0)
    assert wh.method == "cholesky" and np.allclose(np.triu(wh.factor, 1), 0.0)
    np.testing.assert_allclose(wh.factor @ wh.factor.T, g, rtol=1e-12)
    np.testing.assert_allclose(wh.inverse @ wh.factor, np.eye(4), atol=1e-12)
    # SVD-LLM's property: the output error of truncating S^T W equals the dropped singular values
    w = rng.standard_normal((4, 3))
    u, sv, vt = np.linalg.svd(wh.factor.T @ w, full_matrices=False)
    w1 = wh.inverse.T @ (u[:, :2] * sv[:2]) @ vt[:2]
    assert np.sum((x @ w1 - x @ w) ** 2) == pytest.approx(sv[2] ** 2, rel=1e-9)
    dup = np.column_stack([x, x[:, 0]])
    with caplog.at_level(logging.WARNING, logger="graphopt.calibrate.reconstruct"):
        wd = whiten(dup.T @ dup, ridge=0.0, where="attn.q")
    assert (wd.method, wd.floored) == ("eigh", 1) and "attn.q" in caplog.text
    np.testing.assert_allclose(wd.factor @ wd.factor.T, dup.T @ dup, atol=1e-6 * np.abs(dup.T @ dup).max())
    np.testing.assert_allclose(wd.inverse @ wd.factor, np.eye(5), atol=1e-8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: refit_kept(np.eye(3), [0, 3], np.ones((3, 2))), "within"),
        (lambda: refit_kept(np.eye(3), [0, 0], np.ones((3, 2))), "distinct"),
        (lambda: refit_kept(np.ones((3, 2)), [0], np.ones((3, 2))), "square"),
        (lambda: reconstruct(np.eye(2), np.ones((2, 4)), np.ones((3, 2))), "gram_xy"),
        (lambda: refit_kept(np.eye(3), [0], np.ones((3, 2)), mean=np.zeros(3)), "together"),
        (lambda: solve_ridge(np.eye(2), np.ones((2, 1)), ridge=-1.0), "ridge"),
        (lambda: bias_compensation(np.ones((3, 2)), np.ones(2), [0]), "mean"),
        (lambda: refit_kept(np.full((2, 2), np.nan), [0], np.ones((2, 1))), "NaN"),
        (lambda: whiten(np.eye(2), floor=0.0), "floor"),
        (lambda: least_squares(np.eye(2), np.ones((3, 1))), "cross"),
        (lambda: least_squares(np.eye(2), np.ones((2, 1)), rows=3), "together"),
        (lambda: reconstruct(np.eye(2), np.eye(2), np.eye(2), sum_x=np.ones(2), sum_y=np.ones(2), rows=0), "rows"),
    ],
)
def test_refusals(call, match):  # noqa: ANN001
    with pytest.raises(InputError, match=match):
        call()

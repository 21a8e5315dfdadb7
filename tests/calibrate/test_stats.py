"""Activation statistics: streamed per-channel moments, norms, Gram and cross
products equal numpy's on the concatenated rows (float64, 1e-12 relative)
across batches of different sizes; the Conv channel axis; token masks; the
reference model's cross products; the cache; refusals."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from graphopt import ir
from graphopt.calibrate.data import CalibrationData
from graphopt.calibrate.importance import block_influence
from graphopt.calibrate.stats import (
    StatRequest,
    StatsCache,
    collect_cosines,
    collect_stats,
    model_fingerprint,
)
from graphopt.errors import InputError

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def mlp(scale: float = 2.0) -> ir.Model:
    """h = scale * x  [N, T, 4] -> MatMul(h, W[4, 3]) -> y; m (mask) only carried along."""
    return ir.from_text(HEAD + f"""
g (float[N, T, 4] x, int64[N, T] m) => (float[N, T, 3] y, int64[N, T] mo) {{
  s = Constant<value = float {{{scale}}}>()
  h = Mul(x, s)
  w = Constant<value = float[4, 3] {{1, 0, 2, -1, 1, 0, 0, 3, 1, 2, -2, 0.5}}>()
  y = MatMul(h, w)
  mo = Identity(m)
  k = Cast<to = 7>(x)
}}""")


def conv() -> ir.Model:
    """h = 2 * x [N, 3, H, W] -> 1x1 Conv to 2 channels."""
    return ir.from_text(HEAD + """
g (float[N, 3, H, W] x) => (float[N, 2, H, W] y) {
  s = Constant<value = float {2.0}>()
  h = Mul(x, s)
  w = Constant<value = float[2, 3, 1, 1] {1, 2, 3, 4, 5, 6}>()
  y = Conv(h, w)
}""")


def samples(lengths, offset: float = 100.0, seed: int = 0):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(seed)
    out = []
    for n, t in lengths:
        x = (rng.standard_normal((n, t, 4)) * [1.0, 3.0, 0.1, 10.0] + offset).astype(np.float32)
        out.append({"x": x, "m": np.ones((n, t), np.int64)})
    return out


def close(a, b, rtol: float = 1e-12) -> None:  # noqa: ANN001
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0)


def test_moments_norms_gram_cross_over_uneven_batches():
    data = samples([(1, 3), (2, 7), (1, 1), (3, 5)])
    stats = collect_stats(mlp(), [StatRequest("h", gram=True, cross=("x",)), "y"], CalibrationData.from_arrays(data))
    assert list(stats) == ["h", "y"]
    x = np.concatenate([s["x"].reshape(-1, 4) for s in data]).astype(np.float64)
    h = 2.0 * x  # exact in float32
    s = stats["h"]
    assert (s.rows, s.channels, s.axis) == (3 + 14 + 1 + 15, 4, -1)
    close(s.mean, h.mean(axis=0))
    close(s.var, h.var(axis=0), rtol=1e-10)  # 1e-12 of the mean's scale: var / mean^2 ~ 1e-4
    close(s.sq_sum, (h * h).sum(axis=0))
    close(s.norms, np.linalg.norm(h, axis=0))
    close(s.abs_mean, np.abs(h).mean(axis=0))
    close(s.gram, h.T @ h)
    close(s.cross["x"], h.T @ x)
    assert stats["y"].gram is None and stats["y"].channels == 3
    # a BLAS update per batch (flush_rows=1) and one at the end give the same sums
    each = collect_stats(mlp(), [StatRequest("h", gram=True, cross=("x",))], data, flush_rows=1)["h"]
    close(each.gram, h.T @ h)
    close(each.cross["x"], h.T @ x)
    assert np.array_equal(each.gram, each.gram.T)


def test_variance_is_exact_relative_to_itself_on_centered_data():
    data = samples([(1, 4), (1, 9), (2, 2)], offset=0.0, seed=3)
    s = collect_stats(mlp(), ["h"], data)["h"]
    h = 2.0 * np.concatenate([d["x"].reshape(-1, 4) for d in data]).astype(np.float64)
    close(s.var, h.var(axis=0))


def test_conv_channel_axis():
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((n, 3, 2, w)).astype(np.float32)} for n, w in [(1, 3), (2, 5), (1, 2)]]
    s = collect_stats(conv(), [StatRequest("h", axis=1, gram=True)], data)["h"]
    rows = np.concatenate([np.moveaxis(2.0 * d["x"].astype(np.float64), 1, -1).reshape(-1, 3) for d in data])
    assert s.rows == 2 * 3 + 2 * 2 * 5 + 2 * 2 == rows.shape[0]
    close(s.mean, rows.mean(axis=0))
    close(s.var, rows.var(axis=0))
    close(s.gram, rows.T @ rows)


def test_token_mask_drops_padded_rows():
    data = samples([(2, 4)], seed=5)
    data[0]["m"] = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.int64)
    s = collect_stats(mlp(), [StatRequest("h", gram=True)], data, mask="m")["h"]
    h = 2.0 * data[0]["x"].astype(np.float64)[data[0]["m"] != 0]
    assert s.rows == 5
    close(s.mean, h.mean(axis=0))
    close(s.gram, h.T @ h)
    with pytest.raises(InputError, match="not in calibration batch"):
        collect_stats(mlp(), ["h"], data, mask="attention_mask")


def test_reference_cross_products():
    data = samples([(1, 3), (1, 6)], seed=2)
    req = StatRequest("h", cross_reference=("h",))
    s = collect_stats(mlp(2.0), [req], data, reference=mlp(4.0))["h"]
    x = np.concatenate([d["x"].reshape(-1, 4) for d in data]).astype(np.float64)
    close(s.cross_reference["h"], (2.0 * x).T @ (4.0 * x))
    with pytest.raises(InputError, match="no reference"):
        collect_stats(mlp(), [req], data)


def test_cache_by_model_content():
    data = CalibrationData.from_arrays(samples([(1, 3)]))
    cache = StatsCache()
    first = collect_stats(mlp(), [StatRequest("h", gram=True)], data, cache=cache)["h"]
    again = collect_stats(mlp(), ["h"], data, cache=cache)["h"]  # a new but equal model; no Gram asked
    assert again is first and cache.hits == 1
    assert collect_stats(mlp(3.0), ["h"], data, cache=cache)["h"] is not first  # other weights
    other = CalibrationData.from_arrays(samples([(1, 3)]))
    assert collect_stats(mlp(), ["h"], other, cache=cache)["h"] is not first  # other data
    assert cache.misses == 3 and len(cache) == 3
    assert model_fingerprint(mlp()) == model_fingerprint(ir.clone(mlp())) != model_fingerprint(mlp(3.0))


def test_cache_lives_in_the_pass_context_analyses():
    from graphopt.passmanager.context import PassContext

    ctx, model = PassContext(), mlp()
    cache = StatsCache.for_context(ctx, model)
    assert StatsCache.for_context(ctx, model) is cache
    data = samples([(1, 2)])
    first = collect_stats(model, ["h"], data, cache=cache)["h"]
    assert collect_stats(model, ["h"], data, cache=StatsCache.for_context(ctx, model))["h"] is first
    ctx.analyses.invalidate()  # a pass modified the model
    assert StatsCache.for_context(ctx, model) is not cache
    ctx2 = PassContext()
    kept = StatsCache.for_context(ctx2, model)
    ctx2.analyses.invalidate(frozenset({"activation-stats"}))  # a pass that preserves it (content-keyed: safe)
    assert StatsCache.for_context(ctx2, model) is kept


def test_model_from_path(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save(mlp(), path)
    s = collect_stats(str(path), ["h"], samples([(1, 2)]))["h"]
    assert s.rows == 2


def test_block_influence_from_streamed_cosines():
    data = samples([(1, 3), (2, 2)], offset=0.0, seed=4)
    pair = collect_cosines(mlp(), [("x", "h"), ("x", "x")], data)
    assert pair[("x", "h")].rows == 7
    assert block_influence(pair[("x", "h")].mean_cosine) == pytest.approx(0.0, abs=1e-12)  # h = 2x
    x = np.concatenate([d["x"].reshape(-1, 4) for d in data])
    flipped = collect_cosines(mlp(-1.0), [("x", "h")], data)[("x", "h")]
    assert block_influence(flipped.mean_cosine) == pytest.approx(2.0) == block_influence(x, -x)


@pytest.mark.parametrize(
    ("requests", "kwargs", "match"),
    [
        (["nope"], {}, "not a value"),
        (["k"], {}, "int64"),
        (["h", StatRequest("h", gram=True)], {}, "twice"),
        ([StatRequest("h", axis=5)], {}, "out of range"),
        ([StatRequest("h", axis=1)], {"mask": "m"}, "mask"),
    ],
)
def test_refusals(requests, kwargs, match):  # noqa: ANN001
    with pytest.raises(InputError, match=match):
        collect_stats(mlp(), requests, samples([(1, 2)]), **kwargs)


def test_no_batch_and_nonfinite():
    with pytest.raises(InputError, match="no batch"):
        collect_stats(mlp(), ["h"], [])
    data = samples([(1, 2)])
    data[0]["x"][0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        collect_stats(mlp(), ["h"], data)


def test_channel_count_must_not_change(caplog):
    model = ir.from_text(HEAD + """
g (float[N, C] x) => (float[N, C] y) { y = Relu(x) }""")
    data = [{"x": np.ones((2, 3), np.float32)}, {"x": np.ones((2, 4), np.float32)}]
    with caplog.at_level(logging.INFO), pytest.raises(InputError, match="fixed size"):
        collect_stats(model, ["y"], data)

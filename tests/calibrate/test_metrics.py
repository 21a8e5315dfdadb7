"""Budget metrics of the core calibration layer: rank fidelity and sentence embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.calibrate.metrics import METRICS, rank_fidelity, sentence_embeddings, sentence_pairs


def _batches(emb: np.ndarray, name: str = "sentence_embedding") -> list[dict[str, np.ndarray]]:
    return [{name: emb[i:i + 1].astype(np.float32)} for i in range(len(emb))]


def test_sentence_pairs_are_distinct_ordered_and_seeded():
    pairs = sentence_pairs(10, 20)
    assert pairs.shape == (20, 2) and pairs.dtype == np.int64
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.max() < 10
    assert len({tuple(p) for p in pairs}) == 20
    assert (sentence_pairs(10, 20) == pairs).all()
    assert len(sentence_pairs(4, 1000)) == 6  # every pair when there are fewer


def test_rank_fidelity_is_one_for_a_monotone_change_and_drops_with_noise():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16))
    assert rank_fidelity(_batches(emb * 3.0), _batches(emb)) == pytest.approx(1.0)
    noisy = emb + rng.standard_normal(emb.shape) * 0.5
    value = rank_fidelity(_batches(noisy), _batches(emb))
    assert 0.5 < value < 0.99
    assert value == pytest.approx(rank_fidelity(_batches(noisy), _batches(emb)))  # same pairs every call
    assert METRICS["rank-fidelity"] is rank_fidelity


def test_three_d_outputs_are_mean_pooled_under_the_mask():
    hidden = np.zeros((1, 3, 2))
    hidden[0] = [[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]
    out = sentence_embeddings([{"last_hidden_state": hidden}], masks=[np.array([[1, 1, 0]])])
    assert out.tolist() == [[2.0, 1.0]]
    # a 2-D output wins over a 3-D one
    both = {"last_hidden_state": hidden, "pooled": np.array([[5.0, 6.0]])}
    assert sentence_embeddings([both]).tolist() == [[5.0, 6.0]]


def test_rank_fidelity_refuses_too_few_sentences_and_outputs_without_embeddings():
    with pytest.raises(ValueError, match="at least 3 sentences, got 2"):
        rank_fidelity(_batches(np.eye(2)), _batches(np.eye(2)))
    with pytest.raises(ValueError, match="rank 2 .* or 3"):
        sentence_embeddings([{"logits": np.zeros((2, 3, 4, 5), np.float32)}])

"""Token selection against brute-force definitions of each rule."""

import numpy as np
import pytest

from linexport.errors import LinexportError
from linexport.runtime.sampling import SamplingParams, apply_repetition_penalty, sample_token


def _draws(logits, params, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([sample_token(logits, params, rng) for _ in range(n)])


def test_greedy_is_argmax():
    logits = np.random.default_rng(1).normal(size=97).astype(np.float16)
    assert sample_token(logits, SamplingParams(), np.random.default_rng()) == int(np.argmax(logits))


def test_temperature_sampling_matches_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    draws = _draws(logits, SamplingParams(temperature=0.5), n=20000)
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum()
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - expected).max() < 0.015


def test_top_k_support_is_the_k_largest():
    logits = np.random.default_rng(2).normal(size=50)
    draws = _draws(logits, SamplingParams(temperature=1.0, top_k=5))
    assert set(draws) == set(np.argsort(-logits)[:5].tolist())


def test_top_p_support_is_the_smallest_prefix_reaching_p():
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = np.log(probs)
    draws = _draws(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert set(draws) == {0, 1, 2}  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    freq = np.bincount(draws, minlength=5)[:3] / len(draws)
    assert np.abs(freq - probs[:3] / probs[:3].sum()).max() < 0.03


def test_repetition_penalty_rule():
    logits = np.array([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
    # Greedy with the penalty moves off a repeated token.
    assert sample_token(np.array([2.0, 1.5]), SamplingParams(repetition_penalty=2.0),
                        np.random.default_rng(), seen=np.array([0])) == 1


def test_seeded_sampling_reproducible():
    logits = np.random.default_rng(3).normal(size=256)
    p = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=7)
    a = [sample_token(logits, p, np.random.default_rng(p.seed)) for _ in range(5)]
    b = [sample_token(logits, p, np.random.default_rng(p.seed)) for _ in range(5)]
    assert a == b


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_k=-3), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
])
def test_bad_params(kwargs, match):
    with pytest.raises(LinexportError, match=match):
        SamplingParams(**kwargs)

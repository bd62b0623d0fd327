"""The shared feature extractor: values on hand-built steps, bounds, and exact state restore.

Float comparisons use ``pytest.approx``'s default (relative 1e-6): the features are float32,
whose representation error is 6e-8 relative (a value like 0.4 is stored as 0.4000000059604645),
and each is at most a few float32 operations from its inputs, identical on every IEEE-754 CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backtrack.engine.results import Step
from backtrack.operators.features import (
    FEATURE_HIGH,
    FEATURE_LOW,
    FEATURE_NAMES,
    FEATURE_VERSION,
    FeatureExtractor,
)

_EMPTY = torch.zeros(1)
IDX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def make_step(
    generated: list[int],
    prob: float = 0.5,
    entropy: float = 1.0,
    top1: float = 0.6,
    top2: float = 0.2,
    rank: int = 0,
) -> Step:
    """A Step as the engine would build it after sampling ``generated[-1]``."""
    return Step(
        position=len(generated) - 1,
        token_id=generated[-1],
        text="",
        prob=prob,
        logprob=math.log(max(prob, 1e-9)),
        logit=0.0,
        rank=rank,
        entropy=entropy,
        top1_prob=top1,
        top2_prob=top2,
        logits=_EMPTY,
        probs=_EMPTY,
        generated=tuple(generated),
    )


def test_names_bounds_and_version_are_consistent() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == FEATURE_LOW.shape[0]
    assert FEATURE_HIGH.shape == FEATURE_LOW.shape
    assert np.all(FEATURE_LOW < FEATURE_HIGH)
    meta = FeatureExtractor(window=5, max_new_tokens=64).metadata()
    assert meta["feature_version"] == FEATURE_VERSION
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert (meta["window"], meta["max_new_tokens"]) == (5, 64)


def test_first_step_values() -> None:
    fx = FeatureExtractor(window=3, max_new_tokens=10)
    vec, state = fx.features(make_step([7], prob=0.4, entropy=math.log(4), rank=3), ())
    assert vec.dtype == np.float32 and vec.shape == (len(FEATURE_NAMES),)
    assert vec[IDX["prob"]] == pytest.approx(0.4)
    assert vec[IDX["uncertainty"]] == pytest.approx(0.75)  # 1 - 1/perplexity, perplexity 4
    assert vec[IDX["margin"]] == pytest.approx(0.4)
    assert vec[IDX["top_rank"]] == pytest.approx(0.25)
    assert vec[IDX["token_frequency"]] == pytest.approx(1.0)
    assert vec[IDX["repeat_last"]] == 0.0
    assert vec[IDX["trigram_repeat"]] == 0.0
    assert vec[IDX["position"]] == 0.0
    # No history: the trend features say "on trend".
    assert vec[IDX["recent_mean_prob"]] == pytest.approx(0.4)
    assert vec[IDX["prob_deviation"]] == pytest.approx(0.0)
    assert vec[IDX["prob_ratio"]] == pytest.approx(0.5)
    assert state == (pytest.approx(0.4),)


def test_trend_repetition_and_window() -> None:
    fx = FeatureExtractor(window=3, max_new_tokens=10)
    state = fx.initial_state()
    tokens = [1, 2, 3, 1, 2, 3, 3]
    probs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1]
    vectors = []
    for i in range(len(tokens)):
        vec, state = fx.features(make_step(tokens[: i + 1], prob=probs[i]), state)
        vectors.append(vec)
    assert isinstance(state, tuple) and len(state) == 3  # only the last `window` probabilities
    assert state == pytest.approx((0.5, 0.4, 0.1))
    last = vectors[-1]
    mean = (0.6 + 0.5 + 0.4) / 3
    assert last[IDX["recent_mean_prob"]] == pytest.approx(mean)
    assert last[IDX["prob_deviation"]] == pytest.approx(0.1 - mean)
    ratio = 0.1 / mean
    assert last[IDX["prob_ratio"]] == pytest.approx(ratio / (1 + ratio))
    assert last[IDX["repeat_last"]] == 1.0  # 3 after 3
    assert last[IDX["token_frequency"]] == pytest.approx(3 / 7)
    assert last[IDX["position"]] == pytest.approx(0.6)
    # [1, 2, 3] again at index 3..5: its 3-gram occurred at 0..2.
    assert vectors[5][IDX["trigram_repeat"]] == 1.0
    assert vectors[4][IDX["trigram_repeat"]] == 0.0  # (2, 3, 1) -> (3, 1, 2): new
    assert last[IDX["trigram_repeat"]] == 0.0  # (2, 3, 3) is new


def test_position_is_clipped_to_the_training_horizon() -> None:
    fx = FeatureExtractor(window=2, max_new_tokens=4)
    vec, _ = fx.features(make_step(list(range(10))), ())
    assert vec[IDX["position"]] == 1.0


def test_features_are_pure_and_restore_exactly() -> None:
    """Replaying from a snapshot gives bit-identical vectors: what rollback relies on."""
    fx = FeatureExtractor(window=4, max_new_tokens=32)
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(0, 5, size=20)]
    probs = [float(p) for p in rng.uniform(0.01, 1.0, size=20)]
    states, vectors = [fx.initial_state()], []
    for i in range(20):
        vec, new_state = fx.features(make_step(tokens[: i + 1], prob=probs[i]), states[-1])
        vectors.append(vec)
        states.append(new_state)
    # "Roll back" to position 12 and replay the same steps: identical results.
    state = states[12]
    for i in range(12, 20):
        vec, state = fx.features(make_step(tokens[: i + 1], prob=probs[i]), state)
        assert np.array_equal(vec, vectors[i])
    assert state == states[-1]
    # Old snapshots were not modified by later calls.
    assert states[12] == tuple(probs[8:12])


@given(  # example count and seeding: the hypothesis profile (tests/conftest.py)
    tokens=st.lists(st.integers(0, 4), min_size=1, max_size=30),
    prob=st.floats(0.0, 1.0),
    entropy=st.floats(0.0, 20.0),
    rank=st.integers(0, 10_000),
    history=st.lists(st.floats(0.0, 1.0), max_size=12),
)
def test_features_stay_in_bounds(tokens, prob, entropy, rank, history) -> None:
    fx = FeatureExtractor(window=10, max_new_tokens=16)
    top1 = max(prob, 0.5)
    vec, state = fx.features(
        make_step(tokens, prob=prob, entropy=entropy, top1=top1, top2=1 - top1, rank=rank),
        tuple(history[-10:]),
    )
    assert np.all(np.isfinite(vec))
    assert np.all(vec >= FEATURE_LOW) and np.all(vec <= FEATURE_HIGH)
    assert len(state) <= 10 and state[-1] == prob


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        FeatureExtractor(window=0)
    with pytest.raises(ValueError):
        FeatureExtractor(max_new_tokens=0)

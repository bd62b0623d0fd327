"""Penalties on the llama.cpp backend (SmolLM2-135M): exact after random rollbacks.

The twin of ``test_penalised_distributions_after_rollbacks_equal_the_replay`` in
tests/test_penalties.py: each final token's distribution (penalties, then the warpers) equals
an incremental replay's through the same backend calls and the same ``draw``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_penalties import chaos_generation, penalty_settings, replay_probs

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")

from backtrack.models import SMOLLM2_MODEL, load_model  # noqa: E402

# The replay's logits equal the session's bit for bit on this machine (tests/test_llama_cpp.py
# measured 0.0 over 12 chaos generations); so did these distributions: max difference 0.0 over
# the 8 examples below, 7 of them with 3 to 18 rollbacks. llama.cpp kernels that tile
# differently on another CPU may move a logit by up to test_llama_cpp.SINGLE_TOL (1e-4), which
# moves a probability drawn at temperature >= 0.8 by less than 3e-4. The bound stays far below
# what a stale penalty count changes (a presence penalty of 0.5 moves the tokens it hits by
# whole percents).
PROB_TOL = 1e-3


@pytest.fixture(scope="module")
def smol():
    return load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, progress=False)


@given(
    settings=penalty_settings,
    seed=st.integers(0, 10_000),
    p=st.floats(0.1, 0.8),
    kmax=st.integers(1, 12),
    temperature=st.sampled_from([0.0, 0.8]),
    top_k=st.sampled_from([None, 20]),
)
@settings(max_examples=8)  # ~15 s each with SmolLM2 on two threads
def test_penalised_distributions_after_rollbacks_equal_the_replay(
    smol, settings, seed, p, kmax, temperature, top_k
):
    model, tok = smol
    result, drawn, config = chaos_generation(
        model, tok, settings, seed, p, kmax, temperature=temperature, top_k=top_k
    )
    replay = replay_probs(model, tok, result, config)
    worst = max(float((a - b).abs().max()) for a, b in zip(drawn, replay, strict=True))
    assert worst <= PROB_TOL


def test_neutral_penalties_equal_penalties_off_bit_for_bit(smol):
    model, tok = smol
    neutral = dict(presence_penalty=0.0, repetition_penalty=1.0, logit_bias={3: 0.0})
    on, _, _ = chaos_generation(model, tok, neutral, 1, 0.4, 6, temperature=0.8, top_k=20)
    off, _, _ = chaos_generation(model, tok, {}, 1, 0.4, 6, temperature=0.8, top_k=20)
    assert on.token_ids == off.token_ids and on.logprobs == off.logprobs
    assert on.trace == off.trace and on.counts.backtracks > 0

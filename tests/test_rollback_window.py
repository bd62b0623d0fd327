"""The rollback window: no rollback reaches further back than ``rollback_window`` tokens behind
the furthest position reached, everything older is final and streams, and a window that never
binds changes nothing (the identity that the measurement of the window's cost in
docs/results.md relies on).
"""

from __future__ import annotations

import pytest
from helpers import replay_logprobs_for
from hypothesis import given
from hypothesis import strategies as st

from backtrack.engine import Decoder, GenerationConfig, RollbackEvent
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.decoder import INTERACTIVE_ROLLBACK_WINDOW
from backtrack.evaluation.settings import EvalError, build_configurations, split_configuration
from backtrack.operators import Chaos, ProbabilityTrend

PROMPT = "def fib(n):\n    "


def _config(seed: int, window: int | None, **kw) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=40, seed=seed, temperature=1.0, rollback_window=window, **kw
    )


@given(
    seed=st.integers(0, 10_000),
    p=st.floats(0.2, 1.0),
    kmax=st.integers(1, 12),
    window=st.integers(0, 10),
)
def test_no_rollback_reaches_behind_the_window(tiny, seed, p, kmax, window):
    """At every step the completion keeps every token older than ``furthest - window``, the
    final text is never shortened below it, and rollbacks stay exact."""
    model, tok = tiny
    session = Decoder(model, tok).session(
        PROMPT, Chaos(p=p, max=kmax, seed=seed), _config(seed, window)
    )
    furthest = 0
    final_prefix: list[int] = []
    for event in session.run():
        furthest = max(furthest, len(session.completion))
        assert len(session.completion) >= furthest - window
        # What fell out of the window never changes again.
        floor = max(0, furthest - window)
        assert session.completion[: len(final_prefix)] == final_prefix
        final_prefix = list(session.completion[:floor])
        if isinstance(event, RollbackEvent):
            assert 1 <= event.k <= window
    result = session.result()
    assert result.counts.deepest_rollback <= window
    assert result.logprobs == replay_logprobs_for(model, result)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_window_that_never_binds_changes_nothing(tiny, seed):
    """With the window at the deepest rollback the unbounded run made, the generation is the
    same token for token; one token less changes it (the window really binds)."""
    model, tok = tiny
    decoder = Decoder(model, tok)
    unbounded = decoder.generate(PROMPT, Chaos(p=0.5, max=6, seed=seed), _config(seed, None))
    depth = unbounded.counts.deepest_rollback
    assert depth >= 2, "the schedule should walk back more than one token"
    same = decoder.generate(PROMPT, Chaos(p=0.5, max=6, seed=seed), _config(seed, depth))
    assert same.token_ids == unbounded.token_ids
    assert same.trace == unbounded.trace
    tighter = decoder.generate(PROMPT, Chaos(p=0.5, max=6, seed=seed), _config(seed, depth - 1))
    assert tighter.counts.deepest_rollback <= depth - 1
    assert tighter.trace != unbounded.trace


def test_k1_operator_never_reaches_more_than_one_token_back(tiny):
    """An operator deleting only the token just sampled (trend's default ``k=1``) is unchanged
    by any window >= 1: why the windows leave the shipped trend operator's results as they are."""
    model, tok = tiny
    decoder = Decoder(model, tok)
    for seed in range(4):
        unbounded = decoder.generate(PROMPT, ProbabilityTrend(drop=0.9), _config(seed, None))
        assert unbounded.counts.backtracks > 0
        assert unbounded.counts.deepest_rollback == 1
        windowed = decoder.generate(PROMPT, ProbabilityTrend(drop=0.9), _config(seed, 1))
        assert windowed.token_ids == unbounded.token_ids


def test_window_zero_means_no_rollback(tiny):
    model, tok = tiny
    decoder = Decoder(model, tok)
    plain = decoder.generate(PROMPT, None, _config(5, None))
    frozen = decoder.generate(PROMPT, Chaos(p=1.0, max=4, seed=5), _config(5, 0))
    assert frozen.counts.backtracks == 0
    assert frozen.token_ids == plain.token_ids


def test_batch_rows_respect_the_window(tiny):
    """The batch decoder runs the same session code, so its rows obey the window too."""
    model, tok = tiny
    requests = [
        (PROMPT, Chaos(p=0.6, max=8, seed=s), _config(s, 3 if s % 2 else None)) for s in range(6)
    ]
    results = dict(BatchDecoder(model, tok).generate_many(requests, 3))
    assert {i for i, r in results.items() if r.counts.deepest_rollback > 3} <= {0, 2, 4}
    assert any(results[i].counts.deepest_rollback > 3 for i in (0, 2, 4))
    for i in (1, 3, 5):
        assert results[i].counts.deepest_rollback <= 3


def test_stream_text_streams_with_the_interactive_window(tiny):
    """Without a window and with the default budget (which alone would allow deleting every
    token until the end), text still streams: the interactive window commits what falls out
    of it, and the pieces concatenate to exactly the final text."""
    model, tok = tiny
    decoder = Decoder(model, tok)
    config = GenerationConfig(max_new_tokens=120, seed=4, temperature=1.0)
    pieces = list(decoder.stream_text(PROMPT, Chaos(p=0.2, max=3, seed=4), config))
    expected = decoder.generate(
        PROMPT,
        Chaos(p=0.2, max=3, seed=4),
        config,
        rollback_window=INTERACTIVE_ROLLBACK_WINDOW,
    )
    assert "".join(pieces) == expected.text
    # A piece per token once 32 tokens are out of reach: far more than the one piece at the
    # end that the budget-only horizon gave.
    assert len(pieces) > 20


def test_stream_text_takes_an_explicit_window(tiny):
    model, tok = tiny
    decoder = Decoder(model, tok)
    config = GenerationConfig(max_new_tokens=60, seed=8, temperature=1.0)
    pieces = list(
        decoder.stream_text(PROMPT, Chaos(p=0.3, max=2, seed=8), config, rollback_window=4)
    )
    expected = decoder.generate(PROMPT, Chaos(p=0.3, max=2, seed=8), config, rollback_window=4)
    assert "".join(pieces) == expected.text


def test_bad_window_is_a_clear_error():
    with pytest.raises(ValueError, match="rollback_window must be >= 0"):
        GenerationConfig(rollback_window=-1)
    assert GenerationConfig(rollback_window=16).to_flat()["rollback_window"] == 16


def test_configuration_settings_after_at():
    """``SPEC@KEY=VALUE`` gives one evaluation configuration its own generation settings."""
    assert split_configuration("probability-trend@rollback_window=16,temperature=0") == (
        "probability-trend",
        (("rollback_window", 16), ("temperature", 0)),
    )
    configs = build_configurations(["trend@rollback_window=16", "trend"])
    windowed = configs[1]
    assert (windowed.name, windowed.spec) == ("trend@rollback_window=16", "trend")
    assert windowed.generation_config(GenerationConfig()).rollback_window == 16
    assert configs[2].generation_config(GenerationConfig()).rollback_window is None
    with pytest.raises(EvalError, match="unknown generation settings: windw"):
        split_configuration("trend@windw=16")
    with pytest.raises(EvalError, match="rollback_window must be >= 0"):
        split_configuration("trend@rollback_window=-2")
    with pytest.raises(EvalError, match="expected KEY=VALUE"):
        split_configuration("trend@16")

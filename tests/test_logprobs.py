"""The engine's record of each final token's top alternatives (``GenerationConfig.top_logprobs``).

The alternatives are recorded where the drawn token's log-probability is, from the same raw
logits and by the same formula (logit - logsumexp), and deleted with their position by a
rollback. So after any rollbacks they equal an incremental replay of the final tokens on a fresh
cache bit for bit (measured: a gap of exactly 0.0 over the seeds below on the float32 tiny
model, as ``result.logprobs`` already is in tests/test_engine.py), and the drawn token's entry,
when it is among them, is its ``logprob`` exactly.
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_replay_logits

from backtrack.backends.base import as_backend
from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.batch import BatchDecoder
from backtrack.operators import Chaos

PROMPT = "def fibonacci(n):\n    "


def replay_top(backend, result, n: int) -> list[list[tuple[int, float]]]:
    """The top ``n`` raw alternatives at each final position, from an incremental replay
    (:func:`helpers.backend_replay_logits`)."""
    tops = []
    for _, logits in backend_replay_logits(backend, result):
        top = torch.topk(logits, n, dim=-1)
        values = top.values - torch.logsumexp(logits, dim=-1, keepdim=True)
        tops.append(list(zip(top.indices[0].tolist(), values[0].tolist(), strict=True)))
    return tops


def _check(result, n: int) -> None:
    assert len(result.top_logprobs) == len(result.token_ids) == len(result.logprobs)
    for token, logprob, top in zip(
        result.token_ids, result.logprobs, result.top_logprobs, strict=True
    ):
        assert len(top) == n
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert all(lp >= logprob for tid, lp in top if tid == token)
        for tid, lp in top:
            if tid == token:
                assert lp == logprob  # the same formula on the same logits


@pytest.mark.parametrize("seed", range(4))
def test_alternatives_survive_rollbacks_exactly(tiny, seed):
    model, tok = tiny
    config = GenerationConfig(max_new_tokens=24, seed=seed, top_logprobs=5, temperature=0.7)
    result = Decoder(model, tok).generate(PROMPT, Chaos(p=0.35, max=6, seed=seed), config)
    assert result.counts.backtracks > 0
    _check(result, 5)
    assert result.top_logprobs == replay_top(as_backend(model), result, 5)


def test_greedy_token_is_the_first_alternative(tiny):
    model, tok = tiny
    config = GenerationConfig(max_new_tokens=12, temperature=0.0, top_logprobs=3)
    result = Decoder(model, tok).generate(PROMPT, None, config)
    assert [top[0] for top in result.top_logprobs] == list(
        zip(result.token_ids, result.logprobs, strict=True)
    )


def test_not_asked_records_nothing(tiny):
    model, tok = tiny
    result = Decoder(model, tok).generate(PROMPT, None, GenerationConfig(max_new_tokens=5))
    assert result.top_logprobs == []


# A batch row's padded, batched passes round differently from the single-sequence engine's
# (tests/test_batch.py bounds the logprobs' gap by 1e-3); measured here: up to 1.7e-5.
BATCH_TOL = 1e-4


def test_batch_rows_record_their_own_count(tiny):
    """Rows asking for different counts (and none) in one batch each get their own: the
    single-sequence engine's alternatives, to the batch's rounding."""
    model, tok = tiny
    requests = [
        (
            PROMPT,
            Chaos(p=0.3, max=4, seed=i),
            GenerationConfig(max_new_tokens=16, seed=i, top_logprobs=n),
        )
        for i, n in enumerate([0, 2, 7])
    ]
    results = BatchDecoder(model, tok).generate_all(requests, batch_size=3)
    for (prompt, _, config), result in zip(requests, results, strict=True):
        single = Decoder(model, tok).generate(prompt, Chaos(p=0.3, max=4, seed=config.seed), config)
        assert result.token_ids == single.token_ids
        assert len(result.top_logprobs) == len(single.top_logprobs)
        for ours, theirs in zip(result.top_logprobs, single.top_logprobs, strict=True):
            assert [t for t, _ in ours] == [t for t, _ in theirs]
            assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs, strict=True)) <= BATCH_TOL
        if config.top_logprobs:
            _check(result, config.top_logprobs)
        else:
            assert result.top_logprobs == []


def test_top_logprobs_is_not_a_flat_setting():
    assert "top_logprobs" not in GenerationConfig(top_logprobs=3).to_flat()
    with pytest.raises(ValueError, match="top_logprobs"):
        GenerationConfig(top_logprobs=21)

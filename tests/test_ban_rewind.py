"""Dead ends of banned strings: when a ban leaves every token of the vocabulary banned where
decoding resumes, the session deletes the token before it too (bounded by MAX_BAN_REWIND, never
into final text).

The case is forced on the tiny model (a 437-token vocabulary): greedy decoding starts with the
token ``t0``, and the pattern ``(?<=^t0).`` (dot matching newlines) bans *every* character right
after it, so each of the 437 tokens at position 1 is rejected in turn, and then position 1 is
a dead end.
"""

from __future__ import annotations

import regex

import backtrack.engine.banning as banning
from backtrack.engine import Budget, Decoder, GenerationConfig, RollbackEvent
from backtrack.engine.banned import MAX_BAN_REWIND
from backtrack.operators import Never

PROMPT = "def fib(n):\n    "
# No EOS (an EOS at position 1 would end decoding with text that matches nothing), and
# budgets large enough for one ban rollback per token of the vocabulary.
BASE = dict(
    max_new_tokens=6,
    temperature=0,
    eos_token_ids=[],
    budget=Budget(max_forward_passes=3000, max_discarded_tokens=3000, max_backtracks=3000),
)


def _dead_end(model, tok) -> tuple[int, GenerationConfig]:
    """The first greedy token and a config whose ban condemns everything after it."""
    first = Decoder(model, tok).generate(PROMPT, Never(), GenerationConfig(**BASE)).token_ids[0]
    pattern = f"(?s)(?<=^{regex.escape(tok.decode([first]))})."
    return first, GenerationConfig(**BASE, banned_regex=[pattern])


def test_a_dead_end_rewinds_one_more_token(tiny):
    model, tok = tiny
    first, config = _dead_end(model, tok)
    # Never: an operator, so the text stays revisable (without one every kept token is final
    # at once, and nothing before the match could be deleted).
    result = Decoder(model, tok).generate(PROMPT, Never(), config)
    assert result.finish_reason == "max_new_tokens"
    assert config.bans().scan(result.text).match_start is None
    assert result.token_ids[0] != first
    rewinds = [e for e in result.trace if isinstance(e, RollbackEvent) and e.position == 0]
    assert rewinds[0] == RollbackEvent(0, 1, tok.decode([first]), (first,), "banned-string")
    # Every token of the vocabulary was rejected at position 1 before the rewind.
    assert result.counts.ban_rollbacks >= len(tok)


def test_without_the_rewind_the_dead_end_spends_the_budget(tiny, monkeypatch):
    """The bound is honoured (0 here): the ban and the sampler's fallback (bans that exclude
    everything are ignored) alternate until the forward-pass budget ends decoding."""
    model, tok = tiny
    first, config = _dead_end(model, tok)
    assert MAX_BAN_REWIND == 4
    monkeypatch.setattr(banning, "MAX_BAN_REWIND", 0)
    result = Decoder(model, tok).generate(PROMPT, Never(), config)
    assert result.finish_reason == "budget"
    assert result.token_ids == [first]


def test_a_dead_end_never_reaches_into_final_text(tiny):
    """Without an operator each kept token is final unless a ban could still grow over it; the
    text before this match cannot, so it is final (it may have been streamed) and stays."""
    model, tok = tiny
    first, config = _dead_end(model, tok)
    result = Decoder(model, tok).generate(PROMPT, None, config)
    assert result.finish_reason == "budget" and result.token_ids == [first]
    assert not any(isinstance(e, RollbackEvent) and e.position == 0 for e in result.trace)

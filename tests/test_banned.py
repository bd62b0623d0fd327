"""Banned strings: the matcher, and the engine's guarantee that a banned string never appears
in a result or in streamed text, on the tiny model."""

from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.cli.options import given_settings
from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.banlists import build_bans
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.results import RollbackEvent
from backtrack.engine.settings import Budget
from backtrack.operators import Chaos

PROMPT = "def fib(n: int) -> int:\n"


def BannedStrings(strings=(), regexes=(), ignore_case=False):  # noqa: N802 (the old name)
    """Inline phrases and regexes compiled as a generation compiles them."""
    return build_bans(strings, regexes, ignore_case=ignore_case)


def _contains(text: str, banned: str, ignore_case: bool = False) -> bool:
    flags = regex.IGNORECASE if ignore_case else 0
    return regex.search(regex.escape(banned), text, flags) is not None


# ---------------------------------------------------------------------- the matcher
def test_scan_finds_the_leftmost_match_and_holds_back_partial_ones():
    bans = BannedStrings(["hello", "lo w"])
    assert bans.scan("say hello").match_start == 4
    assert bans.scan("yo low").match_start is None
    found = bans.scan("yo lo w!")
    assert (found.match_start, found.match.text) == (3, "lo w")
    # "hel" may still become "hello": hold back from its start; nothing else pending.
    assert bans.scan("oh hel").hold_from == 3
    assert bans.scan("oh hex").hold_from == len("oh hex")
    assert bans.scan("hello", start=1).match_start is None  # text before start is safe


def test_scan_regex_and_case():
    bans = BannedStrings(regexes=[r"TODO\b", r"x\d+y"], ignore_case=True)
    assert bans.scan("# todos later").match_start is None
    assert bans.scan("# todo: later").match_start == 2
    assert bans.scan("a x12").hold_from == 2  # x12 may go on to x123y
    assert bans.scan("a x12y").match_start == 2
    assert BannedStrings(["As an AI"], ignore_case=True).scan("as an ai").match_start == 0
    assert BannedStrings(["As an AI"]).scan("as an ai").match_start is None


@given(
    text=st.text(alphabet="abc", max_size=12),
    banned=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_scan_agrees_with_brute_force(text, banned):
    found = BannedStrings(banned).scan(text)
    starts = [i for i in range(len(text)) if any(text.startswith(b, i) for b in banned)]
    assert found.match_start == (min(starts) if starts else None)
    if not starts:
        # The earliest start from which the rest of the text is a proper prefix of a ban.
        pending = [i for i in range(len(text)) if any(b.startswith(text[i:]) for b in banned)]
        assert found.hold_from == (min(pending) if pending else len(text))


def test_bad_bans_are_clear_errors():
    import pytest

    for kwargs, message in [
        (dict(strings=[""]), "non-empty"),
        (dict(regexes=["(unclosed"]), "invalid banned regex"),
        (dict(regexes=["a*"]), "matches the empty string"),
        (dict(strings="abc"), "lists of strings"),
        (dict(), "nothing to ban"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            bans = BannedStrings(**kwargs)
            if bans is None:
                raise ValueError("nothing to ban")
    with pytest.raises(ValueError, match="matches the empty string"):
        GenerationConfig(banned_regex=["x?"])


def test_bans_travel_in_the_flat_settings():
    config = GenerationConfig(
        banned_strings=["foo"], banned_regex=[r"ba+r"], banned_ignore_case=True
    )
    flat = config.to_flat()
    assert flat["banned_strings"] == ["foo"] and flat["banned_regex"] == ["ba+r"]
    assert GenerationConfig.from_flat(flat) == config
    from_cli = GenerationConfig.from_flat(
        given_settings({"banned_strings": ["foo"], "banned_ignore_case": True})
    )
    assert from_cli.banned_strings == ("foo",) and from_cli.banned_ignore_case


# ---------------------------------------------------------------------- the engine
def _greedy(decoder: Decoder, max_new_tokens: int = 40):
    return decoder.generate(
        PROMPT, config=GenerationConfig(max_new_tokens=max_new_tokens, temperature=0)
    )


def test_a_match_rolls_back_to_its_first_token_and_bans_it(tiny):
    decoder = Decoder(*tiny)
    plain = _greedy(decoder)
    pieces = [e.text for e in plain.trace]
    # A ban starting in the middle of a multi-character token, spanning the next one.
    i = next(i for i, p in enumerate(pieces[:-1]) if len(p) >= 2 and i > 2)
    start = sum(len(p) for p in pieces[:i]) + 1
    banned = plain.text[start : start + len(pieces[i]) - 1 + len(pieces[i + 1])]
    assert plain.text.find(banned) == start  # its first occurrence
    config = GenerationConfig(max_new_tokens=40, temperature=0, banned_strings=[banned])
    result = decoder.generate(PROMPT, config=config)
    ban_events = [e for e in result.trace if isinstance(e, RollbackEvent)]
    assert ban_events and ban_events[0].operator == "banned-string"
    assert ban_events[0].position == i  # back to the token where the match begins
    assert result.token_ids[:i] == plain.token_ids[:i]
    assert result.token_ids[i] != plain.token_ids[i]  # that token was banned there
    assert banned not in result.text
    assert result.counts.ban_rollbacks >= 1


def test_bans_hold_past_period_retry_cap_and_budget(tiny):
    decoder = Decoder(*tiny)
    plain = _greedy(decoder)
    banned = plain.text[5:8]
    config = GenerationConfig(
        max_new_tokens=40,
        temperature=0,
        period=7,
        max_retries_per_position=0,
        budget=Budget(max_backtracks=0, max_discarded_tokens=0),
        banned_strings=[banned],
    )
    result = decoder.generate(PROMPT, operator=Chaos(p=1.0, seed=1), config=config)
    assert not any(isinstance(e, RollbackEvent) and e.operator == "chaos" for e in result.trace)
    assert result.counts.ban_rollbacks >= 1
    assert banned not in result.text


@settings(max_examples=15)
@given(
    seed=st.integers(0, 10_000),
    start=st.integers(0, 30),
    length=st.integers(1, 4),
    ignore_case=st.booleans(),
    chaos=st.booleans(),
    window=st.sampled_from([None, 2, 8]),
)
def test_a_random_banned_string_never_appears_or_streams(
    tiny, seed, start, length, ignore_case, chaos, window
):
    """Ban a piece of what the model would write anyway, then decode with bans, a chaotic
    operator and a rollback window: the banned string is in no result and no streamed chunk,
    and the streamed chunks add up to exactly the result's text."""
    decoder = Decoder(*tiny)
    sampling = dict(max_new_tokens=30, temperature=1.0, seed=seed)
    plain = decoder.generate(PROMPT, config=GenerationConfig(**sampling))
    # The tiny model writes invalid UTF-8; a completion cut inside a character ends in
    # U+FFFD in result.text (decoded in one go), which no ban can see coming: leave it out.
    banned = plain.text[start : start + length].replace("\ufffd", "") or "e"
    config = GenerationConfig(
        **sampling,
        banned_strings=[banned],
        banned_ignore_case=ignore_case,
        rollback_window=window if window is not None else 32,
    )

    def operator():
        return Chaos(p=0.3, max=3, seed=seed) if chaos else None

    result = decoder.generate(PROMPT, operator(), config)
    assert not _contains(result.text, banned, ignore_case)
    streamed = list(decoder.stream_text(PROMPT, operator(), config))
    assert "".join(streamed) == result.text
    assert not any(_contains(chunk, banned, ignore_case) for chunk in streamed)


def test_batch_rows_enforce_bans_like_the_single_engine(tiny):
    model, tokenizer = tiny
    decoder = Decoder(model, tokenizer)
    plain = _greedy(decoder)
    bans = [plain.text[3:6], plain.text[10:12]]
    config = GenerationConfig(max_new_tokens=40, temperature=0, banned_strings=bans)
    single = decoder.generate(PROMPT, config=config)
    prompts = [PROMPT, PROMPT + "    ", PROMPT]
    batch = BatchDecoder(model, tokenizer).generate_all(
        [(p, None, config) for p in prompts], batch_size=2
    )
    # Greedy batched decoding is token-identical to the single engine (see engine.batch).
    assert batch[0].token_ids == single.token_ids == batch[2].token_ids
    assert all(not any(b in r.text for b in bans) for r in batch)


def test_generate_ban_flags(tiny, tmp_path):
    import json

    from typer.testing import CliRunner

    from backtrack.cli import app

    plain = _greedy(Decoder(*tiny), max_new_tokens=24)
    banned = plain.text[2:5]
    out = tmp_path / "result.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator", "never",
            "--temperature", "0", "--max-new-tokens", "24", "--ban-string", banned,
            "--ban-regex", r"\d{3}", "--ban-ignore-case", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert not _contains(data["text"], banned, ignore_case=True)
    assert not regex.search(r"\d{3}", data["text"])
    assert data["counts"]["ban_rollbacks"] >= 1
    bad = CliRunner().invoke(app, ["generate", "--prompt", "x", "--ban-regex", "a*"])
    assert bad.exit_code == 2 and "matches the empty string" in bad.output

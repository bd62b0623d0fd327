"""The ban matcher against a naive reference, incremental scanning against a full scan, and
ban-list files: both formats, the cache, and every bad input as a one-line error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from backtrack.cli import app
from backtrack.engine import GenerationConfig, banlists
from backtrack.engine.banlists import ban_list, build_bans, read_ban_file, split_entry
from backtrack.engine.banned import Bans, PhraseSet, fold, is_word_char

# A small alphabet with word and non-word characters and both cases, so phrases recur,
# overlap, sit at word boundaries and not.
ALPHABET = "abAB _."
PHRASES = st.dictionaries(
    st.text(ALPHABET, min_size=1, max_size=4), st.sampled_from([0.0, 0.25, 0.5, 1.0]), max_size=4
)


def naive_scan(text, phrases, *, ignore_case, whole_words, strength, hard, start=0, at_end=False):
    """``(match start, match text or None, hold_from)``, by trying every offset."""
    folded = fold(text) if ignore_case else text
    table: dict[str, float] = {}
    for phrase, factor in phrases.items():
        key = fold(phrase) if ignore_case else phrase
        table[key] = min(factor, table.get(key, factor))
    matches, holds = [], [len(text)]
    for phrase, factor in table.items():
        weight = 0.0 if hard or factor == 0 else factor**strength
        for i in range(start, len(text)):
            boundary_before = i == 0 or not is_word_char(text[i - 1])
            if phrase.startswith(folded[i:]) and (boundary_before or not whole_words):
                holds.append(i)  # the rest of the text may still become this phrase
            if not folded.startswith(phrase, i):
                continue
            end = i + len(phrase)
            if whole_words:
                if not boundary_before or (end < len(text) and is_word_char(text[end])):
                    continue
                if end == len(text) and not at_end:
                    holds.append(i)
                    continue
            if weight < 1.0:
                matches.append((i, -len(phrase), text[i:end]))
    if matches:
        first = min(matches)
        return first[0], first[2], first[0]
    return None, None, min(holds)


def _bans(phrases, *, ignore_case, whole_words, strength=1.0, hard=False):
    if not phrases:
        return None
    return Bans(
        [PhraseSet("test", phrases, ignore_case)],
        whole_words=whole_words,
        strength=strength,
        hard=hard,
    )


@given(
    text=st.text(ALPHABET, max_size=14),
    phrases=PHRASES,
    ignore_case=st.booleans(),
    whole_words=st.booleans(),
    hard=st.booleans(),
    start=st.integers(0, 4),
    at_end=st.booleans(),
)
def test_the_matcher_agrees_with_a_naive_reference(
    text, phrases, ignore_case, whole_words, hard, start, at_end
):
    bans = _bans(phrases, ignore_case=ignore_case, whole_words=whole_words, hard=hard)
    if bans is None:
        return
    start = min(start, len(text))
    found = bans.scan(text, start, at_end=at_end)
    expected = naive_scan(
        text,
        phrases,
        ignore_case=ignore_case,
        whole_words=whole_words,
        strength=1.0,
        hard=hard,
        start=start,
        at_end=at_end,
    )
    got = (found.match_start, found.match.text if found.match else None, found.hold_from)
    assert got == expected


@given(
    chunks=st.lists(st.text(ALPHABET, min_size=1, max_size=3), min_size=1, max_size=8),
    phrases=PHRASES,
    ignore_case=st.booleans(),
    whole_words=st.booleans(),
)
def test_scanning_the_new_text_only_finds_what_a_full_scan_finds(
    chunks, phrases, ignore_case, whole_words
):
    """As a session scans (a window of the new text after each token), up to the first match
    a session would have rolled back."""
    bans = _bans(phrases, ignore_case=ignore_case, whole_words=whole_words)
    if bans is None:
        return
    text, seen = "", 0
    for chunk in chunks:
        text += chunk
        incremental = bans.scan(text, 0, new_from=seen)
        full = bans.scan(text, 0)
        assert incremental == full
        if full.match is not None:
            break
        seen = len(text)


def test_whole_words_and_case():
    bans = _bans({"mia": 0.0}, ignore_case=True, whole_words=True)
    assert bans.scan("Miami and academia").match is None
    assert bans.scan("off to Mia, then").match_start == 7
    # At the very end the word may still go on ("Miami"): held back, matched once complete.
    assert bans.scan("dear mia").hold_from == 5 and bans.scan("dear mia").match is None
    assert bans.scan("dear mia", at_end=True).match_start == 5
    assert _bans({"mia": 0.0}, ignore_case=False, whole_words=False).scan("academia").match
    # Soft and hard: the weight of a phrase is factor ** strength, 0 if hard.
    soft = _bans({"tapestry": 0.5}, ignore_case=False, whole_words=True, strength=2.0)
    assert soft.scan("a tapestry.").match.weight == 0.25
    assert _bans({"x": 1.0}, ignore_case=False, whole_words=False).scan("x y").match is None


def test_a_list_of_a_million_phrases_works(tmp_path):
    """The stated limit is MAX_PHRASES (2,000,000); a million compiles (about 7 s on one core
    of the development machine, see banlists.py) and matches like any list."""
    path = tmp_path / "million.txt"
    path.write_text("\n".join(f"w{i:07d}" for i in range(1_000_000)) + "\n")
    phrases = ban_list(path)
    assert phrases.size == 1_000_000
    bans = Bans([phrases], whole_words=True)
    assert bans.scan("say w0999999 now").match.text == "w0999999"


# ---------------------------------------------------------------------- files
def test_both_formats_read(tmp_path):
    text = tmp_path / "words.txt"
    text.write_bytes(b"As an AI\r\ndelve\n")
    assert read_ban_file(text) == {"As an AI": 0.0, "delve": 0.0}
    soft = tmp_path / "slop.json"
    soft.write_text(json.dumps([["tapestry", 0.03], ["Tapestry", 0.5], ["delve", 1]]))
    assert read_ban_file(soft) == {"tapestry": 0.03, "Tapestry": 0.5, "delve": 1.0}
    # Folded alike, the stronger down-weighting holds.
    assert ban_list(soft, ignore_case=True).size == 2
    assert split_entry(f"slop={soft}") == ("slop", str(soft))
    assert split_entry(str(soft)) == ("slop", str(soft))


def test_the_shipped_antislop_lists_read(shared_data):
    full = shared_data / "antislop" / "slop_phrase_prob_adjustments_full_list.json"
    phrases = ban_list(full, ignore_case=True)
    assert phrases.size == 48_002  # 50,046 rows, 48,002 distinct once lower-cased
    assert ban_list(full, ignore_case=True) is phrases  # compiled once, shared


def test_a_changed_file_is_read_again(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("one\n")
    first = ban_list(path)
    path.write_text("one\ntwo\n")
    assert ban_list(path) is not first and ban_list(path).size == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (b"ok\n\nmore\n", "line 2 is empty"),
        (b"ok\n\xff\xfe\n", "line 2 is not valid UTF-8"),
        (b"", "holds no phrases"),
        (b'[["a", 0.5], "b"]', r"row 2 is not \[phrase, factor\]"),
        (b'[["a", 0.5, 1]]', r"row 1 is not \[phrase, factor\]"),
        (b'[["a", "0.5"]]', r"row 1 is not \[phrase, factor\]"),
        (b'[["a", 1.5]]', r"factor 1.5; factors are in \[0, 1\]"),
        (b'[["a", -0.1]]', "factors are in"),
        (b'[["", 0.5]]', "row 1 has an empty phrase"),
        (b"[[", "is not valid JSON"),
        (b"[]", "non-empty JSON list"),
    ],
)
def test_bad_lists_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        ban_list(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_too_many_phrases_are_refused_with_the_stated_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(banlists, "MAX_PHRASES", 3)
    path = tmp_path / "big.txt"
    path.write_text("a\nb\nc\nd\n")
    with pytest.raises(ValueError, match="has 4 phrases; the limit is 3"):
        read_ban_file(path)


def test_config_and_cli_refuse_bad_lists_before_any_model_loads(tmp_path):
    with pytest.raises(ValueError, match="cannot read ban list"):
        GenerationConfig(ban_files=[str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="ban_strength must be >= 0"):
        GenerationConfig(ban_strength=-1)
    bad = tmp_path / "bad.json"
    bad.write_text('[["x", 2]]')
    result = CliRunner().invoke(
        app, ["generate", "--model", "no-such-model", "--prompt", "x", "--ban-file", str(bad)]
    )
    assert result.exit_code == 2 and "factors are in [0, 1]" in result.output
    assert "no-such-model" not in result.output  # refused before the model was looked up


def test_build_bans_shares_compiled_lists(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("alpha\n")
    one = build_bans(["x"], files=[str(path)], ignore_case=True)
    two = build_bans(["x"], files=[str(path)], ignore_case=True, whole_words=True)
    assert one.phrase_sets[0] is two.phrase_sets[0] and one.phrase_sets[1] is two.phrase_sets[1]
    assert build_bans() is None

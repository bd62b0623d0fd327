"""Named ban lists on the server: loaded and compiled once at start (``--ban-list NAME=PATH``),
named by requests (``backtrack.ban_lists``), with the request's options; the top-level
``banned_strings`` of TabbyAPI; bad names and bad lists as clear errors, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest
from test_serve import PROMPT, LiveServer
from typer.testing import CliRunner

from backtrack.cli import app as cli_app
from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.banlists import ban_list
from backtrack.engine.banned import is_word_char
from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings


def _words(text: str) -> set[str]:
    word, words = "", set()
    for char in text + " ":
        if is_word_char(char):
            word += char
        elif word:
            words.add(word)
            word = ""
    return words


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """A hard text list and a soft antislop-style list of words the tiny model writes."""
    from backtrack.models.tiny import build_tiny_model

    decoder = Decoder(*build_tiny_model())
    plain = decoder.generate(PROMPT, config=GenerationConfig(max_new_tokens=40, temperature=0))
    words = sorted(_words(plain.text))
    folder = tmp_path_factory.mktemp("lists")
    hard, soft = folder / "hard.txt", folder / "soft.json"
    hard.write_text("\n".join(words[:4]) + "\n")
    soft.write_text(json.dumps([[w, 0.2] for w in words[4:8]]))
    return {"hard": str(hard), "soft": str(soft), "words": words}


@pytest.fixture(scope="module")
def server(lists):
    settings = ServeSettings(
        [TINY_MODEL_NAME],
        max_tokens_limit=200,
        ban_lists={"hard": lists["hard"], "soft": lists["soft"]},
    )
    with LiveServer(settings) as live:
        yield live


def _complete(server, **body):
    payload = {"model": TINY_MODEL_NAME, "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
    return httpx.post(f"{server.url}/v1/completions", json={**payload, **body}, timeout=60)


def test_a_named_list_decodes_as_the_engine_does_with_the_file(server, lists):
    reply = _complete(server, backtrack={"ban_lists": ["hard"], "ban_whole_words": True})
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert not _words(choice["text"]) & set(lists["words"][:4])
    config = GenerationConfig(
        max_new_tokens=40,
        temperature=0,
        rollback_window=32,
        ban_files=[f"hard={lists['hard']}"],
        ban_whole_words=True,
    )
    expected = Decoder(server.model, server.tokenizer).generate(PROMPT, config=config)
    assert choice["text"] == expected.text
    assert choice["backtrack"]["ban_rollbacks"] == expected.counts.ban_rollbacks >= 1


def test_the_list_is_compiled_once_and_shared(server, lists):
    """Requests reuse what the server compiled at start: the same object, not a rebuild."""
    before = ban_list(f"soft={lists['soft']}", ignore_case=True)
    for _ in range(2):
        body = {"ban_lists": ["soft", "hard"], "ban_ignore_case": True, "trace": True}
        assert _complete(server, backtrack=body).status_code == 200
    assert ban_list(f"soft={lists['soft']}", ignore_case=True) is before


def test_soft_options_travel_and_the_trace_names_the_phrase_and_its_list(server, lists):
    body = {"ban_lists": ["soft"], "ban_strength": 2.0, "trace": True}
    reply = _complete(server, backtrack=body).json()
    events = [e for e in reply["choices"][0]["backtrack"]["trace"] if e["kind"] == "rollback"]
    bans = [e for e in events if e["banned"] is not None]
    assert bans, "no soft ban fired"
    assert {e["ban_list"] for e in bans} == {"soft"}
    assert all(abs(e["ban_weight"] - 0.2**2) < 1e-12 for e in bans)
    hard = _complete(server, backtrack={**body, "ban_hard": True}).json()
    events = [e for e in hard["choices"][0]["backtrack"]["trace"] if e["kind"] == "rollback"]
    assert all(e["ban_weight"] == 0.0 for e in events if e["banned"] is not None)


def test_top_level_banned_strings_are_tabbyapis_spelling(server, lists):
    word = lists["words"][0]
    reply = _complete(server, banned_strings=[word])
    assert reply.status_code == 200
    assert word not in reply.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"backtrack": {"ban_lists": ["nope"]}}, "unknown ban list 'nope'"),
        ({"backtrack": {"ban_strength": -1}}, "ban_strength"),
        ({"backtrack": {"ban_lists": "hard"}}, "ban_lists"),
    ],
)
def test_bad_ban_requests_are_clear_errors_not_500(server, body, message):
    reply = _complete(server, **body)
    assert reply.status_code in (400, 422), reply.text
    assert message in reply.json()["error"]["message"]


def test_serve_refuses_a_bad_list_before_loading_the_model(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    runner = CliRunner()
    args = ["serve", "--model", "no-such-model", "--port", "0"]
    result = runner.invoke(cli_app, [*args, "--ban-list", f"slop={bad}"])
    assert result.exit_code == 2 and "line 2 is not valid UTF-8" in result.output
    result = runner.invoke(cli_app, [*args, "--ban-list", "nameless"])
    assert result.exit_code == 2 and "--ban-list takes NAME=PATH" in result.output
    result = runner.invoke(cli_app, [*args, "--ban-list", f"bad/name={bad}"])
    assert result.exit_code == 2 and "ban list name" in result.output


def test_metrics_count_ban_hits_by_list(server):
    """/metrics: every ban's rollback is a hit of the list it came from (the server's name for
    it, or "inline" for a request's own phrases)."""
    from prometheus_client.parser import text_string_to_metric_families

    def hits() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        return {
            s.labels["list"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "backtrack_ban_hits_total"
        }

    before = hits()
    body = {"ban_lists": ["hard"], "ban_whole_words": True, "trace": True}
    reply = _complete(server, backtrack=body).json()["choices"][0]["backtrack"]
    bans = [e for e in reply["trace"] if e["kind"] == "rollback" and e["banned"] is not None]
    after = hits()
    assert after.get("hard", 0) - before.get("hard", 0) == len(bans) == reply["ban_rollbacks"] > 0

"""``backtrack serve`` on a network: API keys, ``/metrics``, request ids and strict fields.

Real servers on loopback (uvicorn in a thread, the tiny model, as tests/test_serve.py runs
them) driven by the official ``openai`` client, and raw httpx where a header matters;
``/metrics`` is parsed with prometheus-client's own parser. The CLI's refusals run through
typer's runner (they stop before any model loads).
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import PROMPT, LiveServer
from typer.testing import CliRunner

from backtrack.cli import app as cli_app
from backtrack.engine import Decoder, GenerationConfig
from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings
from backtrack.serving.auth import authorized, read_api_key_file

KEY, OTHER_KEY = "sk-test-7f3a9c", "second-key-42"
MESSAGES = [{"role": "user", "content": "Write fib."}]


def _client(live: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed():
    """A server with two API keys (strict fields, the default)."""
    settings = ServeSettings([TINY_MODEL_NAME], max_tokens_limit=2000, api_keys=[KEY, OTHER_KEY])
    with LiveServer(settings) as live:
        yield live


# ---------------------------------------------------------------------- API keys
def test_the_right_keys_are_served(keyed):
    for key in (KEY, OTHER_KEY):
        client = _client(keyed, key)
        assert [m.id for m in client.models.list().data] == [TINY_MODEL_NAME]
        reply = client.completions.create(model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4)
        assert reply.usage.completion_tokens == 4
    stream = _client(keyed, KEY).chat.completions.create(
        model=TINY_MODEL_NAME, messages=MESSAGES, max_tokens=6, stream=True
    )
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"


@pytest.mark.parametrize("key", ["wrong-key", KEY + "x", KEY[:-1], ""])
def test_a_wrong_or_missing_key_is_an_authentication_error(keyed, key):
    client = _client(keyed, key or "unsent")
    # "": no Authorization header at all (the client must be told to leave it out).
    extra = {"extra_headers": {"Authorization": openai.omit}} if not key else {}
    calls = [
        lambda: client.models.list(**extra),
        lambda: client.completions.create(
            model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4, **extra
        ),
        lambda: client.completions.create(
            model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4, stream=True, **extra
        ),
        lambda: client.chat.completions.create(
            model=TINY_MODEL_NAME, messages=MESSAGES, max_tokens=4, stream=True, **extra
        ),
    ]
    for call in calls:
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        error = info.value.body
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert ("missing API key" if key == "" else "invalid API key") in error["message"]
        assert info.value.response.headers["www-authenticate"] == "Bearer"
    assert keyed.scheduler.queued() == 0 and keyed.scheduler.live_rows == 0  # nothing decoded


def test_what_stays_open_without_a_key(keyed):
    assert httpx.get(f"{keyed.url}/health", timeout=30).status_code == 200
    page = httpx.get(f"{keyed.url}/", timeout=30)  # the playground asks for the key itself
    assert page.status_code == 200 and "sessionStorage" in page.text
    assert httpx.get(f"{keyed.url}/openapi.json", timeout=30).status_code == 200
    for path in ("/metrics", "/v1/models", "/v1/nowhere", "/v1"):
        refused = httpx.get(f"{keyed.url}{path}", timeout=30)
        assert refused.status_code == 401, path
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    scheme_only = httpx.get(f"{keyed.url}/metrics", headers={"Authorization": "Basic " + KEY})
    assert scheme_only.status_code == 401


def test_keys_are_compared_whole():
    keys = [KEY, OTHER_KEY]
    assert authorized(KEY, keys) and authorized(OTHER_KEY, keys)
    for wrong in ("", KEY[:-1], KEY + " ", KEY.upper(), OTHER_KEY + KEY):
        assert not authorized(wrong, keys), wrong


def test_key_files(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# the team's keys\n{KEY}\n\n  {OTHER_KEY}  \n")
    assert read_api_key_file(path) == [KEY, OTHER_KEY]
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no key"):
        read_api_key_file(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_api_key_file(tmp_path / "absent")
    with pytest.raises(ValueError, match="whitespace"):
        ServeSettings(["m"], api_keys=["two words"])


# ---------------------------------------------------------------------- the CLI
def _serve(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli_app, ["serve", "--model", "no-such-model", *args], env=env)


def test_serve_refuses_a_network_address_without_a_key():
    result = _serve("--host", "0.0.0.0", "--port", "1")
    assert result.exit_code == 2
    assert "not loopback" in result.output and "--no-api-key" in result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--no-api-key", "--api-key", KEY], "contradicts"),
        (["--api-key-file", "/no/such/file"], "cannot read the API key file"),
        (["--api-key", "has space"], "whitespace"),
        (["--drain-timeout", "-1"], "drain timeout"),
    ],
)
def test_serve_refuses_bad_key_options_before_loading_anything(args, words):
    with socket.socket() as probe:  # a free port: the checks, not the address, must refuse
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _serve("--port", str(port), *args)
    assert result.exit_code == 2 and words in result.output, result.output


def test_serve_takes_the_key_from_the_environment_or_an_explicit_no_key():
    """With a key in BACKTRACK_API_KEY (or --no-api-key), a network address passes the key
    check and serve goes on to bind it (here, a busy port stops it)."""
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for args, env in [
            ([], {"BACKTRACK_API_KEY": f"{KEY} {OTHER_KEY}"}),
            (["--no-api-key"], {}),
        ]:
            result = _serve("--host", "0.0.0.0", "--port", port, *args, env=env)
            assert result.exit_code == 2 and "cannot listen" in result.output, result.output


def test_help_warns_that_a_key_on_the_command_line_is_visible():
    result = CliRunner().invoke(cli_app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "visible to every user of this machine in ps" in " ".join(result.output.split())


# ---------------------------------------------------------------------- request ids
def test_every_response_carries_a_request_id(keyed, caplog):
    caplog.set_level(logging.INFO, logger="backtrack.serving")
    client = _client(keyed, KEY)
    raw = client.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4
    )
    generated = raw.headers["x-request-id"]
    assert generated.startswith("cmpl-") and raw.parse().id == generated
    raw = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME,
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        extra_headers={"X-Request-Id": "trace-42"},
    )
    assert raw.headers["x-request-id"] == "trace-42"
    assert {chunk.id for chunk in raw.parse()} == {"trace-42"}
    errors = [
        httpx.get(f"{keyed.url}/v1/models"),  # 401
        httpx.post(f"{keyed.url}/v1/completions", headers=_auth(), json={"model": "m"}),  # 422
        httpx.get(f"{keyed.url}/v1/models/gpt-17", headers=_auth()),  # 404
        httpx.get(f"{keyed.url}/v1/models", headers={**_auth(), "X-Request-Id": "a b"}),
    ]
    ids = [r.headers["x-request-id"] for r in errors]
    assert all(i.startswith("req-") for i in ids) and len(set(ids)) == len(ids)
    # Each request's access line carries its id (logged once its response is over).
    lines = _access_lines(caplog, [generated, "trace-42", *ids])
    assert '"POST /v1/completions" 200' in lines[generated]
    assert '"POST /v1/chat/completions" 200' in lines["trace-42"]
    assert '"GET /v1/models" 401' in lines[ids[0]] and "missing API key" in lines[ids[0]]


def _access_lines(caplog, ids: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while True:
        lines = {i: m for m in caplog.messages for i in ids if m.startswith(i + " ")}
        if len(lines) == len(ids) or time.monotonic() > deadline:
            assert set(lines) == set(ids), caplog.messages
            return lines
        time.sleep(0.05)


def test_an_unexpected_error_is_logged_with_its_request_id(keyed, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("backtrack.serving.routes.chat_prompt", broken)
    caplog.set_level(logging.INFO, logger="backtrack.serving")
    with pytest.raises(openai.InternalServerError) as info:
        _client(keyed, KEY).chat.completions.create(
            model=TINY_MODEL_NAME, messages=MESSAGES, max_tokens=4
        )
    rid = info.value.response.headers["x-request-id"]
    assert info.value.body["message"] == "internal error: RuntimeError"
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and rid in r.message]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "a bug" in failures[0].message


def test_a_decoding_failure_is_logged_with_the_ids_it_failed(keyed, caplog, monkeypatch):
    def broken(self):
        raise RuntimeError("the model broke")

    # The step after the prefill fails (the request has its row by then).
    monkeypatch.setattr("backtrack.engine.batch_run.BatchRun._forward", broken)
    caplog.set_level(logging.INFO, logger="backtrack.serving")
    with pytest.raises(openai.InternalServerError) as info:
        _client(keyed, KEY).completions.create(model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4)
    rid = info.value.response.headers["x-request-id"]
    assert "decoding failed: RuntimeError: the model broke" in info.value.body["message"]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1 and f"(requests {rid})" in failures[0].message
    assert failures[0].exc_info is not None


# ---------------------------------------------------------------------- strict fields
def test_unknown_fields_are_refused_by_name(keyed):
    client = _client(keyed, KEY)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4, extra_body={"repeat_penalty": 1.1}
        )
    assert info.value.body["message"] == "Unrecognized request argument supplied: repeat_penalty"
    assert info.value.body["param"] == "repeat_penalty"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=TINY_MODEL_NAME, messages=MESSAGES, extra_body={"mirostat": 2, "typo_p": 0.9}
        )
    assert info.value.body["message"] == "Unrecognized request arguments supplied: mirostat, typo_p"


def test_openai_fields_the_server_lacks_say_so(keyed):
    client = _client(keyed, KEY)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=TINY_MODEL_NAME, messages=MESSAGES, tools=[tool])
    assert info.value.body["message"] == "tools is not supported by this server"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=TINY_MODEL_NAME, messages=MESSAGES, response_format={"type": "json_object"}
        )
    assert info.value.body["param"] == "response_format"


def test_ignore_unknown_fields_logs_each_once(caplog):
    caplog.set_level(logging.WARNING, logger="backtrack.serving")
    settings = ServeSettings([TINY_MODEL_NAME], ignore_unknown_fields=True)
    with LiveServer(settings) as live:
        client = live.client()
        for _ in range(3):
            reply = client.completions.create(
                model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=3, extra_body={"repeat_penalty": 2}
            )
            assert reply.usage.completion_tokens == 3
        with pytest.raises(openai.BadRequestError, match="tools is not supported"):
            client.completions.create(
                model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=3, extra_body={"tools": []}
            )
    logged = [m for m in caplog.messages if "repeat_penalty" in m]
    assert len(logged) == 1 and "--ignore-unknown-fields" in logged[0]


# ---------------------------------------------------------------------- /metrics
def _scrape(live: LiveServer) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics, by (name, labels), parsed by prometheus-client."""
    reply = httpx.get(f"{live.url}/metrics", headers=_auth(), timeout=30)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_the_requests_sent():
    settings = ServeSettings([TINY_MODEL_NAME], max_tokens_limit=2000, api_keys=[KEY])
    with LiveServer(settings) as live:
        client = _client(live, KEY)
        plain = Decoder(live.model, live.tokenizer).generate(
            PROMPT, None, GenerationConfig(max_new_tokens=30, temperature=0)
        )
        chaos = {"operator": "chaos:p=0.4,max=3,seed=2", "rollback_window": 4}
        replies = [
            client.completions.create(
                model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=24, extra_body={"backtrack": chaos}
            ),
            client.completions.create(
                model=TINY_MODEL_NAME, prompt=["a", "bc"], max_tokens=5, temperature=0
            ),
            client.completions.create(
                model=TINY_MODEL_NAME,
                prompt=PROMPT,
                max_tokens=30,
                temperature=0,
                extra_body={"backtrack": {"banned_strings": [plain.text[4:8]]}},
            ),
        ]
        stream = client.chat.completions.create(
            model=TINY_MODEL_NAME,
            messages=MESSAGES,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=99_999)
        with pytest.raises(openai.AuthenticationError):
            _client(live, "wrong").completions.create(model=TINY_MODEL_NAME, prompt="x")
        assert httpx.get(f"{live.url}/metrics").status_code == 401
        deadline = time.monotonic() + 10  # the scheduler's row count follows its last step
        while live.scheduler.live_rows:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        samples = _scrape(live)
        choices = [c for r in replies for c in r.choices]
        info = [c.backtrack for c in choices] + [chunks[-2].choices[0].backtrack]
        usages = [r.usage for r in replies] + [chunks[-1].usage]
        completion = "/v1/completions"
        assert _value(samples, "backtrack_requests_total", endpoint=completion, status="200") == 3
        assert _value(samples, "backtrack_requests_total", endpoint=completion, status="400") == 1
        assert _value(samples, "backtrack_requests_total", endpoint=completion, status="401") == 1
        assert _value(samples, "backtrack_requests_total", endpoint="/metrics", status="401") == 1
        chat = "/v1/chat/completions"
        assert _value(samples, "backtrack_requests_total", endpoint=chat, status="200") == 1
        assert _value(samples, "backtrack_request_duration_seconds_count", endpoint=completion) == 5
        assert _value(samples, "backtrack_prompt_tokens_total") == sum(
            u.prompt_tokens for u in usages
        )
        assert _value(samples, "backtrack_completion_tokens_total") == sum(
            u.completion_tokens for u in usages
        )
        assert _value(samples, "backtrack_rollbacks_total") == sum(i["rollbacks"] for i in info) > 0
        assert _value(samples, "backtrack_tokens_deleted_total") == sum(
            i["tokens_discarded"] for i in info
        )
        bans = _value(samples, "backtrack_ban_hits_total", list="inline")
        assert bans == sum(i["ban_rollbacks"] for i in info) > 0
        reasons = Counter(c.finish_reason for c in choices) + Counter(
            [chunks[-2].choices[0].finish_reason]
        )
        for reason, count in reasons.items():
            assert _value(samples, "backtrack_choices_total", finish_reason=reason) == count
        # Every choice sampled a first token; each of more than one token has a per-token time.
        assert _value(samples, "backtrack_time_to_first_token_seconds_count") == 5
        assert _value(samples, "backtrack_time_per_output_token_seconds_count") == 5
        assert _value(samples, "backtrack_queue_depth") == 0
        assert _value(samples, "backtrack_batch_rows") == 0
        assert _value(samples, "backtrack_requests_in_flight") == 1  # the scrape itself

        # A stream in flight is a row of the batch and a request in flight.
        running = client.completions.create(
            model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=2000, temperature=0, stream=True
        )
        next(iter(running))
        samples = _scrape(live)
        assert _value(samples, "backtrack_batch_rows") == 1
        assert _value(samples, "backtrack_requests_in_flight") == 2
        running.close()

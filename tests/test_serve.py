"""``backtrack serve`` on loopback, driven by the official ``openai`` client (and raw httpx
where a header or a malformed body matters), on the tiny model.

Every expected text comes from the single-sequence engine (``Decoder.generate``) with the same
settings: greedy decoding in a batch is token-identical to it (see ``engine.batch``), so a
lost, duplicated or deleted-then-streamed token shows up as a difference.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import openai
import pytest
import regex
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from backtrack.cli import app as cli_app
from backtrack.engine import Decoder, GenerationConfig
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model
from backtrack.operators import parse_operator
from backtrack.serving import ServeSettings, create_app

PROMPT = "def fib(n: int) -> int:\n"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, settings: ServeSettings) -> None:
        model, tokenizer = build_tiny_model()
        tokenizer.chat_template = CHATML
        self.model, self.tokenizer = model, tokenizer
        self.app = create_app(model, tokenizer, settings)
        self.port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, **kwargs)

    @property
    def scheduler(self):
        return self.app.state.scheduler


@pytest.fixture(scope="module")
def server():
    settings = ServeSettings(
        [TINY_MODEL_NAME], max_batch=8, max_queue=64, max_tokens_limit=2000, max_prompt_tokens=512
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def decoder(server):
    return Decoder(server.model, server.tokenizer)


def _reference(decoder, prompt=PROMPT, operator=None, **config):
    config.setdefault("rollback_window", 32)  # the server's default window
    return decoder.generate(
        prompt, parse_operator(operator) if operator else None, GenerationConfig(**config)
    )


# ---------------------------------------------------------------------- the happy paths
def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [TINY_MODEL_NAME]


def test_completion_matches_the_engine(server, decoder):
    reply = server.client().completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0
    )
    expected = _reference(decoder, max_new_tokens=24, temperature=0)
    choice = reply.choices[0]
    assert choice.text == expected.text
    assert choice.finish_reason == (
        "length" if expected.finish_reason == "max_new_tokens" else "stop"
    )
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert choice.backtrack["rollbacks"] == 0


def test_streaming_backtracking_sends_only_final_text(server, decoder):
    """A chaotic operator with a small window: the chunks add up to exactly the final text
    (nothing later deleted was ever sent), which is the engine's."""
    backtrack = {"operator": "chaos:p=0.4,max=3,seed=2", "rollback_window": 4, "trace": True}
    client = server.client()
    stream = client.completions.create(
        model=TINY_MODEL_NAME,
        prompt=PROMPT,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"backtrack": backtrack},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    expected = _reference(
        decoder,
        operator="chaos:p=0.4,max=3,seed=2",
        max_new_tokens=40,
        temperature=0,
        rollback_window=4,
    )
    assert expected.counts.backtracks > 0
    assert text == expected.text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0].choices[0]
    assert final.backtrack["rollbacks"] == expected.counts.backtracks
    assert len(final.backtrack["trace"]) == len(expected.trace)
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)
    # More than one chunk arrived before the end: text was streamed as it became final.
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) > 1


def test_chat_completion_uses_the_chat_template(server, decoder):
    messages = [{"role": "user", "content": "Write fib."}]
    reply = server.client().chat.completions.create(
        model=TINY_MODEL_NAME, messages=messages, max_tokens=20, temperature=0
    )
    prompt = server.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    expected = _reference(decoder, prompt, max_new_tokens=20, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text
    stream = server.client().chat.completions.create(
        model=TINY_MODEL_NAME, messages=messages, max_tokens=20, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == expected.text


def test_n_choices_and_seeds(server):
    client = server.client()
    reply = client.completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7, n=3
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    again = client.completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7, n=3
    )
    # Same seeds, same choices (each a row with its own seeded generator).
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]


# ---------------------------------------------------------------------- banned strings
def test_banned_strings_request(server, decoder):
    plain = _reference(decoder, max_new_tokens=30, temperature=0)
    banned = plain.text[4:8]
    client = server.client()
    body = {"backtrack": {"banned_strings": [banned]}}
    reply = client.completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=30, temperature=0, extra_body=body
    )
    assert banned not in reply.choices[0].text
    assert reply.choices[0].backtrack["ban_rollbacks"] >= 1
    expected = _reference(decoder, max_new_tokens=30, temperature=0, banned_strings=[banned])
    assert reply.choices[0].text == expected.text


@settings(max_examples=8)
@given(
    seed=st.integers(0, 1000),
    start=st.integers(0, 20),
    length=st.integers(1, 3),
    ignore_case=st.booleans(),
)
def test_a_random_banned_string_is_never_streamed(
    server, decoder, seed, start, length, ignore_case
):
    plain = _reference(decoder, max_new_tokens=24, temperature=1.0, top_k=None, seed=seed)
    banned = plain.text[start : start + length].replace("\ufffd", "") or "e"
    stream = server.client().completions.create(
        model=TINY_MODEL_NAME,
        prompt=PROMPT,
        max_tokens=24,
        temperature=1.0,
        seed=seed,
        stream=True,
        extra_body={
            "backtrack": {
                "banned_strings": [banned],
                "ban_ignore_case": ignore_case,
                "operator": "chaos:p=0.2,seed=3",
                "rollback_window": 6,
            }
        },
    )
    chunks = [c.choices[0].text for c in stream if c.choices]
    flags = regex.IGNORECASE if ignore_case else 0
    assert not any(regex.search(regex.escape(banned), c, flags) for c in chunks)
    assert not regex.search(regex.escape(banned), "".join(chunks), flags)


# ---------------------------------------------------------------------- concurrency
def test_32_concurrent_streaming_clients(server, decoder):
    """Every response complete and exactly the engine's: no token lost or duplicated."""
    prompts = [f"def f{i}(x):\n    return x" + " +" * (i % 5) for i in range(32)]

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.completions.create(
            model=TINY_MODEL_NAME, prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def everyone() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        async with client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    texts = asyncio.run(everyone())
    for prompt, text in zip(prompts, texts, strict=True):
        assert text == _reference(decoder, prompt, max_new_tokens=16, temperature=0).text


def test_a_cancelled_stream_frees_its_row(server):
    scheduler = server.scheduler
    before = scheduler.cancelled_rows
    # Greedy from this prompt runs the whole 2000 tokens (no EOS), about 20+ s of decoding.
    stream = server.client().completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=2000, temperature=0, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 60
    while scheduler.cancelled_rows == before or scheduler.live_rows:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.05)
    assert scheduler.cancelled_rows == before + 1  # freed while decoding, not finished


# ---------------------------------------------------------------------- errors
def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert "Traceback" not in response.text
    return body["error"]


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"model": "gpt-17"}, 404, "does not exist"),
        ({"max_tokens": 5000}, 400, "--max-tokens-limit"),
        ({"temperature": 5}, 422, "temperature"),
        ({"prompt": "x" * 600}, 400, "--max-prompt-tokens"),
        ({"max_tokens": 1990, "prompt": "y " * 200}, 400, "context"),
        ({"backtrack": {"operator": "no-such-op"}}, 400, "unknown operator"),
        ({"backtrack": {"operator": "rl:path=/tmp/x.zip"}}, 400, "learned operators"),
        ({"backtrack": {"banned_regex": ["(open"]}}, 400, "invalid banned regex"),
        ({"backtrack": {"wat": 1}}, 400, "backtrack.wat"),
        ({"repeat_penalty": 1.1}, 400, "Unrecognized request argument supplied: repeat_penalty"),
        ({"logprobs": 6}, 422, "logprobs"),
        ({"suffix": "x"}, 400, "suffix"),
        ({"max_tokens": 0}, 400, "echo"),
        ({"prompt": [999999]}, 400, "token ids"),
        ({"stop": [""]}, 422, "stop"),
    ],
)
def test_bad_requests_get_openai_errors(server, changes, status, words):
    body = {"model": TINY_MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, **changes}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert words in _error(response)["message"]


def test_errors_through_the_openai_client(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=TINY_MODEL_NAME, prompt="x", max_tokens=99_999)


def test_malformed_bodies_and_unknown_routes(server):
    bad_json = httpx.post(
        f"{server.url}/v1/completions",
        content=b"{",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400 and "JSON" in _error(bad_json)["message"]
    missing = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": TINY_MODEL_NAME}, timeout=30
    )
    assert missing.status_code == 422 and "messages" in _error(missing)["message"]
    nowhere = httpx.get(f"{server.url}/v1/nowhere", timeout=30)
    assert nowhere.status_code == 404 and "no such endpoint" in _error(nowhere)["message"]
    huge = httpx.post(
        f"{server.url}/v1/completions",
        content=b"x" * 4_000_001,
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413


def test_a_full_queue_answers_503_with_retry_after():
    settings = ServeSettings([TINY_MODEL_NAME], max_batch=1, max_queue=1, max_tokens_limit=2000)
    with LiveServer(settings) as live:
        client = live.client()
        body = dict(
            model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=2000, temperature=0, stream=True
        )
        running = client.completions.create(**body)  # takes the one row
        next(iter(running))
        waiting = client.completions.create(**body)  # waits in the queue
        deadline = time.monotonic() + 30
        while live.scheduler.queued() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(
            f"{live.url}/v1/completions", json={**body, "stream": False}, timeout=30
        )
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "busy" in _error(refused)["message"]
        running.close()
        waiting.close()


def test_serve_refuses_a_busy_port_before_loading_anything():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli_app, ["serve", "--model", "no-such-model", "--port", str(port)]
        )
    assert result.exit_code == 2
    assert "cannot listen" in result.output


def test_serve_refuses_a_bad_operator():
    result = CliRunner().invoke(cli_app, ["serve", "--operator", "bogus", "--port", "1"])
    assert result.exit_code == 2 and "unknown operator" in result.output

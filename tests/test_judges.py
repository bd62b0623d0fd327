"""Tests for the judges: a real loopback HTTP server for the OpenAI judge, the tiny model locally.

The HTTP judge is tested against an actual ``ThreadingHTTPServer`` on 127.0.0.1 speaking the
OpenAI chat-completions format, rather than a mocked transport, so timeouts, connection errors
and headers go through the same code paths as with vLLM or llama.cpp.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from backtrack.models import load_model
from backtrack.rl.judges import (
    NEUTRAL_SCORE,
    Judge,
    JudgeConfigError,
    JudgeError,
    LocalJudge,
    OpenAIJudge,
    TestsOnlyJudge,
    make_judge,
    parse_rating,
)
from backtrack.rl.judges import openai_http as judges  # backoff tests patch its time.sleep

PROBLEM = 'def double(x: int) -> int:\n    """Return twice x."""\n'
CODE = "    return 2 * x"


# --------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server on loopback
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted server answer: chat ``content`` (or a raw ``body``) after ``delay`` s."""

    content: str | None = '{"score": 7}'
    status: int = 200
    body: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAIServer:
    """Serves scripted replies in order (the last one repeats) and records every request."""

    def __init__(self) -> None:
        self.script: list[Reply] = [Reply()]
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server._lock:
                    server.requests.append(
                        Recorded(self.path, dict(self.headers), json.loads(raw or b"{}"))
                    )
                    index = len(server.requests) - 1
                    reply = server.script[min(index, len(server.script) - 1)]
                if reply.delay:
                    # Event.wait, not time.sleep: tests may patch time.sleep to record backoff.
                    threading.Event().wait(reply.delay)
                if reply.body is not None:
                    payload = reply.body.encode()
                else:
                    payload = json.dumps(
                        {
                            "id": "chatcmpl-test",
                            "object": "chat.completion",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply.content},
                                    "finish_reason": "stop",
                                }
                            ],
                        }
                    ).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left; that is the point of some tests

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    srv = FakeOpenAIServer()
    yield srv
    srv.close()


def _judge(server: FakeOpenAIServer, **kwargs: Any) -> OpenAIJudge:
    options: dict[str, Any] = {"timeout": 2.0, "max_retries": 2, "backoff": 0.001}
    options.update(kwargs)
    return OpenAIJudge(server.base_url, "judge-model", **options)


# --------------------------------------------------------------------------------------------
# OpenAIJudge
# --------------------------------------------------------------------------------------------


def test_openai_success_parses_score_and_sends_chat_request(server: FakeOpenAIServer) -> None:
    server.script = [Reply('{"score": 7}')]
    with _judge(server) as judge:
        assert judge.score(PROBLEM, CODE) == pytest.approx(0.7)
    assert len(server.requests) == 1
    req = server.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "judge-model"
    assert req.body["temperature"] == 0.0
    user = req.body["messages"][-1]["content"]
    assert PROBLEM in user and CODE in user


def test_openai_sends_api_key_from_env_as_bearer_and_never_shows_it(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUDGE_TEST_KEY", "sekret-123")
    judge = _judge(server, api_key_env="JUDGE_TEST_KEY")
    judge.score(PROBLEM, CODE)
    judge.close()
    assert server.requests[0].headers.get("Authorization") == "Bearer sekret-123"
    assert "sekret-123" not in repr(judge)
    assert "JUDGE_TEST_KEY" in repr(judge)


def test_openai_sends_no_auth_header_when_env_var_unset(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    judge = _judge(server, api_key_env="JUDGE_TEST_KEY")
    judge.score(PROBLEM, CODE)
    judge.close()
    assert "Authorization" not in server.requests[0].headers


def test_openai_malformed_answer_is_retried_then_succeeds(server: FakeOpenAIServer) -> None:
    server.script = [Reply("I cannot say."), Reply("Score: 4/10")]
    judge = _judge(server)
    assert judge.score(PROBLEM, CODE) == pytest.approx(0.4)
    assert len(server.requests) == 2


def test_openai_malformed_answer_raises_after_retries(server: FakeOpenAIServer) -> None:
    server.script = [Reply("no idea, sorry")]
    judge = _judge(server, max_retries=2)
    with pytest.raises(JudgeError, match="malformed answer") as info:
        judge.score(PROBLEM, CODE)
    assert info.value.transient
    assert len(server.requests) == 3  # the first try plus two retries


def test_openai_non_json_body_counts_as_malformed(server: FakeOpenAIServer) -> None:
    server.script = [Reply(body="<html>proxy error page</html>"), Reply('{"score": 2}')]
    judge = _judge(server)
    assert judge.score(PROBLEM, CODE) == pytest.approx(0.2)
    assert len(server.requests) == 2


def test_openai_neutral_mode_returns_half_counts_failure_and_does_not_cache(
    server: FakeOpenAIServer,
) -> None:
    server.script = [Reply("twelve")]
    judge = _judge(server, max_retries=1, on_error="neutral")
    assert judge.score(PROBLEM, CODE) == NEUTRAL_SCORE
    assert judge.failures == 1
    assert len(server.requests) == 2
    # A failure is not remembered: the next call asks again (and this time gets an answer).
    server.script = [Reply("x"), Reply("x"), Reply('{"score": 9}')]
    assert judge.score(PROBLEM, CODE) == pytest.approx(0.9)
    assert len(server.requests) == 3
    assert judge.failures == 1


def test_openai_timeout_raises_after_retries(server: FakeOpenAIServer) -> None:
    server.script = [Reply(delay=0.5)]
    judge = _judge(server, timeout=0.2, max_retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="timed out") as info:
        judge.score(PROBLEM, CODE)
    elapsed = time.monotonic() - start
    judge.close()
    assert info.value.transient
    assert len(server.requests) == 2
    assert elapsed < 1.0  # two 0.2 s timeouts, not two 0.5 s waits


def test_openai_timeout_then_success(server: FakeOpenAIServer) -> None:
    # The timeout must be long enough for a prompt reply on a loaded machine (0.2 s was not:
    # the second, undelayed reply also timed out once under a parallel test run), and the
    # delay well beyond it.
    server.script = [Reply(delay=2.5), Reply('{"score": 3}')]
    judge = _judge(server, timeout=1.0)
    assert judge.score(PROBLEM, CODE) == pytest.approx(0.3)
    assert len(server.requests) == 2


def test_openai_5xx_retried_with_exponential_backoff(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(judges.time, "sleep", sleeps.append)
    server.script = [Reply(status=500, body="boom"), Reply(status=503, body="busy"), Reply()]
    judge = _judge(server, max_retries=3, backoff=0.5)
    assert judge.score(PROBLEM, CODE) == pytest.approx(0.7)
    assert len(server.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_openai_5xx_exhausted_names_status(server: FakeOpenAIServer) -> None:
    server.script = [Reply(status=502, body="bad gateway")]
    judge = _judge(server, max_retries=2)
    with pytest.raises(JudgeError, match="HTTP 502"):
        judge.score(PROBLEM, CODE)
    assert len(server.requests) == 3


def test_openai_429_retried_honouring_retry_after(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(judges.time, "sleep", sleeps.append)
    server.script = [Reply(status=429, body="slow down", headers={"Retry-After": "3"}), Reply()]
    judge = _judge(server, backoff=0.1, max_backoff=8.0)
    assert judge.score(PROBLEM, CODE) == pytest.approx(0.7)
    assert len(server.requests) == 2
    assert sleeps == [3.0]


@pytest.mark.parametrize(
    ("status", "hint"), [(400, "model name"), (401, "JUDGE_TEST_KEY"), (404, "/v1")]
)
def test_openai_4xx_is_not_retried(server: FakeOpenAIServer, status: int, hint: str) -> None:
    server.script = [Reply(status=status, body='{"error": "nope"}')]
    judge = _judge(server, max_retries=3, api_key_env="JUDGE_TEST_KEY")
    with pytest.raises(JudgeError, match=f"HTTP {status}") as info:
        judge.score(PROBLEM, CODE)
    assert hint in str(info.value)
    assert not info.value.transient
    assert len(server.requests) == 1


def test_openai_4xx_raises_even_in_neutral_mode(server: FakeOpenAIServer) -> None:
    # A configuration error must not be hidden behind neutral scores for a whole RL run.
    server.script = [Reply(status=401, body="unauthorized")]
    judge = _judge(server, on_error="neutral")
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge.score(PROBLEM, CODE)
    assert judge.failures == 0


def test_openai_cache_hit_makes_no_second_request(server: FakeOpenAIServer) -> None:
    judge = _judge(server)
    first = judge.score(PROBLEM, CODE)
    second = judge.score(PROBLEM, CODE)
    assert first == second == pytest.approx(0.7)
    assert len(server.requests) == 1
    assert judge.cache_hits == 1
    judge.score(PROBLEM, CODE + "\n")  # different code: a new request
    assert len(server.requests) == 2
    stats = judge.stats
    assert (stats.requests, stats.cache_hits, stats.computed) == (3, 1, 2)
    assert stats.seconds > 0.0 and stats.prompt_tokens == 0  # a remote judge counts no tokens


def test_openai_cache_is_lru_and_can_be_disabled(server: FakeOpenAIServer) -> None:
    judge = _judge(server, cache_size=1)
    judge.score(PROBLEM, "a")
    judge.score(PROBLEM, "b")  # evicts "a"
    judge.score(PROBLEM, "b")  # hit
    judge.score(PROBLEM, "a")  # miss again
    assert len(server.requests) == 3
    uncached = _judge(server, cache_size=0)
    uncached.score(PROBLEM, CODE)
    uncached.score(PROBLEM, CODE)
    assert len(server.requests) == 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_unreachable_port_gives_clear_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    judge = OpenAIJudge(url, "judge-model", max_retries=1, backoff=0.001, timeout=1.0)
    with pytest.raises(JudgeError) as info:
        judge.score(PROBLEM, CODE)
    message = str(info.value)
    assert f"{url}/chat/completions" in message
    assert "unreachable" in message and "running" in message


# --------------------------------------------------------------------------------------------
# parse_rating
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"score": 7}', 0.7),
        ('```json\n{"score": 8}\n```', 0.8),
        ('{"score": "6"}', 0.6),
        ("Score: 5/10", 0.5),
        ("I rate it 9 out of 10.", 0.9),
        ("Rating = 10", 1.0),
        ("3", 0.3),
        ('<think>between 2 and 4</think>{"score": 0}', 0.0),
    ],
)
def test_parse_rating_accepts_common_formats(answer: str, expected: float) -> None:
    assert parse_rating(answer) == pytest.approx(expected)


@pytest.mark.parametrize("answer", [None, "", "good", "11", "-2", "1 or 2", '{"score": "high"}'])
def test_parse_rating_rejects_unusable_answers(answer: str | None) -> None:
    with pytest.raises(ValueError):
        parse_rating(answer)


# --------------------------------------------------------------------------------------------
# LocalJudge
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return load_model("tiny-random-qwen2")


def _count_forwards(model: Any) -> tuple[list[int], Any]:
    """Record the sequence length of each top-level forward call."""
    lengths: list[int] = []

    def hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        lengths.append(int(kwargs["input_ids"].shape[-1]))

    return lengths, model.register_forward_hook(hook, with_kwargs=True)


def test_local_judge_scores_in_unit_interval_with_one_forward_and_cache(
    tiny: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny
    judge = LocalJudge(model, tokenizer)
    lengths, handle = _count_forwards(model)
    try:
        score = judge.score(PROBLEM, CODE)
        assert len(lengths) == 1  # one forward pass, no generation
        again = judge.score(PROBLEM, CODE)
        assert len(lengths) == 1  # cache hit: no forward at all
        other = judge.score(PROBLEM, "    return x + 1")
        assert len(lengths) == 2
    finally:
        handle.remove()
    assert 0.0 <= score <= 1.0 and 0.0 <= other <= 1.0
    assert again == score
    assert other != score  # the score depends on the code
    assert judge.cache_hits == 1


def test_local_judge_is_deterministic_across_instances(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    fresh_model, fresh_tokenizer = load_model("tiny-random-qwen2")
    a = LocalJudge(model, tokenizer).score(PROBLEM, CODE)
    b = LocalJudge(fresh_model, fresh_tokenizer).score(PROBLEM, CODE)
    assert a == b


def test_local_judge_score_is_expected_digit_rating(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    judge = LocalJudge(model, tokenizer)
    prompt = judge.build_prompt(PROBLEM, CODE)
    assert prompt.endswith("Rating (0-9):")  # the tiny tokenizer has no chat template
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    # Recompute by hand: softmax over every digit token, summed per digit, expectation / 9.
    flat = [(d, tid) for d, tids in enumerate(judge.digit_token_ids) for tid in tids]
    probs = torch.softmax(logits[[tid for _, tid in flat]], dim=-1)
    per_digit = [0.0] * 10
    for (d, _), p in zip(flat, probs.tolist(), strict=True):
        per_digit[d] += p
    expected = sum(d * p for d, p in enumerate(per_digit)) / 9
    # The judge goes through log_softmax then softmax in float32, this reference straight
    # through softmax: measured 2.4e-7 apart (2 float32 ulps of 1.0) per digit, 5e-8 on the
    # score. 1e-5 leaves room for other CPUs' vectorized exp/log; a wrong digit mapping or
    # normalisation moves these by 1e-2 or more.
    assert judge.rating_distribution(PROBLEM, CODE) == pytest.approx(per_digit, abs=1e-5)
    assert sum(per_digit) == pytest.approx(1.0)  # float64 sum; default rel 1e-6
    assert judge.score(PROBLEM, CODE) == pytest.approx(expected, abs=1e-5)
    assert judge.last_digit_mass is not None and 0.0 < judge.last_digit_mass <= 1.0


def test_local_judge_counts_leading_space_digit_variants(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    ids = LocalJudge(tiny[0], tokenizer).digit_token_ids
    assert len(ids) == 10
    for digit, tids in enumerate(ids):
        assert tids, f"no token for {digit}"
        assert all(tokenizer.decode([t]).strip() == str(digit) for t in tids)
    # The tiny BPE learned "Ġ1" (from "(1, 2)"-style text): both spellings must count.
    decoded = {tokenizer.decode([t]) for t in ids[1]}
    assert decoded == {"1", " 1"}
    all_ids = [t for tids in ids for t in tids]
    assert len(all_ids) == len(set(all_ids))


def test_local_judge_uses_chat_template_when_present(tiny: tuple[Any, Any]) -> None:
    model, _ = tiny
    from backtrack.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    judge = LocalJudge(model, tokenizer)
    assert judge.use_chat_template
    prompt = judge.build_prompt(PROBLEM, CODE)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert CODE in prompt
    assert 0.0 <= judge.score(PROBLEM, CODE) <= 1.0


# An episode's judgements: each partial program grows the last one, with a rollback ("ret") and
# a restart of the body ("z = 1") in between, as the RL environment asks them.
EPISODE = [
    "    y",
    "    y = x",
    "    y = x * 2\n",
    "    y = x * 2\n    return",
    "    y = x * 2\n    ret",
    "    y = x * 2\n    return y\n",
    "    z = 1\n",
    "    z = 1\n    return 2 * x\n",
]


def test_local_judge_reuses_the_shared_prefix_and_scores_as_from_scratch(
    tiny: tuple[Any, Any],
) -> None:
    """Only the tokens after the previous prompt's shared prefix are run (the prefix's cache is
    cropped, never recomputed), and every rating matches a judge that runs each prompt from
    scratch."""
    model, tokenizer = tiny
    reusing = LocalJudge(model, tokenizer, cache_size=0)
    scratch = LocalJudge(model, tokenizer, cache_size=0, reuse_prefix=False)
    lengths, handle = _count_forwards(model)
    try:
        for code in EPISODE:
            reused = reusing.rating_distribution(PROBLEM, code)
            # Measured on the tiny float32 model (Intel Xeon, AVX512): 0.0 per digit over this
            # episode; cached keys/values are the same numbers a fresh prefill computes, only
            # the split of the prompt differs. 1e-5 leaves room for other CPUs' tiling and is
            # 1,000x below what a key/value at a wrong position changes (1e-2 or more).
            assert reused == pytest.approx(scratch.rating_distribution(PROBLEM, code), abs=1e-5)
    finally:
        handle.remove()
    full = [len(reusing._encode(PROBLEM, code)) for code in EPISODE]
    fed = lengths[0::2]  # reusing and scratch alternate
    assert lengths[1::2] == full  # from scratch: every prompt whole
    assert fed[0] == full[0] and all(n < whole for n, whole in zip(fed[1:], full[1:], strict=True))
    assert reusing.stats.prompt_tokens == sum(fed) < sum(full) / 2
    assert scratch.stats.prompt_tokens == sum(full)
    assert reusing.stats.requests == len(EPISODE) and reusing.stats.cache_hits == 0
    assert reusing.stats.seconds > 0.0


def test_judge_stats_count_requests_hits_and_computed_scores(tiny: tuple[Any, Any]) -> None:
    judge = LocalJudge(*tiny)
    for code in (CODE, CODE, "    return x", CODE):
        judge.score(PROBLEM, code)
    stats = judge.stats
    assert (stats.requests, stats.cache_hits, stats.computed) == (4, 2, 2)
    assert stats.hit_rate == 0.5 and judge.cache_hits == 2
    assert stats.seconds_per_judgment == pytest.approx(stats.seconds / 2)
    assert set(stats.as_dict()) >= {"requests", "cache_hits", "seconds", "hit_rate"}
    assert TestsOnlyJudge().stats.requests == 0


def test_local_judge_truncates_long_code_to_fit(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    limit = 800  # the tiny tokenizer spends ~550 tokens on the instructions alone
    judge = LocalJudge(model, tokenizer, max_prompt_tokens=limit)
    long_code = "".join(f"    y{i} = x + {i}\n" for i in range(300))
    assert len(tokenizer(long_code)["input_ids"]) > limit
    lengths, handle = _count_forwards(model)
    try:
        score = judge.score(PROBLEM, long_code)
    finally:
        handle.remove()
    assert lengths and lengths[0] <= limit
    assert 0.0 <= score <= 1.0
    with pytest.raises(JudgeError, match="max_prompt_tokens"):
        LocalJudge(model, tokenizer, max_prompt_tokens=10).score(PROBLEM, CODE)


# --------------------------------------------------------------------------------------------
# TestsOnlyJudge and make_judge
# --------------------------------------------------------------------------------------------


def test_tests_only_judge_is_a_disabled_zero() -> None:
    judge = TestsOnlyJudge()
    assert isinstance(judge, Judge)
    assert judge.score(PROBLEM, CODE) == 0.0
    assert judge.score("", "") == 0.0
    assert judge.enabled is False
    judge.close()


@pytest.mark.parametrize("spec", ["tests", "none", None, {"type": "tests"}, {"kind": "tests"}])
def test_make_judge_tests_only(spec: Any) -> None:
    assert isinstance(make_judge(spec), TestsOnlyJudge)


def test_make_judge_openai_from_string_and_dict() -> None:
    judge = make_judge(
        "openai:http://127.0.0.1:8000/v1?model=gpt-oss-20b&timeout=5&max_retries=1&on_error=neutral"
    )
    assert isinstance(judge, OpenAIJudge)
    assert judge.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert judge.model == "gpt-oss-20b"
    assert judge.timeout == 5.0 and judge.max_retries == 1 and judge.on_error == "neutral"
    judge.close()
    from_dict = make_judge(
        {"type": "openai", "base_url": "http://h:1/v1", "model": "m", "backoff": 0.1},
        timeout=7,
    )
    assert isinstance(from_dict, OpenAIJudge)
    assert from_dict.backoff == 0.1 and from_dict.timeout == 7.0
    from_dict.close()


def test_make_judge_local_loads_by_name_or_reuses_objects(tiny: tuple[Any, Any]) -> None:
    by_name = make_judge("local:tiny-random-qwen2")
    reused = make_judge({"type": "local", "cache_size": 3}, model_and_tokenizer=tiny)
    assert isinstance(by_name, LocalJudge) and isinstance(reused, LocalJudge)
    assert reused.model is tiny[0]
    assert by_name.score(PROBLEM, CODE) == reused.score(PROBLEM, CODE)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("bogus", "unknown judge spec"),
        ("openai:http://127.0.0.1:8000/v1", "needs a model"),
        ("openai:not-a-url?model=m", "expected openai:"),
        ("openai:http://h:1/v1?model=m&timeout=soon", "timeout"),
        ({"type": "openai", "base_url": "http://h/v1", "model": "m", "colour": 1}, "colour"),
        ({"type": "local"}, "needs a model name"),
        ({"type": "magic"}, "unknown judge type"),
    ],
)
def test_make_judge_rejects_bad_specs(spec: Any, match: str) -> None:
    with pytest.raises(JudgeConfigError, match=match):
        make_judge(spec)

"""Fuzzing the server's HTTP API from the OpenAPI schema it publishes (``/openapi.json``).

Schemathesis turns every operation of the schema into a hypothesis strategy of requests:
*positive* ones (valid by the schema) and *negative* ones (each breaks the schema somewhere:
a wrong type, a missing field, a value out of range). Every request goes to a real uvicorn
server on loopback decoding with the tiny model built in code, and every answer must be

* never a 5xx (a crash, or a 503 telling the client to retry something retrying cannot fix);
* when it is an error, OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
  with a one-line message;
* when it streams, server-sent events that are each JSON (an error event in the same
  shape) or ``[DONE]``.

The server is the authenticated one (an API key, as on a network): most requests carry the
key; some carry none, some a wrong one, and each of those must be a 401 in OpenAI's shape for
every ``/v1`` route (``/health`` stays open), whatever the rest of the request is.

Why a real server and not schemathesis' in-process ASGI transport: the real one runs the code
a client meets (uvicorn's HTTP parsing, the body-size middleware on the real
``Content-Length``, the scheduler thread decoding while the event loop streams), and it is how
tests/test_serve.py runs the server; the in-process transport skips the socket and runs
requests on the test's thread. A request to the tiny model takes milliseconds, so the real
server costs no time worth saving.

Bounded and deterministic: a fixed number of examples per operation and mode, drawn
derandomized by the suite's hypothesis profile ("ci", see conftest.py): 237 requests, the same
ones every run (``--hypothesis-seed=N`` draws others; seeds 1 and 2 found nothing more). The
module took 26 s on 2 cores shared with other jobs (load average about 4), under the 60 s it may
take in ``make test``.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from test_serve import LiveServer

from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings

# Examples per (operation, mode). The POST operations are where the depth is (nested bodies,
# ~25 fields each); the GETs have at most one path parameter, so a few examples exhaust them.
EXAMPLES = {"POST": 50, "GET": 10}
ERROR_KEYS = {"message", "type", "param", "code"}
# Small limits keep every accepted request to a few milliseconds of decoding; requests over
# them are refused with a 400, which the fuzz checks the shape of like any other error.
FUZZ_SETTINGS = dict(max_batch=4, max_queue=4, max_tokens_limit=8, max_prompt_tokens=64)
FUZZ_KEY = "fuzz-key-0123"
# What a fuzzed request authenticates with.
CREDENTIALS = {
    "key": {"Authorization": f"Bearer {FUZZ_KEY}"},
    "none": {},
    "wrong": {"Authorization": "Bearer not-the-key"},
}


@pytest.fixture(scope="module")
def live():
    settings = ServeSettings([TINY_MODEL_NAME], api_keys=[FUZZ_KEY], **FUZZ_SETTINGS)
    with LiveServer(settings) as server:
        yield server


def assert_openai_error(body: object, status: int) -> None:
    """``body`` is OpenAI's error shape, with a one-line message."""
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    error = body["error"]
    assert set(error) == ERROR_KEYS, (status, body)
    assert isinstance(error["message"], str) and error["message"], (status, body)
    assert "\n" not in error["message"], (status, body)
    assert isinstance(error["type"], str), (status, body)
    assert error["param"] is None or isinstance(error["param"], str), (status, body)


def check_response(response, status_seen: Counter) -> None:
    """One fuzzed request's answer: no 5xx; errors OpenAI-shaped; streams well-formed."""
    status = response.status_code
    status_seen[status] += 1
    assert status < 500, (status, response.text[:500])
    if status >= 400:
        assert_openai_error(response.json(), status)
    elif any(v.startswith("text/event-stream") for v in response.headers.get("content-type", [])):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", response.text[-500:]
        for event in events[:-1]:
            payload = json.loads(event)
            if "error" in payload:
                assert_openai_error(payload, status)
    elif any(v.startswith("text/html") for v in response.headers.get("content-type", [])):
        assert "<html" in response.text.lower()  # the playground page at /
    else:
        response.json()


def _modes(operation) -> list[GenerationMode]:
    """Negative requests need something to break: a body (the one path parameter, a model
    name, is any string, so no request breaks its schema)."""
    if operation.body:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def fuzz_operation(live, operation, mode: GenerationMode, status_seen: Counter) -> None:
    """Send one operation's generated requests of one mode to the server, checking each."""

    # Some requests keep what was generated; some name the served model (a random name
    # stops at check_model's 404, and the fuzz is meant to reach decoding); most also send a
    # prompt the tiny model can continue (generated prompts are mostly empty, or token ids
    # outside its 437-token vocabulary), so every other field generated reaches the engine.
    # Hypothesis draws a sampled_from's first element most often, hence the order.
    @settings(
        max_examples=EXAMPLES[operation.method.upper()],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(mode),
        pin=st.sampled_from(("prompt", "model", "none")),
        credentials=st.sampled_from(tuple(CREDENTIALS)),
    )
    def fuzz(case, pin: str, credentials: str) -> None:
        body = case.body if isinstance(case.body, dict) else {}
        if pin != "none":
            if isinstance(case.body, dict):
                case.body["model"] = TINY_MODEL_NAME
            if "name" in (case.path_parameters or {}):
                case.path_parameters["name"] = TINY_MODEL_NAME
        if pin == "prompt" and "prompt" in body:
            body["prompt"] = "def fib(n):"
            # OpenAI's default max_tokens for completions (16) is over FUZZ_SETTINGS' limit.
            body.setdefault("max_tokens", FUZZ_SETTINGS["max_tokens_limit"])
        if pin == "prompt" and "messages" in body:
            body["messages"] = [{"role": "user", "content": "Write fib."}]
        response = case.call(base_url=live.url, headers=CREDENTIALS[credentials], timeout=60)
        check_response(response, status_seen)
        if credentials != "key" and case.path.startswith("/v1"):
            assert response.status_code == 401, (credentials, response.text[:500])

    fuzz()


def test_fuzz_every_operation_of_the_published_schema(live):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models"} <= labels
    seen: dict[str, Counter] = {}
    for operation in operations:
        for mode in _modes(operation):
            status_seen = seen.setdefault(f"{operation.label} {mode.value}", Counter())
            fuzz_operation(live, operation, mode, status_seen)
    total = sum(sum(c.values()) for c in seen.values())
    print(f"\nfuzzed {total} requests:", {k: dict(v) for k, v in seen.items()})
    # The fuzz reached decoding: both generating endpoints answered 200s, and errors of all
    # kinds (400 refused by the server, 422 malformed, 401 without the key) were checked.
    assert seen["POST /v1/completions positive"][200] > 0
    assert seen["POST /v1/chat/completions positive"][200] > 0
    statuses = sum(seen.values(), Counter())
    assert statuses[400] > 0 and statuses[422] > 0 and statuses[401] > 0


# ---------------------------------------------------------------- bugs the fuzz found
def test_an_empty_prompt_list_is_a_400_not_a_500(live):
    """``"prompt": []`` (no prompts at all) crashed the context check (``max()`` of nothing)."""
    for prompt in ([], ""):
        response = httpx.post(
            f"{live.url}/v1/completions",
            json={"model": TINY_MODEL_NAME, "prompt": prompt, "max_tokens": 4},
            headers=CREDENTIALS["key"],
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert_openai_error(response.json(), 400)
        assert response.json()["error"]["param"] == "prompt"
        assert "empty" in response.json()["error"]["message"]


@pytest.mark.parametrize("n", [FUZZ_SETTINGS["max_queue"] + 1, 10**12])
def test_more_choices_than_the_queue_holds_is_a_400_not_a_503(live, n):
    """A request whose choices can never all be queued was a 503 telling the client to
    retry (it never could succeed), and a huge ``n`` built one job per choice first."""
    for path, body in [
        ("completions", {"prompt": "def f(", "max_tokens": 2}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ]:
        response = httpx.post(
            f"{live.url}/v1/{path}",
            json={"model": TINY_MODEL_NAME, "n": n, **body},
            headers=CREDENTIALS["key"],
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert_openai_error(response.json(), 400)
        assert response.json()["error"]["param"] == "n"
        assert "--max-queue" in response.json()["error"]["message"]
    # Two prompts of n=2 are 4 choices: exactly what the queue holds, so decoded.
    ok = httpx.post(
        f"{live.url}/v1/completions",
        json={"model": TINY_MODEL_NAME, "prompt": ["a", "b"], "n": 2, "max_tokens": 2},
        headers=CREDENTIALS["key"],
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"]) == 4

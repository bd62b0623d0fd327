"""The OpenAI-compatible HTTP judge: :class:`OpenAIJudge` and the parsing of its answers.

* :class:`OpenAIJudge`: asks any ``POST {base_url}/chat/completions`` endpoint (vLLM, llama.cpp,
  Ollama, ...) over httpx for a 0-10 rating, with timeouts, retries with exponential backoff
  and an LRU cache.
* :func:`parse_rating`: turns the model's free-text answer into a score in [0, 1]. It lives here
  because only this judge generates text (the local judge reads digit probabilities), and its
  failure (:class:`_MalformedAnswer`) is one of the transient errors this judge's retry loop
  handles.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from backtrack.rl.judges.base import (
    DEFAULT_CACHE_SIZE,
    NEUTRAL_SCORE,
    Judge,
    JudgeConfigError,
    JudgeError,
    LRUCache,
)
from backtrack.rl.judges.prompts import JSON_SCORE_INSTRUCTION, chat_messages

logger = logging.getLogger(__name__)

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
_NUM = r"[-+]?\d+(?:\.\d+)?"
_KEYED_RE = re.compile(r"\b(?:score|rating)\b['\"]?\s*[:=]\s*['\"]?(" + _NUM + ")", re.IGNORECASE)
_OUT_OF_RE = re.compile(r"(" + _NUM + r")\s*(?:/|out\s+of)\s*10\b", re.IGNORECASE)
_NUMBER_RE = re.compile(_NUM)


class _MalformedAnswer(ValueError):
    """The model answered, but not with a usable rating."""


def parse_rating(text: str | None, scale: float = 10.0) -> float:
    """Parse a judge model's answer into a score in [0, 1] (the rating divided by ``scale``).

    Accepts, in order: a JSON object ``{"score": n}`` (also inside a code fence), ``score: n`` or
    ``rating: n`` anywhere, ``n/10`` or ``n out of 10``, or an answer holding exactly one number.
    Anything else (no number, several unlabelled numbers, a rating outside 0..scale) raises
    ``ValueError``: guessing which number was meant would inject noise into the reward.
    """
    if text is None or not text.strip():
        raise _MalformedAnswer(
            "empty answer (a reasoning model may have spent max_tokens thinking; raise max_tokens)"
        )
    cleaned = _THINK_RE.sub("", text).strip()
    fenced = _FENCE_RE.match(cleaned)
    if fenced:
        cleaned = fenced.group(1).strip()
    value: float | None = None
    try:
        obj = json.loads(cleaned)
    except ValueError:
        obj = None
    if isinstance(obj, Mapping):
        raw = obj.get("score", obj.get("rating"))
        if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            try:
                value = float(raw)
            except ValueError:
                value = None
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        value = float(obj)
    if value is None:
        match = _KEYED_RE.search(cleaned) or _OUT_OF_RE.search(cleaned)
        if match:
            value = float(match.group(1))
        else:
            numbers = _NUMBER_RE.findall(cleaned)
            if len(numbers) == 1:
                value = float(numbers[0])
    if value is None or not math.isfinite(value):
        raise _MalformedAnswer(f"no rating found in answer {_clip(text)!r}")
    if not 0.0 <= value <= scale:
        raise _MalformedAnswer(f"rating {value:g} outside 0..{scale:g} in answer {_clip(text)!r}")
    return value / scale


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, for quoting a server's answer in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


class OpenAIJudge(Judge):
    """A judge backed by any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Suited to a bigger teacher than fits next to the policy, e.g. gpt-oss-20b served by vLLM,
    llama.cpp or Ollama. The model is asked for ``{"score": n}`` with n in 0..10; the answer is
    parsed by :func:`parse_rating` and divided by 10.

    Failure policy: timeouts, connection errors, HTTP 5xx and 429, and malformed answers are
    retried ``max_retries`` times with exponential backoff (``backoff * 2**attempt`` seconds,
    capped at ``max_backoff``; a 429's ``Retry-After`` is honoured up to the cap). Other 4xx
    (bad key, unknown model, wrong path) raise :class:`JudgeError` at once: retrying cannot fix
    them. When retries are exhausted, ``on_error="raise"`` (default) raises :class:`JudgeError`;
    ``on_error="neutral"`` returns :data:`NEUTRAL_SCORE` (0.5), counts the failure in
    ``failures`` and logs a warning, so a long RL run survives a flaky server. Configuration
    errors raise in both modes, since a neutral reward on every step would silently disable the
    judge. Neutral fallbacks are not cached.

    The API key is read from the environment variable named ``api_key_env`` and sent as a
    ``Bearer`` token; it is never logged or shown in ``repr``. If the variable is unset or empty
    no ``Authorization`` header is sent (local servers usually need none).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        on_error: Literal["raise", "neutral"] = "raise",
        max_tokens: int | None = 512,
        temperature: float = 0.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not base_url:
            raise JudgeConfigError("OpenAIJudge needs a base_url, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise JudgeConfigError("OpenAIJudge needs a model name, e.g. gpt-oss-20b")
        if on_error not in ("raise", "neutral"):
            raise JudgeConfigError(f"on_error must be 'raise' or 'neutral', got {on_error!r}")
        if max_retries < 0 or timeout <= 0 or backoff < 0:
            raise JudgeConfigError("need max_retries >= 0, timeout > 0 and backoff >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.on_error = on_error
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.extra_body = dict(extra_body or {})
        self._cache = LRUCache(cache_size)
        #: HTTP requests sent (every attempt counts), for monitoring and tests.
        self.requests = 0
        #: Calls that fell back to NEUTRAL_SCORE (only with on_error="neutral").
        self.failures = 0
        self._lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout))

    @property
    def cache_hits(self) -> int:
        """How many scores were answered from the cache without an HTTP request."""
        return self.stats.cache_hits

    def __repr__(self) -> str:
        # Deliberately names the env var, never the key.
        return (
            f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, on_error={self.on_error!r})"
        )

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Rate the partial code via the endpoint; cached per (problem, code)."""
        key = (problem_prompt, partial_code)
        cached = self._lookup(self._cache, key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        try:
            value = self._request(problem_prompt, partial_code)
        except JudgeError as exc:
            if self.on_error == "neutral" and exc.transient:
                with self._lock:
                    self.failures += 1
                logger.warning("judge failed, using neutral score %.1f: %s", NEUTRAL_SCORE, exc)
                return NEUTRAL_SCORE
            raise
        finally:
            self.stats.seconds += time.perf_counter() - started
        self._cache.put(key, value)
        return value

    def close(self) -> None:
        """Close the HTTP connection pool and drop the cache."""
        self._client.close()
        self._cache.clear()

    # -- internals ---------------------------------------------------------------------------

    def _body(self, problem_prompt: str, partial_code: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(problem_prompt, partial_code, JSON_SCORE_INSTRUCTION),
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return body

    def _sleep_before_retry(self, attempt: int, retry_after: float | None) -> None:
        delay = self.backoff * (2**attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        time.sleep(min(delay, self.max_backoff))

    def _request(self, problem_prompt: str, partial_code: str) -> float:
        body = self._body(problem_prompt, partial_code)
        attempts = self.max_retries + 1
        last_error = ""
        unreachable = False
        tried = 0
        for attempt in range(attempts):
            retry_after: float | None = None
            tried = attempt + 1
            with self._lock:
                self.requests += 1
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                last_error = f"timed out after {self.timeout:g}s ({type(exc).__name__})"
                unreachable = False
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                unreachable = isinstance(exc, (httpx.ConnectError, httpx.UnsupportedProtocol))
                if isinstance(exc, httpx.UnsupportedProtocol):
                    break  # a malformed URL will not get better
            else:
                unreachable = False
                status = response.status_code
                if status == 429 or status >= 500:
                    last_error = f"HTTP {status}: {_clip(response.text)}"
                    retry_after = _retry_after_seconds(response)
                elif status >= 400:
                    raise JudgeError(self._client_error_message(response), transient=False)
                else:
                    try:
                        return parse_rating(_message_content(response))
                    except ValueError as exc:
                        last_error = f"malformed answer: {exc}"
            if attempt < attempts - 1:
                self._sleep_before_retry(attempt, retry_after)
        if unreachable:
            raise JudgeError(
                f"judge endpoint {self.url} is unreachable after {tried} attempt(s) "
                f"({last_error}). Check that the server (vLLM, llama.cpp, Ollama, ...) is running "
                "and listening at that address, and that base_url is right (it usually ends in "
                "/v1).",
                transient=True,
            )
        raise JudgeError(
            f"judge request to {self.url} (model {self.model!r}) failed after {tried} "
            f"attempt(s): {last_error}",
            transient=True,
        )

    def _client_error_message(self, response: httpx.Response) -> str:
        status = response.status_code
        hint = ""
        if status in (401, 403):
            hint = (
                f" Check the API key in environment variable {self.api_key_env!r}"
                " (it is sent as a Bearer token)."
            )
        elif status == 404:
            hint = (
                f" Check that base_url is right (it usually ends in /v1) and that the server "
                f"serves model {self.model!r}."
            )
        elif status in (400, 422):
            hint = f" Check the model name {self.model!r} and any extra_body options."
        return (
            f"judge endpoint {self.url} rejected the request with HTTP {status}: "
            f"{_clip(response.text)}.{hint} Not retried: a client error will not fix itself."
        )


def _retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date; fall back to our own backoff


def _message_content(response: httpx.Response) -> str | None:
    try:
        data = response.json()
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _MalformedAnswer(
            f"response is not an OpenAI chat completion ({type(exc).__name__}): "
            f"{_clip(response.text)!r}"
        ) from exc
    if content is not None and not isinstance(content, str):
        raise _MalformedAnswer(f"message content is not a string: {content!r}")
    return content

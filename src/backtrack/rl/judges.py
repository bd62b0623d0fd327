"""Judges: dense rewards from scoring a *partial* program, behind one interface.

The RL operator only gets the unit-test verdict at the end of an episode; a judge adds a dense
signal by rating, after a step, whether the code written so far is on track to a correct
solution. A judge sees only the problem statement and the partial code, never the reference
solution or the tests, so the dense reward cannot leak the answer the terminal reward checks.

Three judges share :class:`Judge`:

* :class:`OpenAIJudge` asks any OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, ...)
  for a 0-10 rating, with timeouts, retries with exponential backoff and an LRU cache.
* :class:`LocalJudge` reads a local Hugging Face model's next-token probabilities of the digits
  ``0``..``9`` after a rating prompt: one forward pass, no generation, so it is cheap and
  deterministic, and it gives a graded score (the expected rating) rather than a sampled one.
* :class:`TestsOnlyJudge` disables the dense reward, so only the unit tests count.

:func:`make_judge` builds any of them from a CLI string or a YAML mapping.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

logger = logging.getLogger(__name__)

__all__ = [
    "NEUTRAL_SCORE",
    "Judge",
    "JudgeConfigError",
    "JudgeError",
    "LocalJudge",
    "OpenAIJudge",
    "TestsOnlyJudge",
    "make_judge",
    "parse_rating",
]

#: What ``OpenAIJudge(on_error="neutral")`` returns when a request fails for a transient reason:
#: the middle of the scale, so a failed call neither rewards nor punishes the step.
NEUTRAL_SCORE = 0.5

DEFAULT_CACHE_SIZE = 4096

_SYSTEM_PROMPT = (
    "You are a strict, expert Python reviewer. You are shown a programming problem and the "
    "beginning of a candidate solution that is still being written; it may stop in the middle "
    "of a line or even a word. Judge only whether the code written so far is correct and heading "
    "toward a correct solution. Do not penalize it for being unfinished."
)


class JudgeError(RuntimeError):
    """A judge could not produce a score; the message says what failed and what to check.

    ``transient`` is true for failures that may go away on their own (timeouts, connection
    errors, HTTP 5xx/429, malformed answers), false for configuration errors (a 4xx such as a bad
    API key or an unknown model) that retrying cannot fix.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class JudgeConfigError(ValueError):
    """A judge spec (CLI string or config mapping) is invalid; the message lists what is allowed."""


class Judge(ABC):
    """Scores how likely a partial program is on track to a correct solution.

    Implementations must not look at reference solutions or tests: the judge is a dense proxy
    for the terminal test reward, and giving it the answer would let the policy learn to please
    the judge instead of writing correct code.
    """

    #: False for judges whose score is a constant no-op, so callers can skip calling them.
    enabled: bool = True

    @abstractmethod
    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Return a score in [0, 1]: how likely ``partial_code`` is on track for the problem."""

    def close(self) -> None:  # noqa: B027 - optional hook, most judges hold nothing to release
        """Release resources (connections, caches). Safe to call more than once."""

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _LRUCache:
    """A small thread-safe LRU map, so identical judge requests cost one call.

    RL rollouts re-score the same prefix often (after a backtrack the operator returns to a
    prefix it has seen), and judge calls dominate step time, so caching pays off. ``maxsize=0``
    disables caching.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"cache_size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------------------------
# Tests only
# --------------------------------------------------------------------------------------------


class TestsOnlyJudge(Judge):
    """The dense reward switched off: always 0.0, so only the unit-test terminal reward counts.

    It exists so that "no judge" is an ordinary judge and the environment needs no special case;
    ``enabled`` is False so callers may also skip it entirely.
    """

    __test__ = False  # not a pytest test class despite the name
    enabled = False

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Always 0.0: no dense reward."""
        return 0.0

    def __repr__(self) -> str:
        return "TestsOnlyJudge()"


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP judge
# --------------------------------------------------------------------------------------------

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
    return text if len(text) <= limit else text[:limit] + "..."


def _openai_user_prompt(problem_prompt: str, partial_code: str) -> str:
    return (
        "Problem:\n"
        f"```python\n{problem_prompt}\n```\n\n"
        "Partial solution so far (unfinished):\n"
        f"```python\n{partial_code}\n```\n\n"
        "How likely is this partial solution to be on track to a correct, complete solution? "
        "Rate it from 0 (certainly wrong) to 10 (certainly on track). "
        'Answer with only a JSON object of the form {"score": n} where n is an integer 0-10.'
    )


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
        self._cache = _LRUCache(cache_size)
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
        return self._cache.hits

    def __repr__(self) -> str:
        # Deliberately names the env var, never the key.
        return (
            f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, on_error={self.on_error!r})"
        )

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Rate the partial code via the endpoint; cached per (problem, code)."""
        key = (problem_prompt, partial_code)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            value = self._request(problem_prompt, partial_code)
        except JudgeError as exc:
            if self.on_error == "neutral" and exc.transient:
                with self._lock:
                    self.failures += 1
                logger.warning("judge failed, using neutral score %.1f: %s", NEUTRAL_SCORE, exc)
                return NEUTRAL_SCORE
            raise
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
            "messages": [
                {"role": "system", "content": _SYSTEM_PROMPT},
                {"role": "user", "content": _openai_user_prompt(problem_prompt, partial_code)},
            ],
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


# --------------------------------------------------------------------------------------------
# Local Hugging Face judge
# --------------------------------------------------------------------------------------------

_DIGITS = "0123456789"
_OMITTED = "# ... (earlier code omitted)\n"


def _local_user_prompt(problem_prompt: str, partial_code: str) -> str:
    return (
        "Problem:\n"
        f"```python\n{problem_prompt}\n```\n\n"
        "Partial solution so far (unfinished):\n"
        f"```python\n{partial_code}\n```\n\n"
        "How likely is this partial solution to be on track to a correct, complete solution? "
        "Rate it with a single digit from 0 (certainly wrong) to 9 (certainly on track). "
        "Answer with the digit only."
    )


class LocalJudge(Judge):
    """A judge reading a local Hugging Face causal LM's probabilities of the rating digits.

    The prompt (the tokenizer's chat template when it has one, else plain text ending in
    ``Rating (0-9):``) ends exactly where the rating digit comes. One forward pass gives the
    next-token distribution; it is restricted to the tokens for ``0``..``9`` (with and without a
    leading space, since tokenizers differ on which one follows a colon or an assistant header),
    renormalized, and the expected rating divided by 9 is the score. No sampling, so the score is
    deterministic and graded even from a small teacher.

    ``max_prompt_tokens`` (default: the model's ``max_position_embeddings``) bounds the prompt;
    longer partial code loses its beginning, since the most recent code says most about whether
    the current step is on track and the problem statement keeps the signature.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        use_chat_template: bool | None = None,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise JudgeConfigError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if max_prompt_tokens is None:
            config = getattr(model, "config", None)
            max_prompt_tokens = getattr(config, "max_position_embeddings", None)
        self.max_prompt_tokens = max_prompt_tokens
        self._cache = _LRUCache(cache_size)
        self.digit_token_ids = _digit_token_ids(tokenizer)
        # Flattened candidate ids and, for each, which digit it stands for.
        self._candidate_ids: list[int] = []
        self._candidate_digit: list[int] = []
        for digit, ids in enumerate(self.digit_token_ids):
            self._candidate_ids.extend(ids)
            self._candidate_digit.extend([digit] * len(ids))
        self._forward_kwargs: dict[str, Any] = {}
        params = inspect.signature(model.forward).parameters
        if "logits_to_keep" in params:
            # Only the last position is needed; skipping the rest saves a vocab-sized matmul
            # per prompt token.
            self._forward_kwargs["logits_to_keep"] = 1
        if "use_cache" in params:
            self._forward_kwargs["use_cache"] = False
        #: Total probability the model put on digit tokens at the last scored call, before
        #: renormalizing: a low value means the teacher ignores the answer format.
        self.last_digit_mass: float | None = None

    @property
    def cache_hits(self) -> int:
        """How many scores were answered from the cache without a forward pass."""
        return self._cache.hits

    def __repr__(self) -> str:
        name = (
            getattr(getattr(self.model, "config", None), "_name_or_path", "")
            or type(self.model).__name__
        )
        return f"LocalJudge(model={name!r}, chat_template={self.use_chat_template})"

    def build_prompt(self, problem_prompt: str, partial_code: str) -> str:
        """The text fed to the model; it ends where the rating digit is to be generated."""
        user = _local_user_prompt(problem_prompt, partial_code)
        if self.use_chat_template:
            messages = [
                {"role": "system", "content": _SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        # No trailing space: a space-prefixed digit token is then as natural as a bare digit,
        # and both variants are counted.
        return f"{_SYSTEM_PROMPT}\n\n{user}\n\nRating (0-9):"

    def rating_distribution(self, problem_prompt: str, partial_code: str) -> list[float]:
        """Probabilities of ratings 0..9 (renormalized over digit tokens); cached, one forward."""
        key = (problem_prompt, partial_code)
        cached = self._cache.get(key)
        if cached is not None:
            return list(cached)
        import torch

        input_ids = self._encode(problem_prompt, partial_code)
        device = _model_device(self.model)
        input_ids = torch.tensor([input_ids], dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, **self._forward_kwargs
            )
        logits = out.logits[0, -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        cand = log_probs[torch.tensor(self._candidate_ids, device=logits.device)]
        self.last_digit_mass = float(cand.exp().sum())
        cand_probs = torch.softmax(cand, dim=-1).cpu()
        digit_index = torch.tensor(self._candidate_digit)
        per_digit = torch.zeros(10, dtype=torch.float32).index_add_(0, digit_index, cand_probs)
        probs = tuple(float(p) for p in per_digit)
        self._cache.put(key, probs)
        return list(probs)

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Expected rating / 9, from one forward pass (or the cache)."""
        probs = self.rating_distribution(problem_prompt, partial_code)
        expected = sum(d * p for d, p in enumerate(probs)) / 9.0
        return min(1.0, max(0.0, expected))

    def close(self) -> None:
        """Drop the cache. The model is the caller's (it may be shared), so it is kept."""
        self._cache.clear()

    def _encode(self, problem_prompt: str, partial_code: str) -> list[int]:
        ids = self._tokenize(self.build_prompt(problem_prompt, partial_code))
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids
        code = partial_code
        drop = len(ids) - limit
        while code and len(ids) > limit:
            # A token spans at least one character, so dropping `excess` characters is never
            # too much; doubling keeps the number of re-tokenizations logarithmic.
            code = code[drop:]
            ids = self._tokenize(self.build_prompt(problem_prompt, _OMITTED + code))
            drop *= 2
        if len(ids) > limit:
            raise JudgeError(
                f"the judge prompt needs {len(ids)} tokens even without the partial code, more "
                f"than max_prompt_tokens={limit}; shorten the problem prompt or raise the limit"
            )
        return ids

    def _tokenize(self, text: str) -> list[int]:
        # The chat template already holds any special tokens; plain prompts get the tokenizer's
        # usual ones (e.g. BOS) as in ordinary use.
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
        return list(ids)


def _model_device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def _digit_token_ids(tokenizer: Any) -> list[list[int]]:
    """For each digit 0..9, the single tokens that decode to it, with or without a leading space.

    Byte-level BPEs spell the space-prefixed variant ``Ġ5``, SentencePiece ``▁5``; some vocabs
    have it, some do not (the tiny test tokenizer has ``Ġ1`` but not ``Ġ0``). Every candidate is
    checked by decoding it, and a token claimed by two digits is dropped.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    found: list[list[int]] = []
    seen: set[int] = set()
    for digit in _DIGITS:
        candidates: list[int] = []
        for text in (digit, " " + digit):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                candidates.append(int(ids[0]))
        for piece in (digit, "Ġ" + digit, "▁" + digit):
            tid = tokenizer.convert_tokens_to_ids(piece)
            if isinstance(tid, int) and tid != unk and tid >= 0:
                candidates.append(tid)
        ids_for_digit: list[int] = []
        for tid in candidates:
            if tid in seen or tid in ids_for_digit:
                continue
            if tokenizer.decode([tid]).strip() == digit:
                ids_for_digit.append(tid)
        if not ids_for_digit:
            raise JudgeError(
                f"tokenizer has no single token for the digit {digit!r}; LocalJudge needs one "
                "token per rating digit (use an OpenAI-compatible judge for this model)"
            )
        seen.update(ids_for_digit)
        found.append(ids_for_digit)
    return found


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

_TESTS_NAMES = {"tests", "tests-only", "tests_only", "none", "off", ""}

_OPENAI_PARAMS: dict[str, type] = {
    "api_key_env": str,
    "timeout": float,
    "max_retries": int,
    "backoff": float,
    "max_backoff": float,
    "cache_size": int,
    "on_error": str,
    "max_tokens": int,
    "temperature": float,
}
_LOCAL_PARAMS: dict[str, type] = {
    "cache_size": int,
    "use_chat_template": bool,
    "max_prompt_tokens": int,
}
_LOAD_PARAMS: dict[str, type] = {"dtype": str, "device": str, "quantize": str}


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Turn query-string text into the constructor's type; values from YAML pass through."""
    if not isinstance(value, str) or kind is str:
        return value
    try:
        if kind is bool:
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError as exc:
        raise JudgeConfigError(
            f"judge option {key}={value!r} is not a valid {kind.__name__}"
        ) from exc


def _check_keys(kind: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise JudgeConfigError(
            f"unknown option(s) {unknown} for the {kind!r} judge; allowed: {sorted(allowed)}"
        )


def _parse_spec_string(spec: str) -> dict[str, Any]:
    text = spec.strip()
    if text.lower() in _TESTS_NAMES:
        return {"type": "tests"}
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind == "local":
        name, _, query = rest.partition("?")
        config: dict[str, Any] = {"type": "local", **dict(parse_qsl(query))}
        if name:
            config["model"] = name
        return config
    if kind == "openai" and sep:
        parts = urlsplit(rest)
        if not parts.scheme or not parts.netloc:
            raise JudgeConfigError(
                f"judge spec {spec!r}: expected openai:http(s)://HOST:PORT/v1?model=NAME"
            )
        config = {"type": "openai", **dict(parse_qsl(parts.query))}
        config["base_url"] = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return config
    raise JudgeConfigError(
        f"unknown judge spec {spec!r}; use 'tests', 'local:MODEL_NAME' or "
        "'openai:http://HOST:PORT/v1?model=NAME'"
    )


def make_judge(
    spec: str | Mapping[str, Any] | Judge | None,
    *,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    **overrides: Any,
) -> Judge:
    """Build a judge from a CLI string or a config mapping.

    Strings: ``"tests"`` (also ``"none"``/``"off"``),
    ``"local:MODEL_NAME[?dtype=..&device=..&quantize=..&max_prompt_tokens=..]"``,
    ``"openai:http://HOST:PORT/v1?model=NAME[&timeout=..&on_error=neutral..]"``. Mappings (from
    YAML) carry ``type`` (``tests|local|openai``) plus the same options, e.g.
    ``{"type": "openai", "base_url": ..., "model": ..., "timeout": 10}``. ``overrides`` win over
    the spec. For ``local``, ``model`` names what :func:`backtrack.models.load_model` loads;
    pass ``model_and_tokenizer`` to reuse objects already in memory instead. A :class:`Judge`
    instance or ``None`` (meaning tests only) is accepted so callers can pass either through.
    """
    if isinstance(spec, Judge):
        return spec
    if spec is None:
        config: dict[str, Any] = {"type": "tests"}
    elif isinstance(spec, str):
        config = _parse_spec_string(spec)
    elif isinstance(spec, Mapping):
        config = dict(spec)
        if "type" not in config and "kind" in config:
            config["type"] = config.pop("kind")
    else:
        raise JudgeConfigError(f"judge spec must be a string or a mapping, got {type(spec)}")
    config.update(overrides)
    kind = str(config.pop("type", "")).lower()

    if kind in _TESTS_NAMES:
        _check_keys("tests", config, set())
        return TestsOnlyJudge()

    if kind == "openai":
        _check_keys("openai", config, {"base_url", "model", "extra_body", *_OPENAI_PARAMS})
        if not config.get("model"):
            raise JudgeConfigError("the openai judge needs a model, e.g. ...?model=gpt-oss-20b")
        if not config.get("base_url"):
            raise JudgeConfigError("the openai judge needs a base_url, e.g. http://HOST:8000/v1")
        kwargs = {
            key: _coerce(key, value, _OPENAI_PARAMS[key]) if key in _OPENAI_PARAMS else value
            for key, value in config.items()
        }
        return OpenAIJudge(**kwargs)

    if kind == "local":
        _check_keys("local", config, {"model", *_LOCAL_PARAMS, *_LOAD_PARAMS})
        name = config.pop("model", None)
        load_kwargs = {k: config.pop(k) for k in list(config) if k in _LOAD_PARAMS}
        kwargs = {key: _coerce(key, value, _LOCAL_PARAMS[key]) for key, value in config.items()}
        if model_and_tokenizer is not None:
            model, tokenizer = model_and_tokenizer
        elif name:
            from backtrack.models import load_model

            model, tokenizer = load_model(str(name), **load_kwargs)
        else:
            raise JudgeConfigError(
                "the local judge needs a model name (local:MODEL_NAME) or model_and_tokenizer"
            )
        return LocalJudge(model, tokenizer, **kwargs)

    raise JudgeConfigError(f"unknown judge type {kind!r}; use 'tests', 'local' or 'openai'")

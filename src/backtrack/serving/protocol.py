"""The OpenAI-compatible request bodies, their checks, and the engine settings they become.

Requests follow OpenAI's ``/v1/completions`` and ``/v1/chat/completions``. Backtracking is
asked for with one extra object that the ``openai`` client sends through ``extra_body``::

    client.completions.create(
        model="qwen2.5-coder-0.5b-instruct", prompt="def add(a, b):", max_tokens=64,
        extra_body={"backtrack": {"operator": "probability-trend", "rollback_window": 32,
                                  "banned_strings": ["TODO"], "trace": True}},
    )

``top_k`` and ``min_p`` are accepted at top level, as vLLM and llama.cpp's server do.

Defaults: a decoding setting a request leaves out (``null`` here) takes the engine's default,
``GenerationConfig()``'s, as the CLI and the evaluation do (so ``temperature`` is not OpenAI's
1.0: see :mod:`backtrack.serving.requests`). What the protocol itself defines keeps its value
here: ``max_tokens`` (:data:`OPENAI_COMPLETION_MAX_TOKENS`), ``n=1``, ``stream=false``, and the
``backtrack`` object's ``rollback_window`` (the engine's interactive window).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backtrack.engine.decoder import INTERACTIVE_ROLLBACK_WINDOW
from backtrack.engine.types import MAX_TOP_LOGPROBS

# OpenAI's default ``max_tokens`` of /v1/completions (chat requests default to the server's
# --max-tokens-limit).
OPENAI_COMPLETION_MAX_TOKENS = 16
# OpenAI's limit of the completions API's ``logprobs`` (alternatives per token).
MAX_COMPLETION_LOGPROBS = 5
# The finish reason of a choice the server ended because it was shutting down (the drain
# timeout passed); OpenAI's clients accept any string there.
SERVER_SHUTDOWN = "server_shutdown"


class ServeError(Exception):
    """A request the server refuses: an OpenAI-style error with an HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.kind = message, status, kind
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code=None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class BacktrackOptions(BaseModel):
    """The ``backtrack`` extension of a request.

    Attributes:
        operator: operator spec (``backtrack operators``); default: the server's
            ``--operator``. Learned operators (``rl:...``) load files, so only the server's own
            may be used.
        rollback_window: deepest rollback in tokens (default: the engine's interactive window,
            :data:`~backtrack.engine.decoder.INTERACTIVE_ROLLBACK_WINDOW`; ``null``: unbounded,
            so a stream holds back everything until the end).
        period, ban, max_retries_per_position, max_backtracks, max_discarded_tokens: as in
            :class:`~backtrack.engine.GenerationConfig` (``null``: its default).
        banned_strings, banned_regex, ban_ignore_case: phrases never to produce (``null``:
            :class:`~backtrack.engine.GenerationConfig`'s default, none).
        trace: return every token and rollback event in the response.
        trace_stream: with ``stream: true``, also stream every token and rollback event as it
            happens (chunks with a ``backtrack.events`` list), so a client can show deleted
            text live; the committed ``text`` chunks are unchanged. Default off.
    """

    model_config = ConfigDict(extra="forbid")

    operator: str | None = None
    rollback_window: int | None = Field(default=INTERACTIVE_ROLLBACK_WINDOW, ge=0)
    period: int | None = Field(default=None, ge=1)
    ban: Literal["accumulate", "next", "none"] | None = None
    max_retries_per_position: int | None = Field(default=None, ge=0)
    max_backtracks: int | None = Field(default=None, ge=0)
    max_discarded_tokens: int | None = Field(default=None, ge=0)
    banned_strings: list[str] | None = None
    banned_regex: list[str] | None = None
    ban_ignore_case: bool | None = None
    trace: bool = False
    trace_stream: bool = False


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields both endpoints share.

    ``None`` is "not given" for the sampling settings (temperature, top_p, top_k, min_p): the
    engine's defaults apply. ``max_tokens``, ``n`` and ``stream`` default as OpenAI defines.
    """

    # Unknown top-level fields are kept (``model_extra``) for the server to refuse or ignore
    # (--ignore-unknown-fields, see serving.fields); the published schema admits none.
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    backtrack: BacktrackOptions = Field(default_factory=BacktrackOptions)
    # Penalties: OpenAI's (presence, frequency, logit_bias) and, top-level as vLLM's and
    # llama.cpp's servers take them, repetition and DRY. ``None``: the engine's default (off).
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    dry_multiplier: float | None = Field(default=None, ge=0.0)
    dry_base: float | None = Field(default=None, gt=1.0)
    dry_allowed_length: int | None = Field(default=None, ge=1)
    dry_sequence_breakers: list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        return stops

    def unsupported(self) -> str | None:
        """The name of a field set to something this server does not implement."""
        return None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    # 0 only with echo (the prompt alone); checked in unsupported().
    max_tokens: int | None = Field(default=None, ge=0)
    # The chosen token's log-probability and this many alternatives per token.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        if not self.prompt:  # "" or []: nothing to continue (an empty list is no prompts)
            raise ServeError("the prompt is empty", param="prompt")
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        # A list of texts, or of token-id lists (how lm-eval sends a batch of prompts).
        return list(self.prompt)  # type: ignore[arg-type]

    def alternatives(self) -> int | None:
        """Alternatives to report per token; ``None``: no log-probabilities at all."""
        return self.logprobs

    def unsupported(self) -> str | None:
        if self.max_tokens == 0 and not self.echo:
            raise ServeError("max_tokens must be >= 1 (0 only with echo)", param="max_tokens")
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1, self.n):
            return "best_of"
        return super().unsupported()


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as text (the parts of type ``text`` of a list, joined)."""
        if isinstance(self.content, list):
            parts = []
            for part in self.content:
                if part.get("type") != "text":
                    raise ServeError(
                        f"message content of type {part.get('type')!r} is not supported; send text",
                        param="messages",
                    )
                parts.append(str(part.get("text", "")))
            return "".join(parts)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def alternatives(self) -> int | None:
        """Alternatives to report per token; ``None``: no log-probabilities at all."""
        if not self.logprobs:
            if self.top_logprobs is not None:
                raise ServeError("top_logprobs requires logprobs: true", param="top_logprobs")
            return None
        return self.top_logprobs or 0


def finish_reason(reason: str) -> str:
    """The engine's finish reason in OpenAI's words (the server's own shutdown as it is)."""
    if reason == SERVER_SHUTDOWN:
        return reason
    return "stop" if reason in ("eos", "stop_string") else "length"

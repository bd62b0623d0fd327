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

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from backtrack.engine.settings import MAX_TOP_LOGPROBS, UNSET, declared_settings

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


def declared_fields(place: str) -> dict[str, Any]:
    """The request fields of every setting declared at ``place`` (``"top"`` or
    ``"backtrack"``), with the declaration's bounds and help; ``None`` (the default) means
    "not given": the engine's default applies (the declared ``request_default`` where the
    protocol defines one)."""
    out: dict[str, Any] = {}
    for declared in declared_settings():
        setting = declared.setting
        if setting.request != place:
            continue
        default = None if setting.request_default is UNSET else setting.request_default
        bounds = {k: getattr(setting, k) for k in ("ge", "gt", "le", "lt")}
        field = Field(
            default=default,
            description=setting.help,
            **{k: v for k, v in bounds.items() if v is not None},
        )
        out[declared.request_name] = (_request_type(declared.type) | None, field)
    return out


def _request_type(hint: Any) -> Any:
    """A setting's type in JSON: lists for sequences, string-keyed objects for mappings."""
    origin = typing.get_origin(hint)
    if origin in (Sequence, list, tuple):
        return list[typing.get_args(hint)[0]]  # type: ignore[misc]
    if origin in (Mapping, dict):
        return dict[str, float]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else hint


class _BacktrackBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str | None = None
    ban_lists: list[str] | None = Field(
        default=None, description="Names of ban lists the server loaded (--ban-list NAME=PATH)."
    )
    trace: bool = False
    trace_stream: bool = False


BacktrackOptions = create_model(
    "BacktrackOptions",
    __base__=_BacktrackBase,
    __module__=__name__,
    __doc__="""The ``backtrack`` extension of a request.

    Attributes:
        operator: operator spec (``backtrack operators``); default: the server's
            ``--operator``. Learned operators (``rl:...``) load files, so only the server's own
            may be used.
        ban_lists: names of the ban lists the server loaded at start
            (``backtrack serve --ban-list NAME=PATH``), each compiled once and shared by every
            request; how they apply: ``ban_whole_words``, ``ban_ignore_case``,
            ``ban_strength``, ``ban_hard``.
        trace: return every token and rollback event in the response.
        trace_stream: with ``stream: true``, also stream every token and rollback event as it
            happens (chunks with a ``backtrack.events`` list), so a client can show deleted
            text live; the committed ``text`` chunks are unchanged. Default off.

    and every setting :class:`~backtrack.engine.settings.GenerationConfig` declares for the
    ``backtrack`` object (``period``, ``ban``, ``rollback_window``, ``banned_strings``, ...),
    with its bounds; ``null`` takes the engine's default, except ``rollback_window``, whose
    default is the engine's interactive window
    (:data:`~backtrack.engine.settings.INTERACTIVE_ROLLBACK_WINDOW`; ``null``: unbounded, so a
    stream holds back everything until the end).
    """,
    **declared_fields("backtrack"),
)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingBase(BaseModel):
    """Fields both endpoints share.

    ``None`` is "not given" for the decoding settings (temperature, top_p, top_k, min_p, the
    penalties: every setting declared at top level): the engine's defaults apply.
    ``max_tokens``, ``n`` and ``stream`` default as OpenAI defines.
    """

    # Unknown top-level fields are kept (``model_extra``) for the server to refuse or ignore
    # (--ignore-unknown-fields, see serving.fields); the published schema admits none.
    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # TabbyAPI's and ik_llama.cpp's top-level spelling of the backtrack object's field; the
    # phrases of both are banned.
    banned_strings: list[str] | None = None
    backtrack: BacktrackOptions = Field(default_factory=BacktrackOptions)  # type: ignore[valid-type]

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


# The sampling settings and penalties at top level (as vLLM's and llama.cpp's servers take
# them), from their declarations.
_Sampling = create_model(
    "_Sampling", __base__=_SamplingBase, __module__=__name__, **declared_fields("top")
)


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

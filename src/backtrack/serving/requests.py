"""Turning a request body into what the engine decodes: prompt ids, an operator and a
:class:`~backtrack.engine.GenerationConfig`.

A request's config is ``GenerationConfig()`` with the settings the request gave replaced
(:meth:`~backtrack.engine.GenerationConfig.updated`): a setting the client leaves out takes
the engine's own default, the same one the CLI and the evaluation start from. The exceptions
are protocol definitions, not decoding defaults: ``max_tokens`` (OpenAI's 16 for completions,
the server's limit for chat) and the rollback window (the interactive window, so that a
stream trails decoding by a bounded number of tokens).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from backtrack.engine.penalties import Penalties
from backtrack.engine.prompt import encode_prompt
from backtrack.engine.settings import GenerationConfig, config_from_given, declared_settings
from backtrack.operators import Never, Operator, OperatorSpecError, parse_operator
from backtrack.serving.protocol import (
    OPENAI_COMPLETION_MAX_TOKENS,
    ChatCompletionRequest,
    CompletionRequest,
    ServeError,
)
from backtrack.serving.settings import ServeSettings


def check_model(settings: ServeSettings, name: str) -> None:
    """Refuse (404) a model name this server does not serve."""
    if name not in settings.model_names:
        raise ServeError(
            f"the model {name!r} does not exist; this server serves {settings.model_names[0]!r}",
            404,
            kind="not_found_error",
            param="model",
            code="model_not_found",
        )


def prompt_ids(settings: ServeSettings, tokenizer: Any, prompt: str | list[int]) -> list[int]:
    """The ids of one prompt (text, or token ids checked against the vocabulary)."""
    if isinstance(prompt, list):
        vocab = len(tokenizer)
        if any(not 0 <= t < vocab for t in prompt):
            raise ServeError(f"prompt token ids must be in [0, {vocab})", param="prompt")
    try:
        ids = encode_prompt(tokenizer, prompt)
    except ValueError as exc:
        raise ServeError(str(exc), param="prompt") from None
    if len(ids) > settings.max_prompt_tokens:
        raise ServeError(
            f"the prompt has {len(ids)} tokens; the limit is {settings.max_prompt_tokens} "
            "(--max-prompt-tokens)",
            param="prompt",
        )
    return ids


def chat_prompt(tokenizer: Any, body: ChatCompletionRequest) -> str:
    """The chat's messages rendered by the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ServeError("this model has no chat template; use /v1/completions")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template's own checks (e.g. role order)
        raise ServeError(f"the chat template refused the messages: {exc}") from None


def request_operator(spec: str | None, default: Operator) -> Operator | None:
    """A fresh operator for one choice (``spec``, else a copy of the server's ``default``);
    ``None`` for ``never``, so a plain request streams every token at once (an operator
    makes the stream wait for its window)."""
    if spec is None:
        operator = copy.deepcopy(default)
    elif any(part.split(":")[0].strip() == "rl" for part in spec.split("+")):
        raise ServeError(
            "learned operators load files from the server's disk, so a request cannot "
            "name one; start the server with --operator rl:path=...",
            param="backtrack.operator",
        )
    else:
        try:
            operator = parse_operator(spec)
        except OperatorSpecError as exc:
            raise ServeError(str(exc), param="backtrack.operator") from None
    return None if isinstance(operator, Never) else operator


def ban_files(names: list[str] | None, settings: ServeSettings) -> list[str] | None:
    """The server's lists a request names, as ban-file entries (``NAME=PATH``); an unknown
    name is a 400."""
    if not names:
        return None
    unknown = [name for name in names if name not in settings.ban_lists]
    if unknown:
        known = ", ".join(settings.ban_lists) or "none (start the server with --ban-list)"
        raise ServeError(
            f"unknown ban list {unknown[0]!r}; this server's lists: {known}",
            param="backtrack.ban_lists",
        )
    return [f"{name}={settings.ban_lists[name]}" for name in dict.fromkeys(names)]


def max_tokens(body: ChatCompletionRequest | CompletionRequest, settings: ServeSettings) -> int:
    """The request's token limit, by OpenAI's rules, checked against the server's limit."""
    limit = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        limit = body.max_completion_tokens
    if limit is None:  # the protocol's defaults
        chat = isinstance(body, ChatCompletionRequest)
        limit = settings.max_tokens_limit if chat else OPENAI_COMPLETION_MAX_TOKENS
    if limit > settings.max_tokens_limit:
        raise ServeError(
            f"max_tokens is {limit}; the limit is {settings.max_tokens_limit} (--max-tokens-limit)",
            param="max_tokens",
        )
    return limit


def request_config(
    body: ChatCompletionRequest | CompletionRequest,
    settings: ServeSettings,
    tokenizer: Any = None,
) -> GenerationConfig:
    """The request's decoding settings: ``GenerationConfig()`` updated with what it gave.

    ``tokenizer``: checks ``logit_bias``'s token ids against the vocabulary (a 400, not a
    failure once decoding starts)."""
    given: dict[str, Any] = {}
    for declared in declared_settings():
        place = declared.setting.request
        if place in ("top", "backtrack"):
            holder = body if place == "top" else body.backtrack
            given[declared.name] = getattr(holder, declared.request_name)
    given["stop"] = body.stop or None
    if body.banned_strings:  # the top-level spelling (TabbyAPI's), with the backtrack object's
        given["banned_strings"] = [*body.banned_strings, *(body.backtrack.banned_strings or [])]
    given["ban_files"] = ban_files(body.backtrack.ban_lists, settings)
    # Always set: null is a window of its own (unbounded), not "the default".
    given["rollback_window"] = body.backtrack.rollback_window
    # max_tokens 0 (echo alone) decodes nothing: the route answers it without the engine.
    given["max_new_tokens"] = max(1, max_tokens(body, settings))
    try:
        config = config_from_given({k: v for k, v in given.items() if k != "rollback_window"})
        config = replace(config, rollback_window=given["rollback_window"])
        if tokenizer is not None and config.logit_bias:
            Penalties.from_config(config, tokenizer)  # checks the ids against the vocabulary
    except ValueError as exc:
        message = str(exc)
        # The field the message names, else the backtrack extension's.
        param = next(
            (
                d.request_name if d.setting.request == "top" else f"backtrack.{d.request_name}"
                for d in declared_settings()
                if message.startswith(d.name)
            ),
            "backtrack",
        )
        raise ServeError(message, param=param) from None
    # What the response reports is no decoding setting (not a flat key): set on its own.
    return replace(config, top_logprobs=body.alternatives() or 0)

"""Request fields the server does not know: one rule, checked before any other work.

* A field of OpenAI's API that this server does not implement (``tools``,
  ``response_format``, ...) is a 400 saying so, always: it would change the answer, so
  ignoring it would mislead the client.
* Any other unknown top-level field (``repeat_penalty``, a typo, another server's
  extension) is a 400 naming it, as OpenAI answers ("Unrecognized request argument
  supplied"), unless the server runs with ``--ignore-unknown-fields``: then it is ignored and
  logged once per field name.
* An unknown field inside the ``backtrack`` object is always a 400 naming it (mapped from the
  body's validation in :mod:`backtrack.serving.app`): that object is this server's own, so a
  name there that it does not know is a mistake.
"""

from __future__ import annotations

import logging

from backtrack.serving.protocol import ChatCompletionRequest, CompletionRequest, ServeError

log = logging.getLogger("backtrack.serving")

# Fields of OpenAI's completions and chat APIs that this server does not implement (those it
# declares, like ``suffix``, have their own checks in the request models).
OPENAI_UNSUPPORTED = frozenset(
    {
        "audio",
        "function_call",
        "functions",
        "metadata",
        "modalities",
        "parallel_tool_calls",
        "prediction",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "service_tier",
        "store",
        "tool_choice",
        "tools",
        "verbosity",
        "web_search_options",
    }
)


def unrecognized(names: list[str]) -> ServeError:
    """OpenAI's 400 for fields it does not know."""
    plural = "s" if len(names) > 1 else ""
    return ServeError(
        f"Unrecognized request argument{plural} supplied: {', '.join(names)}",
        param=names[0],
        code="unknown_field",
    )


def check_fields(
    body: ChatCompletionRequest | CompletionRequest, ignore_unknown: bool, logged: set[str]
) -> None:
    """Refuse (400) the request's unknown top-level fields, or with ``ignore_unknown`` log
    each name once (``logged``: the names already logged)."""
    extra = list(body.model_extra or {})
    if not extra:
        return
    unsupported = [name for name in extra if name in OPENAI_UNSUPPORTED]
    if unsupported:
        raise ServeError(f"{unsupported[0]} is not supported by this server", param=unsupported[0])
    if not ignore_unknown:
        raise unrecognized(extra)
    for name in extra:
        if name not in logged:
            logged.add(name)
            log.warning("ignoring the unknown request field %r (--ignore-unknown-fields)", name)

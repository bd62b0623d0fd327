"""What every request handler of the server shares: the settings it was started with, the
scheduler, the tokenizer and the default operator, held by the app as ``app.state.server``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from backtrack.engine.banlists import LIST_NAME, ban_list
from backtrack.operators import Operator
from backtrack.serving.auth import check_api_keys
from backtrack.serving.metrics import ServerMetrics
from backtrack.serving.scheduler import Scheduler


class ServeSettings:
    """What ``backtrack serve`` was started with (limits and defaults of every request).

    Args:
        model_names: names a request's ``model`` may use; the first is listed by /v1/models.
        operator: default operator spec for requests that name none.
        max_batch: rows decoded together. max_queue: requests that may wait for a row.
        max_tokens_limit: the largest ``max_tokens`` a request may ask for (also the default
            of chat requests; completions default to OpenAI's 16).
        max_prompt_tokens: the longest prompt accepted. max_body_bytes: largest request body.
        ban_lists: ``{name: path}`` of the ban lists requests may name (``ban_lists``), each
            read and compiled once, at start, and shared by every request.
        api_keys: keys a client must send as ``Authorization: Bearer KEY`` to use ``/v1``
            and ``/metrics`` (empty: no key needed; see :mod:`backtrack.serving.auth`).
        drain_timeout: seconds requests in flight may take to finish after SIGTERM or SIGINT
            before they are ended with ``finish_reason: "server_shutdown"``
            (:mod:`backtrack.serving.drain`).
        ignore_unknown_fields: accept (and log once) top-level request fields the server does
            not know, instead of refusing them with a 400 (:mod:`backtrack.serving.fields`).
    """

    def __init__(
        self,
        model_names: Sequence[str],
        operator: str = "never",
        max_batch: int = 8,
        max_queue: int = 256,
        max_tokens_limit: int = 2048,
        max_prompt_tokens: int = 8192,
        max_body_bytes: int = 4_000_000,
        ban_lists: Mapping[str, str] | None = None,
        api_keys: Sequence[str] = (),
        drain_timeout: float = 30.0,
        ignore_unknown_fields: bool = False,
    ) -> None:
        if not model_names:
            raise ValueError("the server needs a model name")
        if min(max_batch, max_tokens_limit, max_prompt_tokens, max_body_bytes) < 1:
            raise ValueError("limits must be >= 1")
        self.model_names = list(model_names)
        self.operator = operator
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_tokens_limit, self.max_prompt_tokens = max_tokens_limit, max_prompt_tokens
        self.max_body_bytes = max_body_bytes
        self.ban_lists = dict(ban_lists or {})
        for name, path in self.ban_lists.items():
            if not LIST_NAME.fullmatch(name):
                raise ValueError(f"ban list name {name!r}: use letters, digits, '_', '.', '-'")
            for ignore_case in (False, True):  # a request may ask for either folding
                ban_list(f"{name}={path}", ignore_case)  # a one-line ValueError if it is bad
        self.api_keys = check_api_keys(api_keys)
        if drain_timeout < 0:
            raise ValueError("the drain timeout must be >= 0 seconds")
        self.drain_timeout = drain_timeout
        self.ignore_unknown_fields = ignore_unknown_fields


@dataclass
class ServerState:
    """The shared state of one server.

    Attributes:
        settings: the start-up settings.
        scheduler: decodes every request in one continuous batch.
        tokenizer: the model's tokenizer (prompts and chat templates).
        default_operator: the ``--operator``, built once (a learned one loads its policy at
            start-up); each request decodes with its own copy, since state lives on it.
        context_limit: tokens one sequence may hold (``None``: unknown).
        metrics: the Prometheus metrics served at ``/metrics``.
        created: when the server started (the models' ``created``).
        draining: set once a shutdown began; new requests get 503 (:mod:`.drain`).
        in_flight: requests being answered (counted by :mod:`.middleware`).
        unknown_fields_logged: unknown fields already logged (``--ignore-unknown-fields``).
    """

    settings: ServeSettings
    scheduler: Scheduler
    tokenizer: Any
    default_operator: Operator
    context_limit: int | None
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    in_flight: int = 0
    unknown_fields_logged: set[str] = field(default_factory=set)


def server_state(request: Request) -> ServerState:
    """The app's shared state (a FastAPI dependency)."""
    return request.app.state.server

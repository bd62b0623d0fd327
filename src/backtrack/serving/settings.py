"""What ``backtrack serve`` was started with: :class:`ServeSettings`, the limits and defaults
of every request.

A module of its own, importing neither FastAPI nor torch, so that the command line builds
``serve``'s flags from these declarations (``cli.options.settings_options``) and ``--help``
stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from backtrack.engine.banlists import LIST_NAME, ban_list
from backtrack.flags import option
from backtrack.serving.auth import check_api_keys


@dataclass
class ServeSettings:
    """What ``backtrack serve`` was started with (limits and defaults of every request).

    Args:
        model_names: names a request's ``model`` may use; the first is listed by /v1/models.
        operator: default operator spec for requests that name none.
        max_batch: rows decoded together. max_queue: requests that may wait for a row.
        max_tokens_limit: the largest ``max_tokens`` a request may ask for (also the default
            of chat requests; completions default to OpenAI's 16).
        max_prompt_tokens: the longest prompt accepted. max_body_bytes: largest request body.
        drain_timeout: seconds requests in flight may take to finish after SIGTERM or SIGINT
            before they are ended with ``finish_reason: "server_shutdown"``
            (:mod:`backtrack.serving.drain`).
        ignore_unknown_fields: accept (and log once) top-level request fields the server does
            not know, instead of refusing them with a 400 (:mod:`backtrack.serving.fields`).
        api_keys: keys a client must send as ``Authorization: Bearer KEY`` to use ``/v1``
            and ``/metrics`` (empty: no key needed; see :mod:`backtrack.serving.auth`). The
            command line takes them from ``--api-key``, ``--api-key-file`` or the environment.
        ban_lists: ``{name: path}`` of the ban lists requests may name (``ban_lists``), each
            read and compiled once, at start, and shared by every request
            (``--ban-list NAME=PATH``).
    """

    model_names: Sequence[str]
    operator: str = option(
        "never", "Default operator of requests that name none.", flag=("--operator", "-o")
    )
    max_batch: int = option(8, "Requests decoded together.")
    max_queue: int = option(256, "Requests that may wait for a row; more get 503.")
    max_tokens_limit: int = option(2048, "Largest max_tokens a request may ask for.")
    max_prompt_tokens: int = option(8192, "Longest prompt accepted.")
    max_body_bytes: int = option(4_000_000, "Largest request body.")
    drain_timeout: float = option(
        30.0,
        "On SIGTERM or SIGINT, seconds requests in flight may take to finish before they end "
        "with finish_reason 'server_shutdown'; new requests get 503.",
    )
    ignore_unknown_fields: bool = option(
        False,
        "Ignore (and log once) unknown top-level request fields instead of refusing them with "
        "a 400.",
    )
    api_keys: Sequence[str] = ()
    ban_lists: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model_names:
            raise ValueError("the server needs a model name")
        limits = (self.max_batch, self.max_tokens_limit, self.max_prompt_tokens)
        if min(*limits, self.max_body_bytes) < 1:
            raise ValueError("limits must be >= 1")
        self.model_names = list(self.model_names)
        self.api_keys = check_api_keys(self.api_keys)
        if self.drain_timeout < 0:
            raise ValueError("the drain timeout must be >= 0 seconds")
        self.ban_lists = dict(self.ban_lists or {})
        for name, path in self.ban_lists.items():
            if not LIST_NAME.fullmatch(name):
                raise ValueError(f"ban list name {name!r}: use letters, digits, '_', '.', '-'")
            for ignore_case in (False, True):  # a request may ask for either folding
                ban_list(f"{name}={path}", ignore_case)  # a one-line ValueError if it is bad

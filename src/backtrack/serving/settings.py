"""What ``backtrack serve`` was started with: :class:`ServeSettings`, the limits and defaults
of every request.

A module of its own, importing neither FastAPI nor torch, so that the command line builds
``serve``'s flags from these declarations (``cli.options.settings_options``) and ``--help``
stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backtrack.flags import option


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

    def __post_init__(self) -> None:
        if not self.model_names:
            raise ValueError("the server needs a model name")
        limits = (self.max_batch, self.max_tokens_limit, self.max_prompt_tokens)
        if min(*limits, self.max_body_bytes) < 1:
            raise ValueError("limits must be >= 1")
        self.model_names = list(self.model_names)

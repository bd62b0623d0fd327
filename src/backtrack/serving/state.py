"""What every request handler of the server shares: the settings it was started with, the
scheduler, the tokenizer and the default operator, held by the app as ``app.state.server``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from backtrack.operators import Operator
from backtrack.serving.scheduler import Scheduler
from backtrack.serving.settings import ServeSettings


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
        created: when the server started (the models' ``created``).
    """

    settings: ServeSettings
    scheduler: Scheduler
    tokenizer: Any
    default_operator: Operator
    context_limit: int | None
    created: int = field(default_factory=lambda: int(time.time()))


def server_state(request: Request) -> ServerState:
    """The app's shared state (a FastAPI dependency)."""
    return request.app.state.server

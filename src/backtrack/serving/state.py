"""What every request handler of the server shares: the settings it was started with, the
scheduler, the tokenizer and the default operator, held by the app as ``app.state.server``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from backtrack.operators import Operator
from backtrack.serving.metrics import ServerMetrics
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

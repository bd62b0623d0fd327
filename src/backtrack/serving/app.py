"""``backtrack serve``: an OpenAI-compatible HTTP server (FastAPI) over the batch decoder.

Endpoints (:mod:`backtrack.serving.routes`): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (the model's chat template), ``GET /health``. Every request
decodes as a row of one continuous batch (:mod:`backtrack.serving.scheduler`), with the
request's own operator, sampling, seed, stop strings and banned strings
(:mod:`backtrack.serving.requests`); ``stream: true`` sends server-sent events carrying only
text that no rollback can delete any more. Each choice carries a non-standard ``backtrack``
object (rollbacks, deleted tokens, forward passes, and with ``"trace": true`` every event;
:mod:`backtrack.serving.replies`).

Errors are OpenAI's JSON shape: 400 (a request the server cannot honour), 404 (unknown
model or route), 413 (body too large), 422 (a malformed body), 503 with ``Retry-After`` (the
queue is full); an unexpected failure is a 500 with a one-line message, its traceback only in
the server's log.
"""

from __future__ import annotations

import sys
import traceback
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backtrack.operators import OperatorSpecError, parse_operator
from backtrack.serving.protocol import ServeError, error_body
from backtrack.serving.routes import router
from backtrack.serving.scheduler import Scheduler
from backtrack.serving.settings import ServeSettings
from backtrack.serving.state import ServerState


def _context_limit(model: Any) -> int | None:
    """Tokens one sequence may hold: llama.cpp's ``n_ctx``, or the model's positions."""
    n_ctx = getattr(model, "n_ctx", None)
    if isinstance(n_ctx, int):
        return n_ctx
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def create_app(model: Any, tokenizer: Any, settings: ServeSettings) -> FastAPI:
    """The server's FastAPI app; its scheduler thread runs while the app's lifespan does.

    The shared state is ``app.state.server`` (a :class:`ServerState`); the scheduler is also
    ``app.state.scheduler``.
    """
    # Built once, so a bad spec fails at start-up (and a learned operator loads its policy).
    try:
        default_operator = parse_operator(settings.operator)
    except OperatorSpecError as exc:
        raise ValueError(str(exc)) from exc
    scheduler = Scheduler(model, tokenizer, settings.max_batch, settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="backtrack", lifespan=lifespan)
    app.state.server = ServerState(
        settings, scheduler, tokenizer, default_operator, _context_limit(model)
    )
    app.state.scheduler = scheduler
    _add_error_handlers(app)
    _limit_body_size(app, settings.max_body_bytes)
    app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's JSON shape."""

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the request body is not valid JSON"), 400)
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, param=".".join(loc) or None), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = (
            f"no such endpoint: {request.method} {request.url.path}"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return JSONResponse(error_body(message, kind), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        traceback.print_exception(exc, file=sys.stderr)
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "server_error"), 500
        )


def _limit_body_size(app: FastAPI, max_body_bytes: int) -> None:
    """Refuse (413) a body whose declared length is over the limit, before reading it."""

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return JSONResponse(
                error_body(
                    f"the request body has {length} bytes; the limit is "
                    f"{max_body_bytes} (--max-body-bytes)"
                ),
                413,
            )
        return await call_next(request)

"""``backtrack serve``: an OpenAI-compatible HTTP server (FastAPI) over the batch decoder.

Endpoints (:mod:`backtrack.serving.routes`): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (the model's chat template), ``GET /health``, ``GET /metrics``
(:mod:`backtrack.serving.metrics`). Every request passes through
:mod:`backtrack.serving.middleware` (request id, API key, drain, metrics, access log). Every request
decodes as a row of one continuous batch (:mod:`backtrack.serving.scheduler`), with the
request's own operator, sampling, seed, stop strings and banned strings
(:mod:`backtrack.serving.requests`); ``stream: true`` sends server-sent events carrying only
text that no rollback can delete any more. Each choice carries a non-standard ``backtrack``
object (rollbacks, deleted tokens, forward passes, and with ``"trace": true`` every event;
:mod:`backtrack.serving.replies`).

Errors are OpenAI's JSON shape: 400 (a request the server cannot honour, an unknown field:
:mod:`backtrack.serving.fields`), 401 (a missing or wrong API key), 404 (unknown model or
route), 413 (body too large), 422 (a malformed body), 503 with ``Retry-After`` (the queue is
full) or without (the server is shutting down); an unexpected failure is a 500 with a one-line
message, its traceback only in the server's log, with the request's id.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backtrack.operators import OperatorSpecError, parse_operator
from backtrack.serving.fields import unrecognized
from backtrack.serving.metrics import ServerMetrics
from backtrack.serving.middleware import ServerMiddleware, note_error
from backtrack.serving.protocol import ServeError
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
    metrics = ServerMetrics()
    scheduler = Scheduler(model, tokenizer, settings.max_batch, settings.max_queue, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="backtrack", lifespan=lifespan)
    app.state.server = server = ServerState(
        settings, scheduler, tokenizer, default_operator, _context_limit(model), metrics
    )
    metrics.watch(scheduler.queued, lambda: scheduler.live_rows, lambda: server.in_flight)
    app.state.scheduler = scheduler
    _add_error_handlers(app)
    app.include_router(router)
    app.add_middleware(ServerMiddleware, server=server, routes=router.routes)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's JSON shape (an unexpected exception is answered by the
    middleware, which logs it with the request's id). Each handler also puts its message on
    the request's access log line."""

    def answer(request: Request, error: ServeError) -> JSONResponse:
        note_error(request, error.message)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return answer(request, ServeError("the request body is not valid JSON"))
        unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
        if unknown:  # a field the backtrack object does not have (see serving.fields)
            names = [".".join(str(p) for p in e["loc"] if p != "body") for e in unknown]
            return answer(request, unrecognized(names))
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
        return answer(request, ServeError(message, 422, param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = (
            f"no such endpoint: {request.method} {request.url.path}"
            if exc.status_code in (404, 405)
            else str(exc.detail)
        )
        return answer(request, ServeError(message, exc.status_code, kind=kind))

"""What every HTTP request of the server passes through before and after its route: one ASGI
middleware (:class:`ServerMiddleware`), outermost, so that even the requests it refuses are
traced, counted and logged.

In order, for each request:

1. **Request id.** The client's ``X-Request-Id`` (printable ASCII, no spaces, at most 128
   characters) or, failing that, a new one; a completion route uses it as the completion's
   ``id`` (or, when the client sent none, makes its ``cmpl-...`` id the request's,
   :func:`request_id`). Every response carries it in ``X-Request-Id``.
2. **Drain.** Once a shutdown began (:mod:`backtrack.serving.drain`), a new request gets 503
   (``/health``, which then says ``draining``, and ``/metrics`` still answer).
3. **API key.** With keys set, ``/v1`` and ``/metrics`` need ``Authorization: Bearer KEY``
   (:mod:`backtrack.serving.auth`); a missing or wrong key is a 401 in OpenAI's shape.
4. **Body size.** A declared ``Content-Length`` over ``--max-body-bytes`` is a 413, before
   the body is read.
5. **After the response** (a stream's last byte): the request is counted in the metrics
   (:mod:`backtrack.serving.metrics`) and logged in one access line, ``request-id client
   "METHOD path" status seconds``, plus the error message of a refused request. An
   unexpected exception is logged with its request id and traceback, and answered (if
   nothing was sent yet) with a 500 and a one-line message.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backtrack.serving.auth import authorized, bearer_token, needs_key
from backtrack.serving.protocol import ServeError, error_body
from backtrack.serving.state import ServerState

log = logging.getLogger("backtrack.serving")

REQUEST_ID_HEADER = "X-Request-Id"
# Keys of the request's scope["state"] (what a route sees as request.state).
REQUEST_ID, ERROR = "request_id", "error"
# Paths that still answer while the server drains.
OPEN_WHILE_DRAINING = ("/health", "/metrics")
MAX_CLIENT_ID = 128


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def request_id(request: Request, prefix: str) -> str:
    """The request's id: the client's ``X-Request-Id``, else a new ``prefix-...`` one, which
    the response's header then carries (a completion's ``id`` is its request's id)."""
    state = request.scope.setdefault("state", {})
    if not state.get(REQUEST_ID):
        state[REQUEST_ID] = new_request_id(prefix)
    return state[REQUEST_ID]


def note_error(request: Request, message: str) -> None:
    """Put a refused request's error message on its access log line."""
    request.scope.setdefault("state", {})[ERROR] = message


def _client_id(value: str | None) -> str | None:
    """The client's request id if it is usable in a header and a log line."""
    usable = value and len(value) <= MAX_CLIENT_ID and value.isascii() and value.isprintable()
    return value if usable and " " not in value else None


class ServerMiddleware:
    """See the module. ``routes``: the server's routes, to name the endpoint of a request
    refused before routing."""

    def __init__(self, app: ASGIApp, server: ServerState, routes: list[BaseRoute]) -> None:
        self.app, self.server, self.routes = app, server, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        headers = Headers(scope=scope)
        state[REQUEST_ID] = _client_id(headers.get(REQUEST_ID_HEADER))
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                state[REQUEST_ID] = state.get(REQUEST_ID) or new_request_id()
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (REQUEST_ID_HEADER.lower().encode(), state[REQUEST_ID].encode()),
                    ],
                }
            await send(message)

        self.server.in_flight += 1
        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                state[ERROR] = refusal.message
                response = JSONResponse(refusal.body(), refusal.status, headers=refusal.headers)
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            rid = state.get(REQUEST_ID) or new_request_id()
            state[REQUEST_ID] = rid
            log.error("%s failed: %s: %s", rid, type(exc).__name__, exc, exc_info=exc)
            message = f"internal error: {type(exc).__name__}"
            state[ERROR] = message
            if status is None:  # nothing sent yet: answer in OpenAI's shape
                await JSONResponse(error_body(message, "server_error"), 500)(
                    scope, receive, send_with_id
                )
        finally:
            self.server.in_flight -= 1
            self._finished(scope, state, status, time.perf_counter() - started)

    def _refusal(self, scope: Scope, headers: Headers) -> ServeError | None:
        """Why a request is refused before its route runs, if it is."""
        path, server = scope["path"], self.server
        if server.draining and path not in OPEN_WHILE_DRAINING:
            return ServeError(
                "the server is shutting down",
                503,
                kind="server_error",
                code="shutting_down",
                headers={"Connection": "close"},
            )
        keys = server.settings.api_keys
        if keys and needs_key(path):
            token = bearer_token(headers.get("authorization"))
            if token is None or not authorized(token, keys):
                message = (
                    "missing API key: send the header 'Authorization: Bearer <key>'"
                    if token is None
                    else "invalid API key"
                )
                return ServeError(
                    message, 401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
                )
        length = headers.get("content-length")
        limit = server.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return ServeError(
                f"the request body has {length} bytes; the limit is {limit} (--max-body-bytes)",
                413,
            )
        return None

    def _endpoint(self, scope: Scope) -> str:
        """The request's route path (``other`` if none matches): a label of bounded count."""
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match != Match.NONE:
                    route = candidate
                    break
        return getattr(route, "path", None) or "other"

    def _finished(
        self, scope: Scope, state: dict[str, Any], status: int | None, seconds: float
    ) -> None:
        """Count and log a request whose response is over."""
        status = 499 if status is None else status  # the client went away first
        self.server.metrics.answered(self._endpoint(scope), status, seconds)
        client = scope.get("client")
        error = state.get(ERROR)
        log.info(
            '%s %s "%s %s" %d %.3fs%s',
            state.get(REQUEST_ID) or "-",
            client[0] if client else "-",
            scope["method"],
            scope["path"],
            status,
            seconds,
            f" {error}" if error else "",
        )

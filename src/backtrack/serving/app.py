"""``backtrack serve``: an OpenAI-compatible HTTP server (FastAPI) over the batch decoder.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
model's chat template), ``GET /health``. Every request decodes as a row of one continuous
batch (:mod:`backtrack.serving.scheduler`), with the request's own operator, sampling, seed,
stop strings and banned strings; ``stream: true`` sends server-sent events carrying only text
that no rollback can delete any more. Each choice carries a non-standard ``backtrack`` object
(rollbacks, deleted tokens, forward passes, and with ``"trace": true`` every event).

Errors are OpenAI's JSON shape: 400 (a request the server cannot honour), 404 (unknown
model or route), 413 (body too large), 422 (a malformed body), 503 with ``Retry-After`` (the
queue is full); an unexpected failure is a 500 with a one-line message, its traceback only in
the server's log.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backtrack.engine.session import encode_prompt
from backtrack.engine.types import Budget, GenerationConfig, GenerationResult
from backtrack.operators import Never, OperatorSpecError, parse_operator
from backtrack.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ServeError,
    error_body,
    finish_reason,
)
from backtrack.serving.scheduler import Scheduler, Ticket, result_usage

# Seconds between checks that a waiting client is still connected.
DISCONNECT_POLL_S = 0.5


class ServeSettings:
    """What ``backtrack serve`` was started with (limits and defaults of every request).

    Args:
        model_names: names a request's ``model`` may use; the first is listed by /v1/models.
        operator: default operator spec for requests that name none.
        max_batch: rows decoded together. max_queue: requests that may wait for a row.
        max_tokens_limit: the largest ``max_tokens`` a request may ask for (also the default
            of chat requests; completions default to 16, as OpenAI's do).
        max_prompt_tokens: the longest prompt accepted. max_body_bytes: largest request body.
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


def _context_limit(model: Any) -> int | None:
    """Tokens one sequence may hold: llama.cpp's ``n_ctx``, or the model's positions."""
    n_ctx = getattr(model, "n_ctx", None)
    if isinstance(n_ctx, int):
        return n_ctx
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def create_app(model: Any, tokenizer: Any, settings: ServeSettings) -> FastAPI:
    """The server's FastAPI app; its scheduler thread runs while the app's lifespan does."""
    # The default operator is built once (a learned one loads its policy here, and a bad
    # spec fails at start-up); each request gets its own copy, since state lives on it.
    try:
        default_operator = parse_operator(settings.operator)
    except OperatorSpecError as exc:
        raise ValueError(str(exc)) from exc
    scheduler = Scheduler(model, tokenizer, settings.max_batch, settings.max_queue)
    context_limit = _context_limit(model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="backtrack", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.settings = settings

    # ------------------------------------------------------------------ errors
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

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return JSONResponse(
                error_body(
                    f"the request body has {length} bytes; the limit is "
                    f"{settings.max_body_bytes} (--max-body-bytes)"
                ),
                413,
            )
        return await call_next(request)

    # ------------------------------------------------------------------ endpoints
    created = int(time.time())

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(settings.model_names[0], created)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict:
        _check_model(name)
        return _model_card(name, created)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "decoding": scheduler.live_rows,
            "queued": scheduler.queued(),
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = [_prompt_ids(p) for p in body.prompts()]
        return await _answer(body, prompts, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if not getattr(tokenizer, "chat_template", None):
            raise ServeError("this model has no chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template's own checks (e.g. role order)
            raise ServeError(f"the chat template refused the messages: {exc}") from None
        return await _answer(body, [_prompt_ids(text)], request, chat=True)

    # ------------------------------------------------------------------ helpers
    def _check_model(name: str) -> None:
        if name not in settings.model_names:
            raise ServeError(
                f"the model {name!r} does not exist; this server serves "
                f"{settings.model_names[0]!r}",
                404,
                kind="not_found_error",
                param="model",
                code="model_not_found",
            )

    def _prompt_ids(prompt: str | list[int]) -> list[int]:
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

    def _operator(spec: str | None):
        """A fresh operator for one choice; ``None`` for ``never``, so a plain request
        streams every token at once (an operator makes the stream wait for its window)."""
        operator = _build_operator(spec)
        return None if isinstance(operator, Never) else operator

    def _build_operator(spec: str | None):
        if spec is None:
            return copy.deepcopy(default_operator)
        if any(part.split(":")[0].strip() == "rl" for part in spec.split("+")):
            raise ServeError(
                "learned operators load files from the server's disk, so a request cannot "
                "name one; start the server with --operator rl:path=...",
                param="backtrack.operator",
            )
        try:
            return parse_operator(spec)
        except OperatorSpecError as exc:
            raise ServeError(str(exc), param="backtrack.operator") from None

    def _config(body: ChatCompletionRequest | CompletionRequest, chat: bool) -> GenerationConfig:
        max_tokens = body.max_tokens
        if chat and body.max_completion_tokens is not None:  # type: ignore[union-attr]
            max_tokens = body.max_completion_tokens  # type: ignore[union-attr]
        if max_tokens is None:
            max_tokens = settings.max_tokens_limit if chat else 16
        if max_tokens > settings.max_tokens_limit:
            raise ServeError(
                f"max_tokens is {max_tokens}; the limit is {settings.max_tokens_limit} "
                "(--max-tokens-limit)",
                param="max_tokens",
            )
        bt = body.backtrack
        try:
            return GenerationConfig(
                max_new_tokens=max_tokens,
                temperature=body.temperature,
                top_k=body.top_k or None,
                top_p=None if body.top_p >= 1.0 else body.top_p,
                min_p=body.min_p or None,
                stop=tuple(body.stop or ()),
                period=bt.period or 1,
                ban=bt.ban or "accumulate",
                max_retries_per_position=(
                    bt.max_retries_per_position if bt.max_retries_per_position is not None else 3
                ),
                rollback_window=bt.rollback_window,
                banned_strings=tuple(bt.banned_strings),
                banned_regex=tuple(bt.banned_regex),
                banned_ignore_case=bt.ban_ignore_case,
                budget=Budget(bt.max_backtracks, bt.max_discarded_tokens),
            )
        except ValueError as exc:
            raise ServeError(str(exc), param="backtrack") from None

    async def _answer(
        body: ChatCompletionRequest | CompletionRequest,
        prompts: list[list[int]],
        request: Request,
        chat: bool,
    ):
        _check_model(body.model)
        if (field := body.unsupported()) is not None:
            raise ServeError(f"{field} is not supported by this server", param=field)
        config = _config(body, chat)
        if context_limit is not None:
            longest = max(len(p) for p in prompts)
            if longest + config.max_new_tokens > context_limit:
                raise ServeError(
                    f"the prompt ({longest} tokens) and max_tokens ({config.max_new_tokens}) "
                    f"exceed the model's context of {context_limit} tokens",
                    param="max_tokens",
                )
        # One choice per (prompt, n); seeded choices get seeds seed, seed+1, ...
        jobs = []
        for p, prompt_ids in enumerate(prompts):
            for j in range(body.n):
                seed = None if body.seed is None else body.seed + j
                operator = _operator(body.backtrack.operator)
                try:
                    if operator is not None:
                        operator.check_config(config)
                except ValueError as exc:
                    raise ServeError(str(exc), param="backtrack.operator") from None
                jobs.append((p * body.n + j, prompt_ids, operator, _with_seed(config, seed)))
        scheduler.submit_room(len(jobs))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        tickets = []
        for choice, prompt_ids, operator, choice_config in jobs:
            # Every choice of the request reports on one queue, tagged with its index.
            ticket = scheduler.submit(
                prompt_ids,
                operator,
                choice_config,
                stream=body.stream,
                loop=loop,
                events=_Tagged(events, choice),
            )
            tickets.append(ticket)
        reply = _Reply(
            f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            body.model,
            chat,
            body.backtrack.trace,
        )
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(reply, tickets, events, request, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            results = await _collect(tickets, events, request)
        finally:
            for ticket in tickets:
                scheduler.cancel(ticket)  # no-op for finished ones
        if results is None:  # the client went away
            return JSONResponse(error_body("client disconnected"), 499)
        return reply.complete(results)

    async def _next_event(events: asyncio.Queue, request: Request):
        """The next (choice, kind, payload); None once the client has gone away."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return None

    async def _collect(
        tickets: list[Ticket], events: asyncio.Queue, request: Request
    ) -> list[GenerationResult] | None:
        results: dict[int, GenerationResult] = {}
        while len(results) < len(tickets):
            event = await _next_event(events, request)
            if event is None:
                return None
            choice, kind, payload = event
            if kind == "error":
                raise ServeError(payload, 500, kind="server_error")
            if kind == "done":
                results[choice] = payload
        return [results[i] for i in range(len(tickets))]

    async def _stream(
        reply: _Reply,
        tickets: list[Ticket],
        events: asyncio.Queue,
        request: Request,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        try:
            if reply.chat:
                for choice in range(len(tickets)):
                    yield reply.chunk(choice, delta={"role": "assistant", "content": ""})
            results: dict[int, GenerationResult] = {}
            while len(results) < len(tickets):
                event = await _next_event(events, request)
                if event is None:
                    return  # the client went away; finally frees the rows
                choice, kind, payload = event
                if kind == "text":
                    yield reply.chunk(choice, text=payload)
                elif kind == "done":
                    results[choice] = payload
                    yield reply.chunk(choice, result=payload)
                else:
                    yield _sse(error_body(payload, "server_error"))
                    return
            if include_usage:
                yield reply.usage_chunk(list(results.values()))
            yield "data: [DONE]\n\n"
        finally:
            for ticket in tickets:
                scheduler.cancel(ticket)

    return app


class _Tagged:
    """A ticket's view of the request's shared event queue: events tagged with its choice."""

    def __init__(self, queue: asyncio.Queue, choice: int) -> None:
        self.queue, self.choice = queue, choice

    def put_nowait(self, event: tuple[str, Any]) -> None:
        self.queue.put_nowait((self.choice, *event))


def _with_seed(config: GenerationConfig, seed: int | None) -> GenerationConfig:
    from dataclasses import replace

    return replace(config, seed=seed)


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "backtrack"}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class _Reply:
    """Builds the response objects of one request (completion or chat, whole or chunks)."""

    def __init__(self, reply_id: str, model: str, chat: bool, trace: bool) -> None:
        self.id, self.model, self.chat, self.trace = reply_id, model, chat, trace
        self.created = int(time.time())

    def _backtrack(self, result: GenerationResult) -> dict:
        c = result.counts
        info: dict[str, Any] = {
            "rollbacks": c.backtracks,
            "ban_rollbacks": c.ban_rollbacks,
            "tokens_discarded": c.tokens_discarded,
            "forward_passes": c.forward_passes,
            "deepest_rollback": c.deepest_rollback,
            "finish_reason": result.finish_reason,
        }
        if self.trace:
            info["trace"] = [asdict(e) for e in result.trace]
        return info

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def complete(self, results: list[GenerationResult]) -> dict:
        choices = []
        for i, result in enumerate(results):
            reason = finish_reason(result.finish_reason)
            choice: dict[str, Any] = {"index": i, "finish_reason": reason}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": result.text}
            else:
                choice.update(text=result.text, logprobs=None)
            choice["backtrack"] = self._backtrack(result)
            choices.append(choice)
        return {
            **self._head("chat.completion" if self.chat else "text_completion"),
            "choices": choices,
            "usage": _total_usage(results),
        }

    def chunk(
        self,
        choice: int,
        text: str | None = None,
        delta: dict | None = None,
        result: GenerationResult | None = None,
    ) -> str:
        entry: dict[str, Any] = {"index": choice, "finish_reason": None}
        if result is not None:
            entry["finish_reason"] = finish_reason(result.finish_reason)
            entry["backtrack"] = self._backtrack(result)
            text = ""
        if self.chat:
            entry["delta"] = delta if delta is not None else ({"content": text} if text else {})
        else:
            entry.update(text=text or "", logprobs=None)
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return _sse({**self._head(obj), "choices": [entry]})

    def usage_chunk(self, results: list[GenerationResult]) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return _sse({**self._head(obj), "choices": [], "usage": _total_usage(results)})


def _total_usage(results: list[GenerationResult]) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for result in results:
        for key, value in result_usage(result).items():
            total[key] += value
    return total

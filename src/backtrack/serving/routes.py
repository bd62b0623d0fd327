"""The server's endpoints: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
``/health``, ``/metrics`` and the web playground at ``/``, and how an answer is waited for
(whole) or streamed (server-sent events)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import replace
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from backtrack.engine.results import GenerationResult
from backtrack.engine.text import IncrementalDetokenizer
from backtrack.serving.fields import check_fields
from backtrack.serving.logprobs import Piece, prompt_entries, prompt_only
from backtrack.serving.middleware import request_id
from backtrack.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ServeError,
    error_body,
)
from backtrack.serving.replies import Reply, model_card, sse
from backtrack.serving.requests import (
    chat_prompt,
    check_model,
    prompt_ids,
    request_config,
    request_operator,
)
from backtrack.serving.scheduler import Ticket
from backtrack.serving.state import ServerState, server_state

# Seconds between checks that a waiting client is still connected.
DISCONNECT_POLL_S = 0.5

router = APIRouter()
State = Annotated[ServerState, Depends(server_state)]


@router.get("/v1/models")
async def list_models(state: State) -> dict:
    return {"object": "list", "data": [model_card(state.settings.model_names[0], state.created)]}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, state: State) -> dict:
    check_model(state.settings, name)
    return model_card(name, state.created)


@router.get("/", response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    """The web playground: one static page that streams completions with their rollbacks."""
    return HTMLResponse(_playground_html())


@functools.cache
def _playground_html() -> str:
    return resources.files("backtrack.serving").joinpath("static/playground.html").read_text()


@router.get("/health")
async def health(state: State):
    """Open to all (no key); 503 with ``status: "draining"`` once a shutdown began, so a load
    balancer stops sending requests."""
    body = {
        "status": "draining" if state.draining else "ok",
        "decoding": state.scheduler.live_rows,
        "queued": state.scheduler.queued(),
        # The names requests may give in backtrack.ban_lists (the playground offers them).
        "ban_lists": sorted(state.settings.ban_lists),
    }
    return JSONResponse(body, 503 if state.draining else 200)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    """Prometheus' text format (:mod:`backtrack.serving.metrics`)."""
    return Response(state.metrics.exposition(), media_type=state.metrics.content_type)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: State):
    check_fields(body, state.settings.ignore_unknown_fields, state.unknown_fields_logged)
    given = body.prompts()
    prompts = [prompt_ids(state.settings, state.tokenizer, p) for p in given]
    echo = None
    if body.echo:  # the prompt's text as given, or its ids decoded as the completion is
        detok = IncrementalDetokenizer(state.tokenizer)
        echo = [
            p if isinstance(p, str) else detok.decode(ids)
            for p, ids in zip(given, prompts, strict=True)
        ]
    return await _answer(state, body, prompts, request, chat=False, echo=echo)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State):
    check_fields(body, state.settings.ignore_unknown_fields, state.unknown_fields_logged)
    text = chat_prompt(state.tokenizer, body)
    prompts = [prompt_ids(state.settings, state.tokenizer, text)]
    return await _answer(state, body, prompts, request, chat=True)


async def _answer(
    state: ServerState,
    body: ChatCompletionRequest | CompletionRequest,
    prompts: list[list[int]],
    request: Request,
    chat: bool,
    echo: list[str] | None = None,
):
    """Decode every choice of the request as rows of the batch; answer whole or streamed.
    ``echo``: each prompt's text, to put before its choices' text."""
    check_model(state.settings, body.model)
    alternatives = body.alternatives()
    if (field := body.unsupported()) is not None:
        raise ServeError(f"{field} is not supported by this server", param=field)
    config = request_config(body, state.settings, state.tokenizer)
    if state.context_limit is not None:
        longest = max(len(p) for p in prompts)
        if longest + config.max_new_tokens > state.context_limit:
            raise ServeError(
                f"the prompt ({longest} tokens) and max_tokens ({config.max_new_tokens}) "
                f"exceed the model's context of {state.context_limit} tokens",
                param="max_tokens",
            )
    # Every choice waits in the queue before it gets a row, so more choices than the queue
    # holds could never start: refuse them (not a 503, which says that retrying helps) before
    # building one job per choice.
    if len(prompts) * body.n > state.scheduler.max_queue:
        raise ServeError(
            f"the request asks for {len(prompts) * body.n} choices ({len(prompts)} prompts x "
            f"n={body.n}); this server queues at most {state.scheduler.max_queue} (--max-queue)",
            param="n",
        )
    # One choice per (prompt, n); seeded choices get seeds seed, seed+1, ...
    jobs = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            seed = None if body.seed is None else body.seed + j
            operator = request_operator(body.backtrack.operator, state.default_operator)
            try:
                if operator is not None:
                    operator.check_config(config)
            except ValueError as exc:
                raise ServeError(str(exc), param="backtrack.operator") from None
            jobs.append((p * body.n + j, ids, operator, replace(config, seed=seed)))
    scheduler = state.scheduler
    echoes = None
    if echo is not None:
        echoes = await _echoes(state, echo, prompts, alternatives)
        echoes = [echoes[p] for p in range(len(prompts)) for _ in range(body.n)]
    reply = Reply(
        request_id(request, "chatcmpl" if chat else "cmpl"),
        body.model,
        chat,
        body.backtrack.trace,
        tokenizer=state.tokenizer,
        alternatives=alternatives,
    )
    if body.max_tokens == 0:  # echo alone: nothing to decode
        done = [prompt_only(ids) for _, ids, _, _ in jobs]
        if body.stream:
            events = _finished(done)
            return _streaming(_stream(state, reply, [], events, request, body, echoes))
        for result in done:
            state.metrics.choice(result)
        return reply.complete(done, echoes)
    scheduler.submit_room(len(jobs))
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    tickets = []
    for choice, ids, operator, choice_config in jobs:
        # Every choice of the request reports on one queue, tagged with its index.
        ticket = scheduler.submit(
            ids,
            operator,
            choice_config,
            stream=body.stream,
            loop=loop,
            events=_Tagged(events, choice),
            logprobs=alternatives is not None,
            trace_stream=body.backtrack.trace_stream,
            request_id=reply.id,
        )
        tickets.append(ticket)
    if body.stream:
        return _streaming(_stream(state, reply, tickets, events, request, body, echoes))
    try:
        results = await _collect(tickets, events, request)
    finally:
        for ticket in tickets:
            scheduler.cancel(ticket)  # no-op for finished ones
    if results is None:  # the client went away
        return JSONResponse(error_body("client disconnected"), 499)
    for result in results:
        state.metrics.choice(result)
    return reply.complete(results, echoes)


async def _echoes(
    state: ServerState, texts: list[str], prompts: list[list[int]], alternatives: int | None
) -> list[Piece]:
    """Each prompt's echo: its text and, with logprobs, its tokens' entries (one pass over the
    prompt, run off the event loop)."""
    backend = state.scheduler.decoder.backend
    pieces = []
    for text, ids in zip(texts, prompts, strict=True):
        entries = None
        if alternatives is not None:
            entries = await asyncio.to_thread(prompt_entries, backend, ids, alternatives)
        pieces.append(Piece(text, entries))
    return pieces


def _finished(results: list[GenerationResult]) -> asyncio.Queue:
    """An event queue holding every choice's end (a request with nothing to decode)."""
    events: asyncio.Queue = asyncio.Queue()
    for choice, result in enumerate(results):
        events.put_nowait((choice, "done", result))
    return events


def _streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


class _Tagged:
    """A ticket's view of the request's shared event queue: events tagged with its choice."""

    def __init__(self, queue: asyncio.Queue, choice: int) -> None:
        self.queue, self.choice = queue, choice

    def put_nowait(self, event: tuple[str, Any]) -> None:
        self.queue.put_nowait((self.choice, *event))


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
    """Every choice's result, in order; None if the client went away first."""
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
    state: ServerState,
    reply: Reply,
    tickets: list[Ticket],
    events: asyncio.Queue,
    request: Request,
    body: ChatCompletionRequest | CompletionRequest,
    echoes: list[Piece] | None,
) -> AsyncIterator[str]:
    """The server-sent events of a streaming request; its rows are freed however it ends.
    ``echoes``: each choice's first piece (its prompt)."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    choices = len(tickets) or events.qsize()  # no tickets: every end is already queued
    try:
        if reply.chat:
            for choice in range(choices):
                yield reply.chunk(choice, delta={"role": "assistant", "content": ""})
        for choice, piece in enumerate(echoes or ()):
            yield reply.chunk(choice, piece=piece)
        results: dict[int, GenerationResult] = {}
        while len(results) < choices:
            event = await _next_event(events, request)
            if event is None:
                return  # the client went away; finally frees the rows
            choice, kind, payload = event
            if kind == "text":
                yield reply.chunk(choice, piece=payload)
            elif kind == "events":
                yield reply.events_chunk(choice, payload)
            elif kind == "done":
                results[choice] = payload
                state.metrics.choice(payload)
                yield reply.chunk(choice, result=payload)
            else:
                yield sse(error_body(payload, "server_error"))
                return
        if include_usage:
            yield reply.usage_chunk(list(results.values()))
        yield "data: [DONE]\n\n"
    finally:
        for ticket in tickets:
            state.scheduler.cancel(ticket)

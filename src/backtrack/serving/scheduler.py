"""Continuous batching for the server: one thread runs the batch decoder; requests join and
leave between decode steps.

The HTTP handlers (asyncio) :meth:`Scheduler.submit` a request and get a :class:`Ticket`; the
scheduler thread is the ticket's :class:`~backtrack.engine.batch_run.RequestSource`, so a waiting
request is admitted into the running batch at the next step (prefilled together with others,
within the decoder's prefill budget), and a row that finishes or whose client goes away
(:meth:`Scheduler.cancel`) frees its slot at once. After every step, each streaming ticket gets
the text that became final in that step (:class:`~backtrack.engine.streaming.CommittedText`), so
a client never receives text a rollback later deletes; the end of a row delivers its
:class:`~backtrack.engine.GenerationResult`. When the server shuts down,
:meth:`Scheduler.end_all` ends every request at once, each with what it has so far and
``finish_reason`` :data:`~backtrack.serving.protocol.SERVER_SHUTDOWN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from backtrack.engine.batch import BatchDecoder
from backtrack.engine.batch_run import BatchRun, Request
from backtrack.engine.results import Counts, GenerationResult
from backtrack.engine.settings import GenerationConfig
from backtrack.engine.streaming import CommittedText
from backtrack.serving.logprobs import Piece, session_entries
from backtrack.serving.protocol import SERVER_SHUTDOWN, ServeError

log = logging.getLogger("backtrack.serving")

# Seconds a client is told to wait when the queue is full.
RETRY_AFTER_S = 1


@dataclass
class Ticket:
    """One generation the scheduler owes a handler.

    Events arrive on ``events`` (``put_nowait`` on the handler's loop): ``("text", Piece)``
    for newly final text and, if ``logprobs``, its tokens (streaming tickets only), then
    ``("done", GenerationResult)``, or ``("error", message)`` if decoding failed. With
    ``trace_stream``, each step's new token and rollback events come first as
    ``("events", [Event, ...])``.
    """

    index: int
    request: Request
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: Any
    logprobs: bool = False  # streamed pieces carry their tokens' log-probabilities
    trace_stream: bool = False
    traced: int = 0  # trace events already published (trace_stream only)
    request_id: str = ""  # the HTTP request's id (log lines)
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None  # when its first token was sampled

    def publish_trace(self, trace: list) -> None:
        """Publish the row's trace events not published yet (from the scheduler thread)."""
        if self.trace_stream and len(trace) > self.traced:
            self.publish("events", trace[self.traced :])
            self.traced = len(trace)

    def publish(self, kind: str, payload: Any) -> None:
        """Hand an event to the handler's loop (from the scheduler thread)."""
        # A closed loop means the server is shutting down: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class Scheduler:
    """Runs one :class:`~backtrack.engine.batch_run.BatchRun` for every request of the server.

    Args:
        model, tokenizer: as for :class:`~backtrack.engine.batch.BatchDecoder` (a backend
            or a transformers model).
        max_batch: rows decoded together.
        max_queue: requests that may wait for a row; one more is refused (503).
        metrics: told each row's time to first token and per output token
            (a :class:`~backtrack.serving.metrics.ServerMetrics`; ``None``: nobody).
    """

    def __init__(
        self, model, tokenizer, max_batch: int = 8, max_queue: int = 256, metrics: Any = None
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.decoder = BatchDecoder(model, tokenizer)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.metrics = metrics
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Ticket] = deque()
        self._tickets: dict[int, Ticket] = {}  # queued or decoding
        self._cancelled: set[int] = set()  # decoding, to be freed by the scheduler thread
        self._numbers = itertools.count()
        self._stopping = False
        self._closed = False  # end_all was called: nothing more is accepted
        self._end_now = False  # end_all was called and the thread has not ended them yet
        self._thread: threading.Thread | None = None
        self._run: BatchRun | None = None
        self.live_rows = 0  # rows decoding after the last step (for /health and tests)
        self.cancelled_rows = 0  # rows freed because their client went away

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="backtrack-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def end_all(self) -> None:
        """End every request now, queued or decoding, each with what it has so far and
        ``finish_reason`` :data:`SERVER_SHUTDOWN`; from then on, every request is refused
        (503). The scheduler thread ends them before its next step."""
        with self._lock:
            self._closed = self._end_now = True
            self._wake.notify_all()

    # ------------------------------------------------------------------ handlers' side
    def submit(
        self,
        prompt_ids: list[int],
        operator: Any,
        config: GenerationConfig,
        *,
        stream: bool,
        loop: asyncio.AbstractEventLoop,
        events: Any,
        logprobs: bool = False,
        trace_stream: bool = False,
        request_id: str = "",
    ) -> Ticket:
        """Queue one generation; a full queue is a 503 with ``Retry-After``. ``events``:
        where the ticket's events go (anything with ``put_nowait``, used on ``loop``);
        ``logprobs``: streamed pieces carry their tokens' entries; ``trace_stream``: also
        publish every token and rollback event (streaming only); ``request_id``: the HTTP
        request's, for log lines."""
        with self._lock:
            if self._stopping or self._closed:
                raise ServeError(
                    "the server is shutting down", 503, kind="server_error", code="shutting_down"
                )
            if len(self._queue) >= self.max_queue:
                raise self._busy()
            ticket = Ticket(
                next(self._numbers),
                (prompt_ids, operator, config),
                stream,
                loop,
                events,
                logprobs=logprobs,
                trace_stream=stream and trace_stream,
                request_id=request_id,
            )
            self._queue.append(ticket)
            self._tickets[ticket.index] = ticket
            self._wake.notify_all()
        return ticket

    def submit_room(self, count: int) -> None:
        """Refuse at once (503) if ``count`` more requests cannot all be queued."""
        with self._lock:
            if len(self._queue) + count > self.max_queue:
                raise self._busy()

    def _busy(self) -> ServeError:
        """The 503 of a full queue (call with the lock held)."""
        return ServeError(
            f"the server is busy: {len(self._queue)} requests are waiting "
            f"(--max-queue {self.max_queue}); retry shortly",
            503,
            kind="server_error",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: drop the request, freeing its row at the next step."""
        with self._lock:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._tickets.pop(ticket.index, None)
            elif ticket.index in self._tickets:
                self._cancelled.add(ticket.index)
                self._wake.notify_all()

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    # ------------------------------------------------------------------ RequestSource
    def next_request(self) -> tuple[int, Request] | None:
        with self._lock:
            if not self._queue:
                return None
            ticket = self._queue.popleft()
            return ticket.index, ticket.request

    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def exhausted(self) -> bool:
        return self._stopping

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        run = self.decoder.open(self.max_batch, self)
        streams: dict[int, CommittedText] = {}
        tokens_sent: dict[int, int] = {}  # per logprobs stream: completion tokens reported
        while True:
            with self._lock:
                while not (self._stopping or self._cancelled or self._end_now) and run.idle:
                    self._wake.wait()
                if self._stopping:
                    break
                cancelled, self._cancelled = self._cancelled, set()
                end_now, self._end_now = self._end_now, False
            for index in cancelled:
                if run.cancel(index):
                    self.cancelled_rows += 1
                streams.pop(index, None)
                tokens_sent.pop(index, None)
                with self._lock:
                    self._tickets.pop(index, None)
            if end_now:
                self._end_every_request(run, streams, tokens_sent)
                run = self.decoder.open(self.max_batch, self)
                continue
            try:
                finished = run.turn()
            except Exception as exc:  # a failing model or operator: fail its batch, go on
                self._fail_all(run, f"decoding failed: {type(exc).__name__}: {exc}", exc)
                streams.clear()
                tokens_sent.clear()
                run = self.decoder.open(self.max_batch, self)
                continue
            now = time.monotonic()
            for row in run.live:
                ticket = self._ticket(row.index)
                if ticket is None:
                    continue
                self._note_first_token(ticket, row, now)
                if ticket.stream:
                    ticket.publish_trace(row.trace)
                    stream = streams.setdefault(row.index, CommittedText(row))
                    piece = Piece(stream.new())
                    if ticket.logprobs:
                        start = tokens_sent.get(row.index, 0)
                        tokens_sent[row.index] = upto = _tokens_sent(row, stream, start)
                        piece.entries = session_entries(row, start, upto)
                    if piece.text or piece.entries:
                        ticket.publish("text", piece)
            for row in finished:
                self._deliver(row, streams, tokens_sent, now)
            self.live_rows = len(run.live)
        self._fail_all(run, "the server is shutting down")

    def _note_first_token(self, ticket: Ticket, row: Any, now: float) -> None:
        if ticket.first_token_at is None and row.counts.tokens_sampled > 0:
            ticket.first_token_at = now
            if self.metrics is not None:
                self.metrics.first_token(now - ticket.submitted)

    def _deliver(
        self, row: Any, streams: dict[int, CommittedText], tokens_sent: dict[int, int], now: float
    ) -> None:
        """Hand a finished row's rest of text (streaming) and its result to its ticket."""
        stream = streams.pop(row.index, None)
        start = tokens_sent.pop(row.index, 0)
        with self._lock:
            ticket = self._tickets.pop(row.index, None)
        if ticket is None:
            return  # cancelled meanwhile
        self._note_first_token(ticket, row, now)
        if ticket.stream:
            ticket.publish_trace(row.trace)
            piece = Piece((stream or CommittedText(row)).rest())
            if ticket.logprobs:
                piece.entries = session_entries(row, start, len(row.completion))
            if piece.text or piece.entries:
                ticket.publish("text", piece)
        result = row.result()
        tokens = len(result.token_ids)
        if self.metrics is not None and ticket.first_token_at is not None and tokens > 1:
            self.metrics.per_output_token((now - ticket.first_token_at) / (tokens - 1))
        ticket.publish("done", result)

    def _end_every_request(
        self, run: BatchRun, streams: dict[int, CommittedText], tokens_sent: dict[int, int]
    ) -> None:
        """End every row decoding with what it has, and every request queued or waiting for
        admission with nothing, all with finish reason SERVER_SHUTDOWN (see end_all)."""
        now, live = time.monotonic(), run.live
        for row in live:
            # The engine's reasons are its own; this one is the server's.
            row.finish_reason = SERVER_SHUTDOWN
            self._deliver(row, streams, tokens_sent, now)
        with self._lock:
            rest = list(self._tickets.values())
            self._tickets.clear()
            self._queue.clear()
        for ticket in rest:  # queued, or pulled by the run but not decoding yet
            reason: Any = SERVER_SHUTDOWN
            ticket.publish(
                "done",
                GenerationResult(list(ticket.request[0]), [], [], "", reason, None, [], Counts()),
            )
        ended = len(live) + len(rest)
        if ended:
            log.warning("the server is shutting down: ended %d request(s) still running", ended)
        self.live_rows = 0

    def _ticket(self, index: int) -> Ticket | None:
        with self._lock:
            return self._tickets.get(index)

    def _fail_all(self, run: BatchRun, message: str, exc: Exception | None = None) -> None:
        """Tell every ticket the run had taken (decoding, or pulled for admission) that it
        failed; queued ones stay queued for the next run. ``exc``: the failure, logged with
        the ids of the requests it failed."""
        del run  # everything it held is in _tickets and not in _queue
        with self._lock:
            taken = [t for t in self._tickets.values() if t not in self._queue]
            for ticket in taken:
                del self._tickets[ticket.index]
        if exc is not None:
            ids = ", ".join(t.request_id or "-" for t in taken)
            log.error("%s (requests %s)", message, ids, exc_info=exc)
        for ticket in taken:
            ticket.publish("error", message)
        self.live_rows = 0


def _tokens_sent(session: Any, stream: CommittedText, start: int) -> int:
    """How many completion tokens the stream has handed out: final ones whose text lies
    wholly in the text sent (a chunk carries the entries of the tokens it completes)."""
    committed, upto = session.committed_length(), start
    while upto < committed and session.text_offset(upto + 1) <= stream.sent:
        upto += 1
    return upto


def result_usage(result: GenerationResult) -> dict[str, int]:
    prompt, completion = len(result.prompt_token_ids), len(result.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }

"""Continuous batching for the server: one thread runs the batch decoder; requests join and
leave between decode steps.

The HTTP handlers (asyncio) :meth:`Scheduler.submit` a request and get a :class:`Ticket`; the
scheduler thread is the ticket's :class:`~backtrack.engine.batch_run.RequestSource`, so a waiting
request is admitted into the running batch at the next step (prefilled together with others,
within the decoder's prefill budget), and a row that finishes or whose client goes away
(:meth:`Scheduler.cancel`) frees its slot at once. After every step, each streaming ticket gets
the text that became final in that step (:class:`~backtrack.engine.streaming.CommittedText`), so
a client never receives text a rollback later deletes; the end of a row delivers its
:class:`~backtrack.engine.GenerationResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

from backtrack.engine.batch import BatchDecoder
from backtrack.engine.batch_run import BatchRun, Request
from backtrack.engine.results import GenerationResult
from backtrack.engine.settings import GenerationConfig
from backtrack.engine.streaming import CommittedText
from backtrack.serving.logprobs import Piece, session_entries
from backtrack.serving.protocol import ServeError

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
    """

    def __init__(self, model, tokenizer, max_batch: int = 8, max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.decoder = BatchDecoder(model, tokenizer)
        self.max_batch, self.max_queue = max_batch, max_queue
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Ticket] = deque()
        self._tickets: dict[int, Ticket] = {}  # queued or decoding
        self._cancelled: set[int] = set()  # decoding, to be freed by the scheduler thread
        self._numbers = itertools.count()
        self._stopping = False
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
    ) -> Ticket:
        """Queue one generation; a full queue is a 503 with ``Retry-After``. ``events``:
        where the ticket's events go (anything with ``put_nowait``, used on ``loop``);
        ``logprobs``: streamed pieces carry their tokens' entries; ``trace_stream``: also
        publish every token and rollback event (streaming only)."""
        with self._lock:
            if self._stopping:
                raise ServeError("the server is shutting down", 503, kind="server_error")
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
                while not self._stopping and not self._cancelled and run.idle:
                    self._wake.wait()
                if self._stopping:
                    break
                cancelled, self._cancelled = self._cancelled, set()
            for index in cancelled:
                if run.cancel(index):
                    self.cancelled_rows += 1
                streams.pop(index, None)
                tokens_sent.pop(index, None)
                with self._lock:
                    self._tickets.pop(index, None)
            try:
                finished = run.turn()
            except Exception as exc:  # a failing model or operator: fail its batch, go on
                traceback.print_exc(file=sys.stderr)
                self._fail_all(run, f"decoding failed: {type(exc).__name__}: {exc}")
                streams.clear()
                tokens_sent.clear()
                run = self.decoder.open(self.max_batch, self)
                continue
            for row in run.live:
                ticket = self._ticket(row.index)
                if ticket is not None and ticket.stream:
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
                stream = streams.pop(row.index, None)
                start = tokens_sent.pop(row.index, 0)
                with self._lock:
                    ticket = self._tickets.pop(row.index, None)
                if ticket is None:
                    continue  # cancelled meanwhile
                if ticket.stream:
                    ticket.publish_trace(row.trace)
                    piece = Piece((stream or CommittedText(row)).rest())
                    if ticket.logprobs:
                        piece.entries = session_entries(row, start, len(row.completion))
                    if piece.text or piece.entries:
                        ticket.publish("text", piece)
                ticket.publish("done", row.result())
            self.live_rows = len(run.live)
        self._fail_all(run, "the server is shutting down")

    def _ticket(self, index: int) -> Ticket | None:
        with self._lock:
            return self._tickets.get(index)

    def _fail_all(self, run: BatchRun, message: str) -> None:
        """Tell every ticket the run had taken (decoding, or pulled for admission) that it
        failed; queued ones stay queued for the next run."""
        del run  # everything it held is in _tickets and not in _queue
        with self._lock:
            taken = [t for t in self._tickets.values() if t not in self._queue]
            for ticket in taken:
                del self._tickets[ticket.index]
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

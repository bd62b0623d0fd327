"""Graceful shutdown of ``backtrack serve``: on SIGTERM or SIGINT, drain, then exit 0.

uvicorn's own handling stops listening at once (a new client's connection is refused, not
answered), waits for every connection without a bound unless told one, and then raises the
signal again, so the process dies by it (exit status -15). :class:`DrainingServer` replaces
it with a drain in three steps:

1. **Stop accepting.** The server keeps listening, but every new request gets a 503 ("the
   server is shutting down"), and ``/health`` answers 503 ``{"status": "draining"}`` so a
   load balancer takes the server out; ``/metrics`` still answers.
2. **Let requests in flight finish**, for up to ``--drain-timeout`` seconds (default 30).
3. **End the rest** (:meth:`~backtrack.serving.scheduler.Scheduler.end_all`): each stream
   gets its remaining text and a final chunk whose ``finish_reason`` is
   ``"server_shutdown"``, then ``[DONE]``; a request waiting for a whole answer gets what was
   decoded, with that finish reason; one still queued gets an empty choice. Then uvicorn
   closes the connections and the process exits 0.

A second signal during the drain skips the wait: the rest are ended at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn

from backtrack.serving.state import ServerState

log = logging.getLogger("backtrack.serving")

# Seconds the ended requests get to send their final chunks before the server exits anyway
# (uvicorn's own graceful timeout then closes what is left).
FLUSH_S = 10.0
# Seconds between looks at the requests in flight.
POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains on SIGTERM or SIGINT (see the module); ``server``: the
    app's shared state (``app.state.server``)."""

    def __init__(self, config: uvicorn.Config, server: ServerState) -> None:
        super().__init__(config)
        self.state = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None
        self._hurry: asyncio.Event | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._hurry = asyncio.Event()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler. Unlike uvicorn's, it does not record the signal (uvicorn would
        raise it again once shut down), so the process exits 0 after the drain."""
        if self._loop is None:  # not serving yet
            self.should_exit = True
            return
        # A signal handler may only hand work to the loop, whatever the loop was doing.
        self._loop.call_soon_threadsafe(self.begin_drain, signal.Signals(sig).name)

    def begin_drain(self, why: str = "shutdown") -> None:
        """Start the drain (on the server's loop); called again, end the rest at once."""
        assert self._loop is not None and self._hurry is not None, "the server is not serving"
        if self._drain is None:
            self._drain = self._loop.create_task(self._drain_then_exit(why))
        else:
            log.warning("%s again: ending the requests in flight now", why)
            self._hurry.set()

    async def _drain_then_exit(self, why: str) -> None:
        state = self.state
        timeout = state.settings.drain_timeout
        state.draining = True
        log.warning(
            "%s: draining (new requests get 503); %d request(s) in flight may take %gs to finish",
            why,
            state.in_flight,
            timeout,
        )
        await self._until_idle(timeout)
        if state.in_flight:
            log.warning("the drain timeout passed: ending the rest (finish_reason server_shutdown)")
        state.scheduler.end_all()
        await self._until_idle(FLUSH_S, hurried=False)
        log.warning("drained: exiting")
        self.should_exit = True

    async def _until_idle(self, timeout: float, hurried: bool = True) -> None:
        """Wait until no request is in flight or ``timeout`` seconds pass (with ``hurried``,
        or until a second signal)."""
        assert self._hurry is not None
        deadline = time.monotonic() + timeout
        while self.state.in_flight and time.monotonic() < deadline:
            if hurried and self._hurry.is_set():
                return
            await asyncio.sleep(POLL_S)

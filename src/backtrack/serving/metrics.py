"""The server's Prometheus metrics (``GET /metrics``, text exposition format), through the
``prometheus-client`` library.

Each app has its own registry, so several servers in one process (the tests) count apart.
What is counted, and where:

* per HTTP request (:mod:`backtrack.serving.middleware`): ``backtrack_requests_total``
  by ``endpoint`` (the route's path, ``other`` for an unknown one) and ``status``;
  ``backtrack_request_duration_seconds`` by endpoint (until the last byte of a stream).
* per choice answered (:mod:`backtrack.serving.routes`, from its
  :class:`~backtrack.engine.GenerationResult`, so the token counts equal the ``usage`` the
  client got): ``backtrack_prompt_tokens_total``, ``backtrack_completion_tokens_total``,
  ``backtrack_choices_total`` by ``finish_reason``, ``backtrack_rollbacks_total``,
  ``backtrack_tokens_deleted_total`` and ``backtrack_ban_hits_total`` (rollbacks that removed
  a banned string) by ``list``: ``inline`` for the strings and patterns a request sends.
* per row of the batch (:mod:`backtrack.serving.scheduler`):
  ``backtrack_time_to_first_token_seconds`` (from the request's arrival in the queue to its
  first sampled token) and ``backtrack_time_per_output_token_seconds`` (from the first token
  to the end, per further final token: rollbacks make it longer, since deleted tokens cost
  time too).
* read when scraped: ``backtrack_queue_depth`` (requests waiting for a row),
  ``backtrack_batch_rows`` (rows decoding) and ``backtrack_requests_in_flight``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from backtrack.engine.banned import INLINE
from backtrack.engine.results import GenerationResult, RollbackEvent
from backtrack.serving.protocol import finish_reason

# The label of ban hits from a request's own banned strings and patterns (named server-side
# lists get their own name); the engine's name for them (RollbackEvent.ban_list).
INLINE_BANS = INLINE
# Seconds. A first token waits for a row and a prefill (milliseconds on an idle server,
# seconds behind a full batch); a further token costs one decode step of the batch.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """The metrics of one server, in their own registry (see the module for each one)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # Every metric in this server's own registry (so test servers count apart).
        counter, gauge, histogram = (
            functools.partial(kind, registry=registry) for kind in (Counter, Gauge, Histogram)
        )
        self.requests = counter(
            "backtrack_requests",
            "HTTP requests answered, by endpoint and status.",
            ["endpoint", "status"],
        )
        self.request_duration = histogram(
            "backtrack_request_duration_seconds",
            "Time from a request's arrival to the end of its response (a stream's last byte).",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
        )
        self.in_flight = gauge("backtrack_requests_in_flight", "Requests being answered.")
        self.prompt_tokens = counter(
            "backtrack_prompt_tokens", "Prompt tokens of the choices answered."
        )
        self.completion_tokens = counter(
            "backtrack_completion_tokens", "Final completion tokens of the choices answered."
        )
        self.choices = counter(
            "backtrack_choices", "Choices answered, by OpenAI finish reason.", ["finish_reason"]
        )
        self.rollbacks = counter(
            "backtrack_rollbacks",
            "Rollbacks in the choices answered (an operator's and the bans').",
        )
        self.tokens_deleted = counter("backtrack_tokens_deleted", "Tokens that rollbacks deleted.")
        self.ban_hits = counter(
            "backtrack_ban_hits",
            "Rollbacks that removed a banned phrase, by ban list (inline: the request's own).",
            ["list"],
        )
        self.ttft = histogram(
            "backtrack_time_to_first_token_seconds",
            "Time from a request's arrival in the queue to its first sampled token.",
            buckets=TTFT_BUCKETS,
        )
        self.tpot = histogram(
            "backtrack_time_per_output_token_seconds",
            "Time from the first token to the end, per further final token.",
            buckets=TPOT_BUCKETS,
        )
        self.queue_depth = gauge(
            "backtrack_queue_depth", "Requests waiting for a row of the batch."
        )
        self.batch_rows = gauge("backtrack_batch_rows", "Rows of the batch decoding.")

    def watch(
        self,
        queued: Callable[[], float],
        rows: Callable[[], float],
        in_flight: Callable[[], float],
    ) -> None:
        """Read the queue depth, the rows decoding and the requests in flight when scraped."""
        self.queue_depth.set_function(queued)
        self.batch_rows.set_function(rows)
        self.in_flight.set_function(in_flight)

    # ------------------------------------------------------------------ observations
    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP request answered (its whole response sent)."""
        self.requests.labels(endpoint, str(status)).inc()
        self.request_duration.labels(endpoint).observe(seconds)

    def choice(self, result: GenerationResult) -> None:
        """One choice answered to its client."""
        counts = result.counts
        self.prompt_tokens.inc(len(result.prompt_token_ids))
        self.completion_tokens.inc(len(result.token_ids))
        self.choices.labels(finish_reason(result.finish_reason)).inc()
        self.rollbacks.inc(counts.backtracks)
        self.tokens_deleted.inc(counts.tokens_discarded)
        # Each ban's rollback names its list (the server's NAME, or "inline"); a dead-end
        # rewind that follows a hard ban is part of that ban, not a hit of its own.
        for event in result.trace:
            if isinstance(event, RollbackEvent) and event.banned is not None:
                self.ban_hits.labels(event.ban_list or INLINE_BANS).inc()

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def per_output_token(self, seconds: float) -> None:
        self.tpot.observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)

"""The continuous batch behind :class:`~backtrack.engine.batch.BatchDecoder`: its rows, where
their requests come from, admission, refill, cancellation and the batched draw.

A :class:`BatchRun` holds up to ``batch_size`` rows, each an ordinary
:class:`~backtrack.engine.session.DecodingSession` whose KV cache is its slot of the
backend's :class:`~backtrack.backends.base.BatchState`. Each turn it admits waiting requests
(prefilled together), runs one forward pass for every row, draws every row's token in one
:func:`~backtrack.engine.sampling.draw` call and lets each row take its turn. See
``engine/batch.py`` for what a row shares with the single-sequence engine.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from backtrack.backends.base import Backend
from backtrack.engine.sampling import Draws, draw
from backtrack.engine.session import DecodingSession
from backtrack.engine.settings import GenerationConfig
from backtrack.engine.text import IncrementalDetokenizer

Request = tuple[str | Sequence[int], Any, GenerationConfig | None]


class RequestSource(Protocol):
    """Where a :class:`BatchRun` takes its requests from, between steps."""

    def next_request(self) -> tuple[int, Request] | None:
        """The next ``(index, request)`` if one is waiting now, else ``None`` (never blocks)."""
        ...

    def waiting(self) -> int:
        """About how many requests are waiting now (0: none; a batch drops its free rows)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once no request will ever come again."""
        ...


class IterableSource:
    """The requests of an iterable, in order, numbered from 0 (``generate_many``'s)."""

    def __init__(self, requests: Iterable[Request]) -> None:
        self._items = iter(enumerate(requests))
        self.exhausted = False

    def next_request(self) -> tuple[int, Request] | None:
        item = None if self.exhausted else next(self._items, None)
        self.exhausted = item is None
        return item

    def waiting(self) -> int:
        # Unknown until pulled: as many as the batch can take, until the iterable runs out.
        return 0 if self.exhausted else sys.maxsize


class _BatchRow(DecodingSession):
    """A session living in a batch: where its request came from and which cache row it uses.

    It adds no behaviour: the batch runs the forward pass each row queues, draws every row's
    token and hands it to :meth:`~DecodingSession.receive_draw` (or, for a new row,
    :meth:`~DecodingSession.receive_prefill`); the row then takes its turn with ``step()``.
    Its ``cache`` is its slot's view of the batch's caches.
    """

    index: int = -1  # position of the request in the input
    slot: int = -1  # row of the batch cache


@dataclass
class BatchStats:
    """What one batched run did, for benchmarks and tuning."""

    steps: int = 0  # batched decode forward passes
    prefills: int = 0  # batched prefill forward passes
    prefill_rows: int = 0  # prompts prefilled
    compactions: int = 0
    row_steps: int = 0  # sum over steps of the rows that were active
    peak_cache_bytes: int = 0  # largest size of the shared KV cache
    peak_rows: int = 0
    # Seconds every row sat waiting for a check's verdict with nothing else to decode (the
    # stall checks cost the batch; a check that overlaps other rows' decoding costs none).
    check_stall_s: float = 0.0


@dataclass(frozen=True)
class BatchOptions:
    """How a batch keeps its cache and admits prompts (see
    :class:`~backtrack.engine.batch.BatchDecoder`'s arguments)."""

    compact_fraction: float = 0.25
    min_compact: int = 16
    pad_token_id: int = 0
    prefill_budget: int = 2048

    def __post_init__(self) -> None:
        if not 0.0 < self.compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in (0, 1], got {self.compact_fraction}")
        if self.prefill_budget < 1:
            raise ValueError(f"prefill_budget must be >= 1, got {self.prefill_budget}")


def _wait_first(futures: Sequence[Future]) -> float:
    """Block until one of ``futures`` is done; the seconds waited."""
    start = time.perf_counter()
    wait(futures, return_when=FIRST_COMPLETED)
    return time.perf_counter() - start


class BatchRun:
    """A continuous batch: rows join from a :class:`RequestSource` and leave as they finish
    (or are cancelled), between decode steps. Made by
    :meth:`~backtrack.engine.batch.BatchDecoder.open`.

    Each :meth:`turn` admits waiting requests into free rows (prefilled together, within
    ``options.prefill_budget`` while other rows decode), then runs one forward pass for every
    row and lets each row take its turn. Free rows cost compute on transformers (they are
    padded through the forward pass), so when no request is waiting the batch drops them, and
    it grows again, up to ``batch_size``, when requests wait.
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer,
        batch_size: int,
        source: RequestSource,
        options: BatchOptions,
        stats: BatchStats,
        detokenizer: IncrementalDetokenizer,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.source = source
        self.options = options
        self.stats = stats
        self.detokenizer = detokenizer
        self.batch = backend.new_batch(
            batch_size,
            pad_token_id=options.pad_token_id,
            compact_fraction=options.compact_fraction,
            min_compact=options.min_compact,
        )
        self.rows: list[_BatchRow | None] = [None] * batch_size
        self._waiting: _BatchRow | None = None  # created, but over this turn's prefill budget

    @property
    def live(self) -> list[_BatchRow]:
        """The rows being decoded."""
        return [row for row in self.rows if row is not None]

    @property
    def done(self) -> bool:
        """Nothing is decoding or waiting, and nothing ever will."""
        return self._waiting is None and not self.live and self.source.exhausted

    @property
    def idle(self) -> bool:
        """Nothing is decoding or waiting right now."""
        return self._waiting is None and not self.live and not self.source.waiting()

    @torch.inference_mode()  # the batch's mask and cache are inference tensors
    def cancel(self, index: int) -> bool:
        """Drop the request ``index`` (its row is freed at once); False if it is not here."""
        if self._waiting is not None and self._waiting.index == index:
            self._waiting = None
            return True
        for slot, row in enumerate(self.rows):
            if row is not None and row.index == index:
                self._retire(slot, row)
                return True
        return False

    @torch.inference_mode()
    def turn(self) -> list[_BatchRow]:
        """Admit what is waiting, then decode one step; the rows that finished (their
        :meth:`~DecodingSession.result` is ready)."""
        finished = self._admit()
        if not self.live:
            return finished
        stats = self.stats
        checking = [row for row in self.live if row.check.pending is not None]
        if len(checking) == len(self.live):  # nothing to decode until a verdict comes
            stats.check_stall_s += _wait_first([row.check.pending for row in checking])
        else:
            if self.batch.maintain():
                stats.compactions += 1
            self._forward()
        stats.peak_cache_bytes = max(stats.peak_cache_bytes, self.batch.peak_bytes)
        stats.peak_rows = max(stats.peak_rows, len(self.live))
        for slot, row in enumerate(self.rows):
            if row is None or (row.check.pending is not None and not row.check.pending.done()):
                continue  # still waiting for its verdict; the other rows went on
            ended = row.step()
            # Draws from logits the row knows already (a ban's rollback reused them) cost no
            # forward pass: take them now, each one a turn of this row alone, in the order
            # the single-sequence loop takes them; the row joins the next pass when it needs one.
            while not ended and row.draws_without_pass():
                ended = row.step()
            if ended:
                self._retire(slot, row)
                finished.append(row)
        return finished

    # ------------------------------------------------------------------ rows
    def _new_row(self, index: int, request: Request, admitting: Sequence[_BatchRow]) -> _BatchRow:
        if not isinstance(request, tuple) or len(request) != 3:
            raise TypeError("a request is a tuple (prompt, operator, GenerationConfig)")
        prompt, operator, config = request
        # Checked before the row exists: creating it resets the operator.
        if operator is not None and any(
            other is not None and other.operator is operator for other in [*self.rows, *admitting]
        ):
            raise ValueError(
                f"request {index} shares its operator instance with a running row; every "
                "row needs its own operator (its state lives on the instance)"
            )
        config = config or GenerationConfig()
        row = _BatchRow.for_prompt(
            self.backend,
            self.tokenizer,
            prompt,
            operator,
            config,
            detokenizer=self.detokenizer,
            generator=None if config.seed is not None else self._unseeded_generator(),
        )
        row.index = index
        return row

    def _unseeded_generator(self) -> torch.Generator:
        """For a request without a seed: a generator seeded from torch's global RNG."""
        generator = torch.Generator(device=self.backend.device)
        return generator.manual_seed(int(torch.randint(0, 2**62, (1,))))

    @staticmethod
    def _draw(logits: torch.Tensor, rows: Sequence[_BatchRow]) -> Draws:
        """The next token of each of ``rows`` (row ``i`` of ``logits``), with its own sampler
        and bans."""
        return draw(logits, [row.sampler for row in rows], [row.banned_now() for row in rows])

    def _forward(self) -> None:
        """One forward pass for every row, each live row's token drawn in one call (each from
        its own generator) and handed to the row, which takes its turn with step() as usual."""
        rows = self.rows
        # A row waiting for a check's verdict has no forward pass queued: it sits this one out,
        # and so does a row that draws from logits it already has (a ban's rollback reused them).
        live = [row for row in rows if row is not None and row.pending_token is not None]
        if not live:
            return
        logits = self.batch.step([row.pending_token if row is not None else None for row in rows])
        draws = self._draw(logits, live)
        for i, row in enumerate(live):
            row.receive_draw(draws, i)
        self.stats.steps += 1
        self.stats.row_steps += len(live)

    def _prefill(self, free: Sequence[int], group: Sequence[_BatchRow]) -> None:
        """Prefill the prompts of ``group`` together into free slots and draw each row's first
        token."""
        start = time.perf_counter()
        slots = list(free[: len(group)])
        logits = self.batch.admit(slots, [row.prompt_ids for row in group])
        draws = self._draw(logits, group)
        seconds = time.perf_counter() - start
        for i, (slot, row) in enumerate(zip(slots, group, strict=True)):
            row.receive_prefill(draws, i, seconds)
            row.slot = slot
            row.cache = self.batch.row_cache(slot)
            self.rows[slot] = row
        self.stats.prefills += 1
        self.stats.prefill_rows += len(group)

    # ------------------------------------------------------------------ admission
    def _admit(self) -> list[_BatchRow]:
        """Refill free slots, prefilling the new prompts together. While other rows are
        decoding, one turn admits at most ``prefill_budget`` padded prompt tokens, so
        admissions never stall them for longer than that; with none decoding, it fills every
        slot. A row can finish on its first token and free its slot again."""
        finished: list[_BatchRow] = []
        while True:
            self._fit()
            free = [slot for slot, row in enumerate(self.rows) if row is None]
            if not free:
                break
            group: list[_BatchRow] = []
            longest = 0
            while len(group) < len(free):
                if self._waiting is None:
                    item = self.source.next_request()
                    if item is None:
                        break
                    self._waiting = self._new_row(*item, group)
                waiting = self._waiting
                padded = max(longest, len(waiting.prompt_ids)) * (len(group) + 1)
                if group and padded > self.options.prefill_budget:
                    break
                longest = max(longest, len(waiting.prompt_ids))
                group.append(waiting)
                self._waiting = None
            if not group:
                break
            self._prefill(free, group)
            for row in group:
                if row.step():
                    self._retire(row.slot, row)
                    finished.append(row)
            if self.live and self._waiting is not None:
                break  # the budget is spent; decode a step before admitting more
        return finished

    def _fit(self) -> None:
        """Grow the batch for waiting requests (up to ``batch_size`` rows); with none waiting,
        drop the free rows, which would only cost compute."""
        wanted = (self._waiting is not None) + self.source.waiting()
        free = sum(row is None for row in self.rows)
        if wanted > free and len(self.rows) < self.batch_size:
            grow = min(self.batch_size - len(self.rows), wanted - free)
            self.batch.grow(grow)
            self.rows.extend([None] * grow)
        elif not wanted and free:
            keep = [slot for slot, row in enumerate(self.rows) if row is not None]
            self.batch.keep_rows(keep)
            self.rows = [self.rows[slot] for slot in keep]
            for slot, row in enumerate(self.rows):
                assert row is not None
                row.slot, row.cache = slot, self.batch.row_cache(slot)

    def _retire(self, slot: int, row: _BatchRow) -> None:
        self.batch.free(slot)
        self.rows[slot] = None
        row.cache = None  # the row's KV lived in the batch; nothing to keep

"""Batched backtracking: decode many sequences at once, each rolling back on its own.

:class:`BatchDecoder` runs ``B`` rows through one forward pass per step. Every row is an
ordinary :class:`~backtrack.engine.session.DecodingSession` (its own operator instance and
state, sampler and random generator, bans, budget, detokenizer, stop condition and trace) and
takes its turns through the session's own :meth:`~DecodingSession.step`; only two things differ:
the forward pass a row queues is run for all rows at once, and every row's token drawn from it
in one :func:`~backtrack.engine.sampling.draw` call, handed back with
:meth:`~DecodingSession.receive_draw`; and the row's KV cache is its slot of the backend's
batch. So a row behaves exactly as the single-sequence engine would, by construction.

The backend keeps the rows' caches (:class:`~backtrack.backends.base.BatchState`): on
transformers, one shared masked ``DynamicCache`` with holes and periodic compaction; on
llama.cpp, one sequence id per row. Rows that finish free their slot and the next request is
admitted into it (continuous refill); new prompts are prefilled together, at most
``prefill_budget`` padded tokens per turn while other rows decode.

Sampling: each row draws from its own ``torch.Generator`` seeded with the row's
``GenerationConfig.seed`` (or, if ``None``, with a seed drawn from torch's global RNG, so
``torch.manual_seed`` before :meth:`BatchDecoder.generate_many` makes a run reproducible), as a
seeded single-sequence session does. Batched *sampling* is still not guaranteed to be
token-identical to the single-sequence engine: the batched forward pass reduces in a different
order (other matrix shapes, masked padding), so logits differ in the last bits and a draw that
falls near a boundary of the cumulative distribution can pick a neighbouring token. *Greedy*
decoding is identical (up to exact ties in the logits, which the last-bit differences could
break).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from backtrack.backends.base import BatchState, as_backend
from backtrack.engine.results import GenerationResult
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
    """The requests of an iterable, in order, numbered from 0 (:meth:`generate_many`'s)."""

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
    """What one :meth:`BatchDecoder.generate_many` run did, for benchmarks and tuning."""

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


def _wait_first(futures: Sequence[Future]) -> float:
    """Block until one of ``futures`` is done; the seconds waited."""
    start = time.perf_counter()
    wait(futures, return_when=FIRST_COMPLETED)
    return time.perf_counter() - start


class BatchDecoder:
    """Decode many requests at once, each with its own operator, config, seed and budget.

    >>> decoder = BatchDecoder(model, tokenizer)                   # doctest: +SKIP
    >>> requests = [(prompt, Chaos(seed=i), GenerationConfig(seed=i)) for i in range(32)]
    >>> for index, result in decoder.generate_many(requests, batch_size=8):
    ...     print(index, result.text)

    Rows that finish free their slot and the next request takes it (continuous refill), so
    the batch stays full while requests remain. See the module docstring for the cache layout.

    Args:
        model: as for :class:`~backtrack.engine.decoder.Decoder`.
        tokenizer: as for :class:`~backtrack.engine.decoder.Decoder`.
        compact_fraction: compact the shared cache when the columns compaction would remove
            exceed this fraction of its width (and ``min_compact`` columns).
        min_compact: never compact for fewer removable columns than this (a compaction copies
            the whole cache, so doing it for a handful of columns costs more than it saves).
        pad_token_id: id fed to free rows and to prompt padding (any valid id; masked out).
        prefill_budget: padded prompt tokens admitted per turn while other rows decode (new
            prompts are prefilled together, left-padded, in one forward pass); it bounds how
            long an admission stalls the decoding rows. A prompt longer than the budget is
            still prefilled whole, on its own.
    """

    def __init__(
        self,
        model,
        tokenizer,
        compact_fraction: float = 0.25,
        min_compact: int = 16,
        pad_token_id: int | None = None,
        prefill_budget: int = 2048,
    ) -> None:
        if not 0.0 < compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in (0, 1], got {compact_fraction}")
        self.model = model
        self.backend = as_backend(model)
        self.tokenizer = tokenizer
        self.compact_fraction = compact_fraction
        self.min_compact = min_compact
        if prefill_budget < 1:
            raise ValueError(f"prefill_budget must be >= 1, got {prefill_budget}")
        self.prefill_budget = prefill_budget
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
        self.device = self.backend.device
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stats = BatchStats()

    # ------------------------------------------------------------------ rows
    def _new_row(
        self,
        index: int,
        request: Request,
        rows: Sequence[_BatchRow | None],
        admitting: Sequence[_BatchRow],
    ) -> _BatchRow:
        if not isinstance(request, tuple) or len(request) != 3:
            raise TypeError("a request is a tuple (prompt, operator, GenerationConfig)")
        prompt, operator, config = request
        # Checked before the row exists: creating it resets the operator.
        if operator is not None and any(
            other is not None and other.operator is operator for other in [*rows, *admitting]
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
        generator = torch.Generator(device=self.device)
        return generator.manual_seed(int(torch.randint(0, 2**62, (1,))))

    @staticmethod
    def _draw(logits: torch.Tensor, rows: Sequence[_BatchRow]) -> Draws:
        """The next token of each of ``rows`` (row ``i`` of ``logits``), with its own sampler
        and bans."""
        return draw(logits, [row.sampler for row in rows], [row.banned_now() for row in rows])

    def _forward(self, batch: BatchState, rows: list[_BatchRow | None]) -> None:
        """One forward pass for every row, each live row's token drawn in one call (each from
        its own generator) and handed to the row, which takes its turn with step() as usual."""
        # A row waiting for a check's verdict has no forward pass queued: it sits this one out,
        # and so does a row that draws from logits it already has (a ban's rollback reused them).
        live = [row for row in rows if row is not None and row.pending_token is not None]
        if not live:
            return
        logits = batch.step([row.pending_token if row is not None else None for row in rows])
        draws = self._draw(logits, live)
        for i, row in enumerate(live):
            row.receive_draw(draws, i)
        self.stats.steps += 1
        self.stats.row_steps += len(live)

    # ------------------------------------------------------------------ the loop
    def open(self, batch_size: int, source: RequestSource) -> BatchRun:
        """A continuous batch of up to ``batch_size`` rows fed by ``source``: call
        :meth:`BatchRun.turn` repeatedly (the server's scheduler does; so does
        :meth:`generate_many`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stats = BatchStats()
        return BatchRun(self, batch_size, source)

    # torch wraps every resumption of a decorated generator in the mode, so the mask and
    # cache tensors (inference tensors) can be updated in place between forward passes.
    @torch.inference_mode()
    def generate_many(
        self, requests: Iterable[Request], batch_size: int = 8
    ) -> Iterator[tuple[int, GenerationResult]]:
        """Decode every request; yield ``(index in requests, result)`` as each row finishes.

        A request is ``(prompt, operator, config)``: the prompt as text or ids, an operator
        instance or ``None`` (plain decoding), a :class:`GenerationConfig` or ``None``. Every
        row needs its own operator instance, since the operator's state lives on it.
        ``counts.wall_time_s`` of a result runs from the request's admission to its finish.
        """
        run = self.open(batch_size, IterableSource(requests))
        while not run.done:
            for row in run.turn():
                yield row.index, row.result()

    def _prefill(
        self,
        batch: BatchState,
        free: Sequence[int],
        group: Sequence[_BatchRow],
        rows: list[_BatchRow | None],
    ) -> None:
        """Prefill the prompts of ``group`` together into free slots and draw each row's first
        token."""
        start = time.perf_counter()
        slots = list(free[: len(group)])
        logits = batch.admit(slots, [row.prompt_ids for row in group])
        draws = self._draw(logits, group)
        seconds = time.perf_counter() - start
        for i, (slot, row) in enumerate(zip(slots, group, strict=True)):
            row.receive_prefill(draws, i, seconds)
            row.slot = slot
            row.cache = batch.row_cache(slot)
            rows[slot] = row
        self.stats.prefills += 1
        self.stats.prefill_rows += len(group)

    def generate_all(
        self, requests: Iterable[Request], batch_size: int = 8
    ) -> list[GenerationResult]:
        """Like :meth:`generate_many`, but return every result in the order of ``requests``."""
        results: dict[int, GenerationResult] = dict(self.generate_many(requests, batch_size))
        return [results[i] for i in range(len(results))]


class BatchRun:
    """A continuous batch: rows join from a :class:`RequestSource` and leave as they finish
    (or are cancelled), between decode steps. Made by :meth:`BatchDecoder.open`.

    Each :meth:`turn` admits waiting requests into free rows (prefilled together, within the
    decoder's ``prefill_budget`` while other rows decode), then runs one forward pass for every
    row and lets each row take its turn. Free rows cost compute on transformers (they are
    padded through the forward pass), so when no request is waiting the batch drops them, and
    it grows again, up to ``batch_size``, when requests wait.
    """

    def __init__(self, decoder: BatchDecoder, batch_size: int, source: RequestSource) -> None:
        self.decoder = decoder
        self.batch_size = batch_size
        self.source = source
        self.batch = decoder.backend.new_batch(
            batch_size,
            pad_token_id=decoder.pad_token_id,
            compact_fraction=decoder.compact_fraction,
            min_compact=decoder.min_compact,
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
        stats = self.decoder.stats
        checking = [row for row in self.live if row.check.pending is not None]
        if len(checking) == len(self.live):  # nothing to decode until a verdict comes
            stats.check_stall_s += _wait_first([row.check.pending for row in checking])
        else:
            if self.batch.maintain():
                stats.compactions += 1
            self.decoder._forward(self.batch, self.rows)
        stats.peak_cache_bytes = max(stats.peak_cache_bytes, self.batch.peak_bytes)
        stats.peak_rows = max(stats.peak_rows, len(self.live))
        for slot, row in enumerate(self.rows):
            if row is None or (row.check.pending is not None and not row.check.pending.done()):
                continue  # still waiting for its verdict; the other rows went on
            if row.step():
                self._retire(slot, row)
                finished.append(row)
        return finished

    def _admit(self) -> list[_BatchRow]:
        """Refill free slots, prefilling the new prompts together. While other rows are
        decoding, one turn admits at most ``prefill_budget`` padded prompt tokens, so
        admissions never stall them for longer than that; with none decoding, it fills every
        slot. A row can finish on its first token and free its slot again."""
        decoder, finished = self.decoder, []
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
                    self._waiting = decoder._new_row(*item, self.rows, group)
                waiting = self._waiting
                padded = max(longest, len(waiting.prompt_ids)) * (len(group) + 1)
                if group and padded > decoder.prefill_budget:
                    break
                longest = max(longest, len(waiting.prompt_ids))
                group.append(waiting)
                self._waiting = None
            if not group:
                break
            decoder._prefill(self.batch, free, group, self.rows)
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

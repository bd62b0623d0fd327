"""Batched backtracking: decode many sequences at once, each rolling back on its own.

:class:`BatchDecoder` runs ``B`` rows through one forward pass per step. Every row is an
ordinary :class:`~backtrack.engine.session.DecodingSession` (its own operator instance and
state, sampler and random generator, bans, budget, detokenizer, stop condition and trace) and
takes its turns through the session's own :meth:`~DecodingSession.step`; only two things differ:
the forward pass a row queues is run for all rows at once, and every row's token drawn from it
in one :func:`~backtrack.engine.sampling.draw` call, handed back with
:meth:`~DecodingSession.receive_draw`; and the row's KV cache is a view of a row of one shared
cache. So a row behaves exactly as the single-sequence engine would, by construction.

Ragged lengths: masked holes plus periodic compaction
----------------------------------------------------
One ``DynamicCache`` holds ``[B, heads, T, head_dim]`` per layer, and a boolean mask ``[B, T]``
says which columns are valid for which row. Each row keeps the list of its valid columns, in
order; its position ids are simply its number of valid tokens, so RoPE sees every row as one
contiguous sequence whatever holes lie between its columns (keys are cached after RoPE, so a
key keeps the position it was computed at, and only relative positions matter).

* Decode step: every active row feeds exactly one token, so the new keys land in column ``T``
  for all rows at once and columns stay aligned.
* Rollback of ``k`` in row ``r``: the last ``k`` valid columns of row ``r`` are masked out.
  Nothing is recomputed and no other row is touched; masked keys get exactly zero attention
  weight, so the row computes what a cache cropped by ``k`` would.
* Refill: new requests' prompts are prefilled together in one left-padded forward pass (at
  most ``prefill_budget`` padded tokens per turn while other rows decode), and each prompt's
  keys and values are copied into a free row, right-aligned at column ``T`` (left padding; if
  the prompt is longer than ``T`` every row is padded on the left first).
* Compaction: holes (and columns left of the longest row) cost attention work and memory.
  When the columns beyond the longest row's valid count exceed ``compact_fraction`` of ``T``,
  every row's valid columns are gathered and right-aligned (left-padded) into a cache of
  exactly that longest length. When no request is waiting, finished rows are dropped from the
  batch dimension instead of being computed for nothing.

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

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from backtrack.engine.kv_cache import new_cache
from backtrack.engine.sampling import Draws, draw
from backtrack.engine.session import DecodingSession
from backtrack.engine.text import IncrementalDetokenizer
from backtrack.engine.types import GenerationConfig, GenerationResult

Request = tuple[str | Sequence[int], Any, GenerationConfig | None]


class _RowCache:
    """What a row's session sees as its cache while it lives in the batch.

    ``DecodingSession.rollback`` only calls ``get_seq_length()`` and ``crop(-k)``; both act on
    the row's valid columns of the shared cache.
    """

    def __init__(self, batch: _BatchCache, row: _BatchRow) -> None:
        self.batch, self.row = batch, row

    def get_seq_length(self) -> int:
        return len(self.batch.columns[self.row.slot])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.batch.drop_last(self.row.slot, -tokens_to_remove)


class _BatchRow(DecodingSession):
    """A session living in a batch: where its request came from and which cache row it uses.

    It adds no behaviour: the batch runs the forward pass each row queues, draws every row's
    token and hands it to :meth:`~DecodingSession.receive_draw` (or, for a new row,
    :meth:`~DecodingSession.receive_prefill`); the row then takes its turn with ``step()``.
    """

    index: int = -1  # position of the request in the input
    slot: int = -1  # row of the batch cache


class _BatchCache:
    """The shared KV cache, its validity mask, and each row's valid columns (in order)."""

    def __init__(self, model, slots: int) -> None:
        self.cache: DynamicCache = new_cache(model)
        self.slots = slots
        self.mask = torch.zeros((slots, 0), dtype=torch.bool)
        self.columns: list[list[int]] = [[] for _ in range(slots)]
        self.peak_bytes = 0

    # ------------------------------------------------------------------ shape
    @property
    def width(self) -> int:
        """``T``: columns of the shared cache."""
        return self.mask.shape[1]

    def nbytes(self) -> int:
        total = 0
        for layer in self.cache.layers:
            if layer.is_initialized:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total

    def _map(self, fn) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = fn(layer.keys), fn(layer.values)

    # ------------------------------------------------------------------ rows
    def insert(self, slot: int, prefilled: DynamicCache, source: int, length: int) -> None:
        """Copy row ``source`` of a prefill cache into ``slot``, right-aligned at column ``T``.

        ``length``: the row's prompt length (its valid columns are the last ``length`` of the
        left-padded prefill).
        """
        if not self.cache.layers[0].is_initialized:
            for layer, src in zip(self.cache.layers, prefilled.layers, strict=True):
                layer.lazy_initialization(src.keys[:1], src.values[:1])
                layer.keys = src.keys.new_zeros(
                    (self.slots, *src.keys.shape[1:2], 0, src.keys.shape[3])
                )
                layer.values = src.values.new_zeros(
                    (self.slots, *src.values.shape[1:2], 0, src.values.shape[3])
                )
            self.mask = torch.zeros((self.slots, 0), dtype=torch.bool, device=src.keys.device)
        if length > self.width:
            self._pad_left(length - self.width)
        width = self.width
        for layer, src in zip(self.cache.layers, prefilled.layers, strict=True):
            layer.keys[slot, :, width - length :] = src.keys[
                source, :, src.keys.shape[2] - length :
            ]
            layer.values[slot, :, width - length :] = src.values[
                source, :, src.values.shape[2] - length :
            ]
        self.mask[slot] = False
        self.mask[slot, width - length :] = True
        self.columns[slot] = list(range(width - length, width))
        self.peak_bytes = max(self.peak_bytes, self.nbytes())

    @property
    def device(self) -> torch.device:
        layer = self.cache.layers[0]
        return layer.keys.device if layer.is_initialized else torch.device("cpu")

    def _pad_left(self, n: int) -> None:
        def pad(t: torch.Tensor) -> torch.Tensor:
            zeros = t.new_zeros((*t.shape[:2], n, t.shape[3]))
            return torch.cat([zeros, t], dim=2)

        self._map(pad)
        self.mask = torch.cat([self.mask.new_zeros((self.slots, n)), self.mask], dim=1)
        self.columns = [[c + n for c in cols] for cols in self.columns]

    def free(self, slot: int) -> None:
        self.mask[slot] = False
        self.columns[slot] = []

    def drop_last(self, slot: int, k: int) -> None:
        """A rollback: the row's last ``k`` valid columns become holes (mask 0)."""
        if k <= 0:
            return
        cols = self.columns[slot]
        if k > len(cols):
            raise ValueError(f"cannot drop {k} positions from a row of {len(cols)}")
        removed = cols[-k:]
        del cols[-k:]
        self.mask[slot, removed] = False

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows ``keep`` (in that order) in the batch dimension."""
        index = torch.tensor(list(keep), dtype=torch.long, device=self.device)
        if self.cache.layers[0].is_initialized:
            self._map(lambda t: t.index_select(0, index))
        self.mask = self.mask.index_select(0, index)
        self.columns = [self.columns[s] for s in keep]
        self.slots = len(keep)

    def holes(self) -> int:
        """Columns compaction would remove: ``T`` minus the longest row's valid count."""
        return self.width - max((len(c) for c in self.columns), default=0)

    def compact(self) -> None:
        """Gather every row's valid columns, right-aligned, into ``T' = longest row``."""
        new_width = max((len(c) for c in self.columns), default=0)
        index = torch.zeros((self.slots, new_width), dtype=torch.long)
        for slot, cols in enumerate(self.columns):
            if cols:
                index[slot, new_width - len(cols) :] = torch.tensor(cols, dtype=torch.long)
        index = index.to(self.device)

        def gather(t: torch.Tensor) -> torch.Tensor:
            b, h, _, d = t.shape
            return t.gather(2, index[:, None, :, None].expand(b, h, new_width, d))

        self._map(gather)
        lengths = torch.tensor([len(c) for c in self.columns], device=self.device)
        positions = torch.arange(new_width, device=self.device)
        self.mask = positions[None, :] >= (new_width - lengths)[:, None]
        self.columns = [list(range(new_width - len(c), new_width)) for c in self.columns]

    # ------------------------------------------------------------------ decode step
    def step_inputs(self, active: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask ``[B, T+1]`` and position ids ``[B, 1]`` for one decode step.

        The new column is valid for every row (a free row attends to its own dummy token
        only, so its attention stays finite); a row's position is its count of valid tokens.
        """
        mask = torch.cat([self.mask, self.mask.new_ones((self.slots, 1))], dim=1)
        positions = torch.tensor(
            [[len(c) if on else 0] for c, on in zip(self.columns, active, strict=True)],
            dtype=torch.long,
            device=self.device,
        )
        return mask, positions

    def after_step(self, active: Sequence[bool]) -> None:
        """The forward pass appended column ``T``: valid for the active rows only."""
        column = self.width
        flags = torch.tensor(list(active), dtype=torch.bool, device=self.device)
        self.mask = torch.cat([self.mask, flags[:, None]], dim=1)
        for cols, on in zip(self.columns, active, strict=True):
            if on:
                cols.append(column)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())


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


class BatchDecoder:
    """Decode many requests at once, each with its own operator, config, seed and budget.

    >>> decoder = BatchDecoder(model, tokenizer)                   # doctest: +SKIP
    >>> requests = [(prompt, Chaos(seed=i), GenerationConfig(seed=i)) for i in range(32)]
    >>> for index, result in decoder.generate_many(requests, batch_size=8):
    ...     print(index, result.text)

    Rows that finish free their slot and the next request takes it (continuous refill), so
    the batch stays full while requests remain. See the module docstring for the cache layout.

    Args:
        model, tokenizer: as for :class:`~backtrack.engine.decoder.Decoder`.
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
        self.tokenizer = tokenizer
        self.compact_fraction = compact_fraction
        self.min_compact = min_compact
        if prefill_budget < 1:
            raise ValueError(f"prefill_budget must be >= 1, got {prefill_budget}")
        self.prefill_budget = prefill_budget
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else 0
        self.device = next(model.parameters()).device
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
            self.model,
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

    @torch.inference_mode()
    def _forward(self, batch: _BatchCache, rows: list[_BatchRow | None]) -> None:
        active = [row is not None for row in rows]
        ids = torch.tensor(
            [[row.pending_token if row is not None else self.pad_token_id] for row in rows],
            dtype=torch.long,
            device=self.device,
        )
        mask, positions = batch.step_inputs(active)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
        )
        batch.after_step(active)
        live = [row for row in rows if row is not None]
        logits = out.logits[:, -1]
        if len(live) < len(rows):
            index = [slot for slot, row in enumerate(rows) if row is not None]
            logits = logits[torch.tensor(index, device=logits.device)]
        logits = logits.to(copy=True, dtype=torch.float32)
        # Every live row's token drawn in one call (each from its own generator), then
        # handed to the row, which takes its turn with step() as usual.
        draws = self._draw(logits, live)
        for i, row in enumerate(live):
            row.receive_draw(draws, i)
        self.stats.steps += 1
        self.stats.row_steps += sum(active)

    # ------------------------------------------------------------------ the loop
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
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stats = BatchStats()
        queue = iter(enumerate(requests))
        exhausted = False

        def next_request() -> tuple[int, Request] | None:
            nonlocal exhausted
            item = None if exhausted else next(queue, None)
            exhausted = item is None
            return item

        batch = _BatchCache(self.model, batch_size)
        rows: list[_BatchRow | None] = [None] * batch_size
        finished: list[_BatchRow] = []
        waiting: _BatchRow | None = None  # created, but over this turn's prefill budget

        while True:
            # Refill free slots, prefilling the new prompts together. While other rows are
            # decoding, one turn admits at most `prefill_budget` padded prompt tokens, so
            # admissions never stall them for longer than that; with none decoding, it fills
            # every slot. A row can finish on its first token and free its slot again.
            while any(row is None for row in rows):
                free = [slot for slot, row in enumerate(rows) if row is None]
                group: list[_BatchRow] = []
                longest = 0
                while len(group) < len(free):
                    if waiting is None:
                        item = next_request()
                        if item is None:
                            break
                        waiting = self._new_row(*item, rows, group)
                    padded = max(longest, len(waiting.prompt_ids)) * (len(group) + 1)
                    if group and padded > self.prefill_budget:
                        break
                    longest = max(longest, len(waiting.prompt_ids))
                    group.append(waiting)
                    waiting = None
                if not group:
                    break
                self._prefill(batch, free, group, rows)
                for row in group:
                    if row.step():
                        self._retire(batch, row.slot, row, rows)
                        finished.append(row)
                if any(row is not None for row in rows) and waiting is not None:
                    break  # the budget is spent; decode a step before admitting more
            while finished:
                row = finished.pop(0)
                yield row.index, row.result()
            if all(row is None for row in rows):
                return
            # With nothing left to admit, free rows only cost compute: drop them.
            if exhausted and any(row is None for row in rows):
                keep = [slot for slot, row in enumerate(rows) if row is not None]
                batch.select(keep)
                rows = [rows[slot] for slot in keep]
                for slot, row in enumerate(rows):
                    row.slot = slot
            holes = batch.holes()
            if holes >= max(1, self.min_compact) and holes >= self.compact_fraction * batch.width:
                batch.compact()
                self.stats.compactions += 1
            self._forward(batch, rows)
            self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, batch.peak_bytes)
            self.stats.peak_rows = max(self.stats.peak_rows, sum(r is not None for r in rows))
            for slot, row in enumerate(rows):
                if row is not None and row.step():
                    self._retire(batch, slot, row, rows)
                    yield row.index, row.result()

    def _prefill(
        self,
        batch: _BatchCache,
        free: Sequence[int],
        group: Sequence[_BatchRow],
        rows: list[_BatchRow | None],
    ) -> None:
        """Run the prompts of ``group`` in one left-padded forward pass, draw each row's first
        token, and move each prompt's keys and values into a free slot of the shared cache."""
        start = time.perf_counter()
        lengths = [len(row.prompt_ids) for row in group]
        longest = max(lengths)
        ids = torch.full((len(group), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), longest), dtype=torch.long)
        for i, row in enumerate(group):
            ids[i, longest - lengths[i] :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, longest - lengths[i] :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = new_cache(self.model)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # the LM head for the last positions only (see DecodingSession)
        )
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        draws = self._draw(logits, group)
        seconds = time.perf_counter() - start
        for i, (slot, row) in enumerate(zip(free, group, strict=False)):
            row.receive_prefill(draws, i, seconds)
            batch.insert(slot, cache, source=i, length=lengths[i])
            row.slot = slot
            row.cache = _RowCache(batch, row)
            rows[slot] = row
        self.stats.prefills += 1
        self.stats.prefill_rows += len(group)

    @staticmethod
    def _retire(
        batch: _BatchCache, slot: int, row: _BatchRow, rows: list[_BatchRow | None]
    ) -> None:
        batch.free(slot)
        rows[slot] = None
        row.cache = None  # the row's KV lives in the shared cache; nothing to keep

    def generate_all(
        self, requests: Iterable[Request], batch_size: int = 8
    ) -> list[GenerationResult]:
        """Like :meth:`generate_many`, but return every result in the order of ``requests``."""
        results: dict[int, GenerationResult] = dict(self.generate_many(requests, batch_size))
        return [results[i] for i in range(len(results))]

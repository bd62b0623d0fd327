"""The transformers backend: any causal LM with a ``DynamicCache``, one sequence or a batch.

One sequence: a ``DynamicCache`` per session, fed with ``model(input_ids, cache=...)``; a
rollback is ``cache.crop(-k)``.

A batch (:class:`TransformersBatch`) needs more care, because a ``DynamicCache`` is one
rectangular tensor per layer and rows roll back by different amounts.

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
* Admission: new prompts are prefilled together in one left-padded forward pass, and each
  prompt's keys and values are copied into a free row, right-aligned at column ``T`` (left
  padding; if the prompt is longer than ``T`` every row is padded on the left first).
* Compaction: holes (and columns left of the longest row) cost attention work and memory.
  When the columns beyond the longest row's valid count exceed ``compact_fraction`` of ``T``,
  every row's valid columns are gathered and right-aligned (left-padded) into a cache of
  exactly that longest length.

Batched logits are not bitwise those of one sequence alone: the batched forward pass reduces
in a different order (other matrix shapes, masked padding), so they differ in the last bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from backtrack.backends.kv_cache import new_cache


class TransformersBackend:
    """A transformers causal LM as a backend (see :mod:`backtrack.backends.base`)."""

    is_backtrack_backend = True
    matches_generate = True
    name = "transformers"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.generation_config = getattr(model, "generation_config", None)

    def new_cache(self) -> DynamicCache:
        return new_cache(self.model)

    @torch.inference_mode()
    def forward(self, cache: DynamicCache, ids: Sequence[int]) -> torch.Tensor:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        # Only the last position's logits: the LM head over every prompt position (as
        # model.generate also avoids) would cost more than the rest of the prefill.
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        # As in generate(): the last position's logits, copied out in float32.
        return out.logits[:, -1].to(copy=True, dtype=torch.float32)

    @torch.inference_mode()
    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        # One pass, the LM head over every position (logits_to_keep=0), on a cache of its own.
        out = self.model(input_ids=input_ids, cache=self.new_cache(), use_cache=True)
        return out.logits[0].to(dtype=torch.float32)

    def new_batch(
        self,
        slots: int,
        *,
        pad_token_id: int,
        compact_fraction: float = 0.25,
        min_compact: int = 16,
    ) -> TransformersBatch:
        return TransformersBatch(self.model, slots, pad_token_id, compact_fraction, min_compact)


class _RowCache:
    """What a row's session sees as its cache while it lives in the batch.

    ``DecodingSession.rollback`` only calls ``get_seq_length()`` and ``crop(-k)``; both act on
    the row's valid columns of the shared cache.
    """

    def __init__(self, batch: _BatchCache, slot: int) -> None:
        self.batch, self.slot = batch, slot

    def get_seq_length(self) -> int:
        return len(self.batch.columns[self.slot])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.batch.drop_last(self.slot, -tokens_to_remove)


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

    def copy(self, source: int, slot: int) -> None:
        """Row ``slot`` becomes a copy of row ``source`` (keys, values and valid columns)."""
        if self.cache.layers[0].is_initialized:
            for layer in self.cache.layers:
                layer.keys[slot] = layer.keys[source]
                layer.values[slot] = layer.values[source]
        self.mask[slot] = self.mask[source]
        self.columns[slot] = list(self.columns[source])

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

    def grow(self, n: int) -> None:
        """Append ``n`` free rows in the batch dimension."""
        if self.cache.layers[0].is_initialized:
            self._map(lambda t: torch.cat([t, t.new_zeros((n, *t.shape[1:]))], dim=0))
        self.mask = torch.cat([self.mask, self.mask.new_zeros((n, self.width))], dim=0)
        self.columns.extend([] for _ in range(n))
        self.slots += n

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


class TransformersBatch:
    """Rows of one shared, masked ``DynamicCache`` (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        slots: int,
        pad_token_id: int,
        compact_fraction: float = 0.25,
        min_compact: int = 16,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = _BatchCache(model, slots)
        self.pad_token_id = pad_token_id
        self.compact_fraction = compact_fraction
        self.min_compact = min_compact

    @property
    def peak_bytes(self) -> int:
        return self.cache.peak_bytes

    @torch.inference_mode()
    def admit(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        ids = torch.full((len(prompts), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, longest - lengths[i] :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[i, longest - lengths[i] :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        prefilled = new_cache(self.model)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=prefilled,
            use_cache=True,
            logits_to_keep=1,  # the LM head for the last positions only
        )
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        for i, slot in enumerate(slots):
            self.cache.insert(slot, prefilled, source=i, length=lengths[i])
        return logits

    @torch.inference_mode()
    def step(self, tokens: Sequence[int | None]) -> torch.Tensor:
        active = [t is not None for t in tokens]
        ids = torch.tensor(
            [[t if t is not None else self.pad_token_id] for t in tokens],
            dtype=torch.long,
            device=self.device,
        )
        mask, positions = self.cache.step_inputs(active)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache.cache,
            use_cache=True,
        )
        self.cache.after_step(active)
        logits = out.logits[:, -1]
        if not all(active):
            index = [slot for slot, on in enumerate(active) if on]
            logits = logits[torch.tensor(index, dtype=torch.long, device=logits.device)]
        return logits.to(copy=True, dtype=torch.float32)

    def row_cache(self, slot: int) -> _RowCache:
        return _RowCache(self.cache, slot)

    def free(self, slot: int) -> None:
        self.cache.free(slot)

    def copy_row(self, source: int, slot: int) -> None:
        self.cache.copy(source, slot)

    def keep_rows(self, keep: Sequence[int]) -> None:
        self.cache.select(keep)

    def grow(self, n: int) -> None:
        self.cache.grow(n)

    def maintain(self) -> bool:
        holes = self.cache.holes()
        if holes >= max(1, self.min_compact) and holes >= self.compact_fraction * self.cache.width:
            self.cache.compact()
            return True
        return False

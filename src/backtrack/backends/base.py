"""What the engine needs from a model runtime: prefill, feed tokens, crop, last logits.

The decoding loop (:mod:`backtrack.engine.session`), the batch decoder, the RL environment and
the evaluation runner never call a model directly; they go through a :class:`Backend`:

* :meth:`Backend.new_cache` opens one sequence's cache (a :class:`SequenceCache`);
* :meth:`Backend.forward` feeds ids on a cache and returns the last position's logits;
* :meth:`SequenceCache.crop` drops the cache's last positions (a rollback, never recomputed);
* :meth:`Backend.new_batch` opens a :class:`BatchState`: many sequences decoded one step at a
  time in one forward pass, each admitted, cropped and freed on its own.

Sampling stays in the engine, on the logits these return (float32 ``[n, V]``), so operators,
bans, budgets, stop strings and streaming behave the same on every backend.

Two backends implement this: :mod:`backtrack.backends.transformers_backend` (any transformers causal
LM with a ``DynamicCache``) and :mod:`backtrack.backends.llama_cpp_backend` (GGUF weights through
llama-cpp-python). :func:`as_backend` turns a transformers model into its backend, so code
that passes a plain transformers model keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class SequenceCache(Protocol):
    """One sequence's cache, as the session sees it (``DynamicCache`` fits as is)."""

    def get_seq_length(self) -> int:
        """Positions cached."""
        ...

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (a negative count, as in
        ``DynamicCache.crop``)."""
        ...


class BatchState(Protocol):
    """Many sequences in one backend, each in a slot ``0..slots-1``.

    The batch decoder admits prompts into free slots, steps every slot once per forward pass
    and crops or frees a slot when its row rolls back or finishes.
    """

    peak_bytes: int  # largest memory the batch's caches held

    def admit(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill ``prompts[i]`` into free slot ``slots[i]``; the logits of each prompt's
        last position ``[len(prompts), V]`` (float32)."""
        ...

    def step(self, tokens: Sequence[int | None]) -> torch.Tensor:
        """Feed one token per slot (``None``: the slot is free); the logits of the fed slots,
        in slot order ``[fed, V]`` (float32)."""
        ...

    def row_cache(self, slot: int) -> SequenceCache:
        """The cache of the sequence in ``slot``, as its session sees it."""
        ...

    def free(self, slot: int) -> None:
        """Forget the sequence in ``slot``; the slot can admit another."""
        ...

    def copy_row(self, source: int, slot: int) -> None:
        """Make ``slot`` (free or not) hold a copy of the sequence in ``source`` (beam search
        forks a beam this way; nothing is recomputed)."""
        ...

    def keep_rows(self, keep: Sequence[int]) -> None:
        """Keep only slots ``keep``, renumbered ``0..len(keep)-1`` in that order."""
        ...

    def grow(self, n: int) -> None:
        """Append ``n`` free slots (never more slots in all than the batch was opened with)."""
        ...

    def maintain(self) -> bool:
        """Housekeeping between steps (compaction); True if it did any."""
        ...


class Backend(Protocol):
    """A model runtime the engine decodes on (``is_backtrack_backend = True`` marks one)."""

    is_backtrack_backend: bool
    name: str
    # Whether sampling should replay model.generate's random stream (transformers), rather
    # than draw top-k rows over their k candidates only (cheaper; see engine.sampling).
    matches_generate: bool
    device: torch.device
    generation_config: Any  # ``eos_token_id`` (int or list) is read from it

    def new_cache(self) -> SequenceCache: ...

    def forward(self, cache: SequenceCache, ids: Sequence[int]) -> torch.Tensor:
        """Feed ``ids`` after what ``cache`` holds; the last position's logits ``[1, V]``
        (float32)."""
        ...

    def new_batch(
        self,
        slots: int,
        *,
        pad_token_id: int,
        compact_fraction: float,
        min_compact: int,
    ) -> BatchState: ...


def as_backend(model: Any) -> Backend:
    """``model`` itself if it is a backend, else the transformers backend around it."""
    if getattr(model, "is_backtrack_backend", False):
        return model
    from backtrack.backends.transformers_backend import TransformersBackend

    return TransformersBackend(model)

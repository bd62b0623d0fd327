"""What the engine needs from a model runtime: prefill, feed tokens, crop, last logits.

The decoding loop (:mod:`backtrack.engine.session`), the batch decoder, the RL environment and
the evaluation runner never call a model directly; they go through a :class:`Backend`:

* :meth:`Backend.new_cache` opens one sequence's cache (a :class:`SequenceCache`);
* :meth:`Backend.forward` feeds ids on a cache and returns the last position's logits;
* :meth:`SequenceCache.crop` drops the cache's last positions (a rollback, never recomputed);
* :meth:`Backend.new_batch` opens a :class:`BatchState`: many sequences decoded one step at a
  time in one forward pass, each admitted, cropped and freed on its own;
* :meth:`Backend.prompt_logits` scores a whole text at once (the logits at every position, for
  the server's ``echo`` with ``logprobs``); :func:`prompt_logprobs` turns them into each
  token's log-probability and top alternatives, by the sampler's formula.

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

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """``ids`` fed on a fresh cache of their own (no session's cache is touched); the
        logits at every position ``[len(ids), V]`` (float32): row ``i`` is the distribution of
        token ``i + 1``. Safe to call while a batch decodes on another thread."""
        ...


def prompt_logprobs(
    backend: Backend, ids: Sequence[int], top: int
) -> list[tuple[float, list[tuple[int, float]]]]:
    """Each token of ``ids`` after the first: its raw log-probability given the tokens before
    it and the ``top`` most likely tokens there, ``(logprob, [(token, logprob), ...])``.

    One pass over the whole text (:meth:`Backend.prompt_logits`), with the sampler's formula
    (logit - logsumexp of the float32 logits), so the top alternative of a token that is the
    most likely one equals its log-probability exactly.
    """
    if len(ids) < 2:
        return []
    logits = backend.prompt_logits(ids)[:-1]
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    nxt = torch.tensor(list(ids[1:]), dtype=torch.long, device=logits.device)
    chosen = (logits.gather(1, nxt[:, None]) - lse)[:, 0].tolist()
    if top:
        best = torch.topk(logits, min(top, logits.shape[-1]), dim=-1)
        ids_top, values = best.indices.tolist(), (best.values - lse).tolist()
    else:
        ids_top = values = [[] for _ in chosen]
    return [
        (lp, list(zip(t, v, strict=True))) for lp, t, v in zip(chosen, ids_top, values, strict=True)
    ]


def as_backend(model: Any) -> Backend:
    """``model`` itself if it is a backend, else the transformers backend around it."""
    if getattr(model, "is_backtrack_backend", False):
        return model
    from backtrack.backends.transformers_backend import TransformersBackend

    return TransformersBackend(model)

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

This module is the entry point; the continuous batch itself (its rows, admission, refill,
cancellation and the batched draw) is :class:`~backtrack.engine.batch_run.BatchRun`, in
``engine/batch_run.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from backtrack.backends.base import as_backend
from backtrack.engine.batch_run import (
    BatchOptions,
    BatchRun,
    BatchStats,
    IterableSource,
    Request,
    RequestSource,
)
from backtrack.engine.results import GenerationResult
from backtrack.engine.text import IncrementalDetokenizer

# The batch's pieces are importable from here too, where the server and users take them.
__all__ = [
    "BatchDecoder",
    "BatchOptions",
    "BatchRun",
    "BatchStats",
    "IterableSource",
    "Request",
    "RequestSource",
]


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
        self.model = model
        self.backend = as_backend(model)
        self.tokenizer = tokenizer
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.options = BatchOptions(
            compact_fraction=compact_fraction,
            min_compact=min_compact,
            pad_token_id=int(pad_token_id) if pad_token_id is not None else 0,
            prefill_budget=prefill_budget,
        )
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stats = BatchStats()

    def open(self, batch_size: int, source: RequestSource) -> BatchRun:
        """A continuous batch of up to ``batch_size`` rows fed by ``source``: call
        :meth:`BatchRun.turn` repeatedly (the server's scheduler does; so does
        :meth:`generate_many`). :attr:`stats` starts afresh and counts what the run does."""
        self.stats = BatchStats()
        return BatchRun(
            self.backend,
            self.tokenizer,
            batch_size,
            source,
            self.options,
            self.stats,
            self.detokenizer,
        )

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

    def generate_all(
        self, requests: Iterable[Request], batch_size: int = 8
    ) -> list[GenerationResult]:
        """Like :meth:`generate_many`, but return every result in the order of ``requests``."""
        results: dict[int, GenerationResult] = dict(self.generate_many(requests, batch_size))
        return [results[i] for i in range(len(results))]

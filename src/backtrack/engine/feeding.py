"""The model's side of a decoding session: what has been fed to it, the forward pass queued,
passes run elsewhere (a batch), and what the KV cache holds after a rollback.

Invariant after every step: the KV cache holds every token of ``prompt + completion`` except
the last one, which is fed on the next forward pass (:meth:`Feeding.advance` queues it and
:meth:`~backtrack.engine.session.DecodingSession.sample` runs it, or the batch does for every
row at once). A rollback of ``k`` tokens therefore crops the cache by exactly ``k`` positions,
and the next forward pass (feeding the new last token) gives the distribution at the position
where decoding resumes; nothing is ever recomputed. The exception is a ban's rollback that
reuses what it already knows (:mod:`backtrack.engine.reuse`): the logits where decoding
resumes, so every token before it stays fed and no pass is queued, and after a soft ban the
deleted path, kept in the cache ahead of the completion while the draws repeat it.

A mixin of :class:`~backtrack.engine.session.DecodingSession`, whose attributes it uses
(``backend``, ``cache``, ``prompt_ids``, ``completion``, ``counts``, ``memory``, ...): one class
in two files, the model's side here and the completion's there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from backtrack.backends.kv_cache import rollback_cache
from backtrack.engine.sampling import Draws


class Feeding:
    """Forward passes and the KV cache of a :class:`~backtrack.engine.session.DecodingSession`."""

    # Set by DecodingSession (declared here for readers and type checkers).
    backend: Any
    cache: Any
    memory: Any
    guard: Any
    prompt_ids: list[int]
    completion: list[int]
    counts: Any
    budget: Any
    pending_token: int | None
    finish_reason: Any
    check: Any
    _next_logits: torch.Tensor | None
    _drawn: tuple[Draws, int] | None

    def _forward(self, ids: Sequence[int]) -> torch.Tensor:
        """Feed ``ids`` on the cache; the last position's logits ``[1, V]`` (float32)."""
        assert self.cache is not None, "call prefill() first"
        return self.backend.forward(self.cache, ids)

    def prefill(self) -> None:
        """Open the cache and run the prompt through the model once."""
        t0 = time.perf_counter()
        self.cache = self.backend.new_cache()
        self._next_logits = self._forward(self.prompt_ids)
        self.counts.forward_passes += 1
        self.counts.prefill_time_s = time.perf_counter() - t0

    def receive_prefill(self, draws: Draws, row: int, seconds: float) -> None:
        """The prompt was run elsewhere (a batched prefill): its result, the first token drawn
        from it (as in :meth:`receive_draw`) and the time it took."""
        self._next_logits = draws.logits[row : row + 1]
        self._drawn = (draws, row)
        self.counts.forward_passes += 1
        self.counts.prefill_time_s = seconds

    def advance(self) -> bool:
        """Queue the forward pass that feeds the last token; False (finished) if out of budget.

        The pass itself runs when the next token is sampled, or, in a batch, together with the
        other rows' (:meth:`receive_draw`).
        """
        if self.counts.forward_passes >= self.budget.max_forward_passes:
            if self.guard is not None:  # the text ends here: no banned word at its very end
                self.guard.enforce(self, at_end=True)
            self._finish("budget")
            return False
        if self._next_logits is not None:  # known already: a ban's rollback reused them
            return True
        self.pending_token = self.completion[-1] if self.completion else self.prompt_ids[-1]
        return True

    def receive_logits(self, logits: torch.Tensor) -> None:
        """Hand over the queued forward pass's result, computed elsewhere (``[1, V]`` float32)."""
        if self.pending_token is None:
            raise RuntimeError("no forward pass is queued for this session")
        self._next_logits = logits
        self.pending_token = None
        self.counts.forward_passes += 1

    def draws_without_pass(self) -> bool:
        """True when the next draw needs no forward pass: a ban's rollback reused the logits
        where decoding resumes, or the draws follow a deleted path the KV cache still holds
        (:mod:`backtrack.engine.reuse`). A batch lets such a row go on in the same turn
        instead of sitting out the next forward pass for each of those draws."""
        return (
            self.finish_reason is None
            and self.check.pending is None
            and self._drawn is None
            and self._next_logits is not None
        )

    def receive_draw(self, draws: Draws, row: int) -> None:
        """Hand over the queued forward pass's result and the token drawn from it, computed
        elsewhere (row ``row`` of a batched :func:`~backtrack.engine.sampling.draw` made with
        this session's :attr:`sampler` and :meth:`banned_now`)."""
        self.receive_logits(draws.logits[row : row + 1])
        self._drawn = (draws, row)

    def _follow_ahead(self, token: int, position: int) -> None:
        """After a soft ban's rollback the KV cache still holds the deleted path: go on along
        it while the draws repeat it (the next logits are known), else drop it from the cache."""
        assert self.memory is not None and self.cache is not None
        ahead, following = self.memory.ahead, self.memory.at(position + 1)
        if ahead[0] == token and following is not None:
            ahead.pop(0)
            self._next_logits = following
            return
        rollback_cache(self.cache, len(ahead))
        ahead.clear()
        self.memory.forget_after(position)

    def _restore_cache(self, keep: int, removed: list[int], kind: str, reuse: bool) -> None:
        """The KV cache and the next logits after a rollback to ``keep`` tokens (``removed``:
        the tokens deleted)."""
        assert self.cache is not None
        fed = self.cache.get_seq_length() - len(self.prompt_ids)  # completion and ahead tokens
        memory = self.memory
        reused = memory.at(keep) if memory is not None and reuse else None
        # The tokens the cache holds from `keep` on: the deleted ones, then any older path.
        path = [*removed, *(memory.ahead if memory is not None else ())]
        self.pending_token = None
        if memory is not None:
            memory.ahead = []
        if reused is None:
            # The invariant (cache = every token but the last); the next forward pass, feeding
            # the new last token, gives the distribution at position `keep` again.
            rollback_cache(self.cache, fed - (keep - 1))
            self._next_logits = None
        elif kind == "soft":  # the deleted path stays in the cache, in case it is drawn again
            assert memory is not None
            memory.ahead = path[: fed - keep]
            self._next_logits = reused
            return
        else:  # every token before `keep` fed; its logits known
            rollback_cache(self.cache, fed - keep)
            self._next_logits = reused
        if memory is not None:
            memory.forget_after(keep)

    def cache_length(self) -> int:
        return 0 if self.cache is None else self.cache.get_seq_length()

    def forget_reuse(self) -> None:
        """Give up the logits a rollback reused: uncache the last token, so that the next draw
        costs a forward pass again. At a dead end a ban and the sampler's fallback alternate
        (:mod:`backtrack.engine.banning`), and only forward passes spent end that loop."""
        fed = self.completion[-1:] or self.prompt_ids[-1:]
        length = len(self.prompt_ids) + len(self.completion)
        if self._next_logits is not None and self.cache.get_seq_length() == length and fed:
            rollback_cache(self.cache, 1)
            self._next_logits = None

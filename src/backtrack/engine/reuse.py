"""What a ban's rollback can reuse instead of recomputing: the distributions drawn from at
recent positions, and the KV cache of the tokens it deleted.

A phrase is detected a token or two after it begins (a whole word needs the character after
it), so a ban rolls back a few tokens and draws again where the phrase began. Two things of
that moment are already known:

- the raw logits at that position: they depend only on the prefix before it, which the
  rollback kept, so the draw needs no forward pass (:meth:`LogitMemory.at`);
- after a *soft* ban, the token drawn there is often the one just deleted (its probability was
  only multiplied by the phrase's weight). Then the deleted tokens are still in the KV cache,
  and the logits after them are remembered too: decoding goes on along the old path without a
  forward pass for as long as each new draw repeats the deleted token there
  (:attr:`LogitMemory.ahead`), and drops the rest of the old path at the first difference.

Both are exact: the logits reused are the very values a recomputation on the same prefix
gives (the single-sequence engine computes them the same way; a batch row's reuse is as exact
as anything a batch computes), and the random stream is used as a fresh forward pass would
use it, so the tokens are the same as without reuse; only the forward passes are fewer
(``tests/test_ban_lists.py`` checks both).

Memory: one float32 row of the vocabulary per remembered position (0.6 MB for a 152k
vocabulary), the last :data:`CAPACITY` positions only; a rollback that reaches further back
decodes as before.
"""

from __future__ import annotations

import torch

# Positions remembered: a ban reaches back to where its phrase began (the longest antislop
# phrase is 34 characters, about 10 tokens) plus at most MAX_BAN_REWIND dead-end tokens.
CAPACITY = 24


class LogitMemory:
    """The raw logits a session drew from at its most recent positions, and the tokens its KV
    cache holds beyond the completion after a soft ban (:attr:`ahead`)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._logits: dict[int, torch.Tensor] = {}
        # Tokens fed to the KV cache beyond the completion, in order (the deleted path).
        self.ahead: list[int] = []

    def remember(self, position: int, logits: torch.Tensor) -> None:
        """The logits ``[V]`` drawn from at ``position`` (copied: a batch's tensor is reused)."""
        if self.capacity <= 0:
            return
        self._logits[position] = logits.detach().clone()
        for old in [p for p in self._logits if p <= position - self.capacity]:
            del self._logits[old]

    def at(self, position: int) -> torch.Tensor | None:
        """The logits ``[1, V]`` at ``position``, if remembered."""
        logits = self._logits.get(position)
        return None if logits is None else logits[None]

    def forget_after(self, position: int) -> None:
        """Drop what belonged to positions after ``position`` (another path from there on)."""
        for old in [p for p in self._logits if p > position]:
            del self._logits[old]

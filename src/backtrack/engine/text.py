"""Incremental detokenization and stop-string matching, O(1) work per token.

Decoding the whole output every step would be quadratic, and ``endswith`` on the decoded
text misses stop strings that a token swallows together with the next characters. So each
token decodes only a short window, and the stop-string search looks only at the new tail
(plus the few characters before it that a stop string could straddle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class DetokState:
    """Window offsets into the completion ids (see :class:`IncrementalDetokenizer`)."""

    prefix_offset: int = 0
    read_offset: int = 0


class IncrementalDetokenizer:
    """Text of each new token given the tokens before it.

    The piece of text a token adds is ``decode(ids[prefix:]) - decode(ids[prefix:read])`` for a
    window that starts a few tokens back, so tokenizers that need left context (byte-level BPE
    with multi-byte characters, SentencePiece spaces) decode correctly. While the window ends
    in an incomplete character (the replacement character), nothing is emitted; the character
    is emitted with the token that completes it. The state is two integers, so a rollback
    restores it exactly.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def decode(self, ids: Sequence[int]) -> str:
        """``ids`` as text, special tokens skipped (as every piece is decoded)."""
        return self._decode(ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def next_piece(self, ids: Sequence[int], state: DetokState) -> tuple[str, DetokState]:
        """Text added by ``ids[-1]`` and the new state; ``state`` describes ``ids[:-1]``."""
        prefix_text = self._decode(ids[state.prefix_offset : state.read_offset])
        new_text = self._decode(ids[state.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            return new_text[len(prefix_text) :], DetokState(state.read_offset, len(ids))
        return "", state


def find_stop(text: str, new_from: int, stops: Sequence[str]) -> tuple[int, str] | None:
    """Earliest stop string that ends at or after ``text[new_from]``: ``(index, stop)``.

    Only the tail that could contain a stop string touching the new characters is searched.
    """
    best: tuple[int, str] | None = None
    for stop in stops:
        start = max(0, new_from - len(stop) + 1)
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    return best

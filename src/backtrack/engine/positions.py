"""Per-position bookkeeping of a decoding session.

Every completion position remembers two things for as long as the prefix before it stands:
what deleting it must put back (:class:`UndoLog`: the operator's state, the detokenizer's
window, where its text starts), and what decoding already rejected there (:class:`Rejections`:
banned tokens and how often decoding resumed there). A rollback truncates the first and tells
the second where decoding resumes.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from backtrack.engine.settings import BanPolicy
from backtrack.engine.text import DetokState


@dataclass
class UndoRecord:
    """What a completion position needs to be undone."""

    operator_state: Any
    detok_state: DetokState
    text_len: int  # length of the completion text before this token


def _text_start(record: UndoRecord) -> int:
    return record.text_len


class UndoLog:
    """One :class:`UndoRecord` per completion token, in order (as long as the completion)."""

    def __init__(self) -> None:
        self._records: list[UndoRecord] = []

    def __len__(self) -> int:
        return len(self._records)

    def push(self, record: UndoRecord) -> None:
        """Record the position of the token just appended."""
        self._records.append(record)

    def truncate(self, keep: int) -> UndoRecord:
        """Forget positions ``keep`` onwards; return the record of position ``keep`` (what
        deleting them restores)."""
        record = self._records[keep]
        del self._records[keep:]
        return record

    def last(self) -> UndoRecord:
        return self._records[-1]

    def text_offset(self, position: int, text_length: int) -> int:
        """Where the text of the token at ``position`` starts (``text_length`` at the end)."""
        if position >= len(self._records):
            return text_length
        return self._records[position].text_len

    def token_at(self, offset: int, text_length: int) -> int:
        """Index of the token whose text covers character ``offset`` of the completion text
        (with the text-less tokens just before it, whose bytes begin that character), or the
        completion's length past the end (less the trailing tokens of an unfinished one)."""
        if offset < text_length:
            index = bisect.bisect_right(self._records, offset, key=_text_start) - 1
        else:
            index = len(self._records)
        start = self.text_offset(index, text_length)
        while index > 0 and self._records[index - 1].text_len == start:
            index -= 1
        return index


class Rejections:
    """What decoding rejected at each completion position under the current prefix.

    A rollback bans its first deleted token where decoding resumes, as
    ``GenerationConfig.ban`` says (``"accumulate"``: every token rejected there; ``"next"``:
    the last one, for the next draw only; ``"none"``), and counts the resumption against
    ``GenerationConfig.max_retries_per_position``. A token rejected because it began a banned
    phrase (a hard ban) stays banned there whatever the policy, so the ban makes progress. A
    token that began a soft-banned phrase is not banned but down-weighted there: its
    probability is multiplied by the phrase's weight (:meth:`weigh`), and that phrase, begun
    by that token there, is then excused (:meth:`excused_items`): if it comes back, it stands.
    Everything recorded for later positions belonged to a prefix that no longer exists, and is
    dropped.
    """

    def __init__(self, policy: BanPolicy) -> None:
        self.policy = policy
        self._bans: dict[int, set[int]] = {}
        self._string_bans: dict[int, set[int]] = {}
        self._retries: dict[int, int] = {}
        # Soft bans: per position, {token: multiplier} and the (token, phrase key) paid for.
        self._weights: dict[int, dict[int, float]] = {}
        self._excused: dict[int, set[tuple[int, Any]]] = {}

    def banned_at(self, position: int) -> Collection[int]:
        """Token ids banned at ``position``."""
        rejected = self._bans.get(position, ())
        phrase = self._string_bans.get(position)
        return rejected if not phrase else {*rejected, *phrase}

    def banned_strings_at(self, position: int) -> Collection[int]:
        """Token ids banned at ``position`` because they began a banned string."""
        return self._string_bans.get(position, ())

    def weights_at(self, position: int) -> dict[int, float]:
        """``{token: multiplier}`` of the soft bans at ``position`` (empty: none)."""
        return self._weights.get(position, {})

    def excused_items(self):
        """``(position, {(token, phrase key), ...})`` for every position with paid soft bans."""
        return self._excused.items()

    def exhausted(self, position: int, vocab_size: int | None) -> bool:
        """Whether every one of ``vocab_size`` tokens is banned at ``position`` (a dead end)."""
        return vocab_size is not None and len(self.banned_at(position)) >= vocab_size

    def drawn(self, position: int) -> None:
        """A token was drawn at ``position``: a ``"next"`` ban has served its one draw."""
        if self.policy == "next":
            self._bans.pop(position, None)

    def retries(self, position: int) -> int:
        """How often decoding resumed at ``position`` under the current prefix."""
        return self._retries.get(position, 0)

    def resumed(self, position: int, rejected: int, *, kind: str = "operator") -> None:
        """Decoding resumes at ``position`` after deleting ``rejected`` (the token there).

        ``kind``: ``"operator"`` (banned as the policy says), ``"hard"`` (it began a banned
        phrase, or failed a check: banned there for good, and as the policy says) or
        ``"soft"`` (it began a soft-banned phrase: not banned; :meth:`weigh` says how much it
        weighs now)."""
        for table in (self._bans, self._string_bans, self._retries, self._weights, self._excused):
            for p in [p for p in table if p > position]:
                del table[p]
        self._retries[position] = self._retries.get(position, 0) + 1
        if kind == "soft":
            return
        if self.policy == "accumulate":
            self._bans.setdefault(position, set()).add(rejected)
        elif self.policy == "next":
            self._bans[position] = {rejected}
        if kind == "hard":
            self._string_bans.setdefault(position, set()).add(rejected)

    def weigh(self, position: int, token: int, weight: float, key: Any) -> None:
        """Multiply ``token``'s probability at ``position`` by ``weight`` (a soft ban of the
        phrase ``key`` it began there), and excuse that phrase begun by that token there."""
        weights = self._weights.setdefault(position, {})
        weights[token] = weights.get(token, 1.0) * weight
        self._excused.setdefault(position, set()).add((token, key))

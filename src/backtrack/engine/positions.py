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

from backtrack.engine.banned import MAX_BAN_REWIND
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
    string stays banned there whatever the policy, so the ban makes progress. Everything
    recorded for later positions belonged to a prefix that no longer exists, and is dropped.
    """

    def __init__(self, policy: BanPolicy) -> None:
        self.policy = policy
        self._bans: dict[int, set[int]] = {}
        self._string_bans: dict[int, set[int]] = {}
        self._retries: dict[int, int] = {}

    def banned_at(self, position: int) -> Collection[int]:
        """Token ids banned at ``position``."""
        rejected = self._bans.get(position, ())
        phrase = self._string_bans.get(position)
        return rejected if not phrase else {*rejected, *phrase}

    def banned_strings_at(self, position: int) -> Collection[int]:
        """Token ids banned at ``position`` because they began a banned string."""
        return self._string_bans.get(position, ())

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

    def resumed(self, position: int, rejected: int, *, banned_string: bool = False) -> None:
        """Decoding resumes at ``position`` after deleting ``rejected`` (the token there);
        ``banned_string``: it was deleted because it began a banned string."""
        for table in (self._bans, self._string_bans, self._retries):
            for p in [p for p in table if p > position]:
                del table[p]
        self._retries[position] = self._retries.get(position, 0) + 1
        if self.policy == "accumulate":
            self._bans.setdefault(position, set()).add(rejected)
        elif self.policy == "next":
            self._bans[position] = {rejected}
        if banned_string:
            self._string_bans.setdefault(position, set()).add(rejected)


def rewind_dead_ends(session: Any, rejections: Rejections) -> int:
    """After a ban's rollback: while every token is banned where decoding resumes (a dead
    end), delete one more token, banned at its own position, at most
    :data:`~backtrack.engine.banned.MAX_BAN_REWIND` deep and never into final text; return
    how many tokens went. ``session``: the :class:`~backtrack.engine.session.DecodingSession`.
    """
    deleted = 0
    for _ in range(MAX_BAN_REWIND):
        if not rejections.exhausted(len(session.completion), session.vocab_size):
            break
        if not session.rollback(1, "banned-string", force=True):
            break  # the text before it is final
        deleted += 1
    return deleted

"""Banned strings: phrases the completion must never contain, enforced by backtracking.

This is the phrase banning of exllamav2's ``banned_strings``, KoboldCpp and the antislop
sampler: as soon as a banned string (or a match of a banned regular expression) appears in the
completion text, decoding rolls back to the token where the match begins and bans that token
there (it cannot come straight back), then resumes. Matches are found in the decoded text, so
they are caught across token boundaries however the tokenizer splits them.

Unlike a heuristic operator, a ban is a guarantee, so the session enforces it after *every*
token: past ``period``, the retry cap and the backtracking budget (a budget that runs out ends
decoding early rather than keep a banned string). Streaming must never send text a ban could
still delete, so :meth:`BannedStrings.scan` also reports where the earliest *partial* match
begins (text that could still grow into a match, e.g. ``"hel"`` for the banned ``"hello"``),
and the session holds that text back. Partial matching comes from the ``regex`` module
(``partial=True``), which answers it exactly for regular expressions too.

Only the completion is searched, not the prompt, and a match must be non-empty.

Dead ends: a ban can leave nothing to draw where decoding resumes (every token of the
vocabulary rejected there, e.g. under a pattern that matches any character after some text).
Then the prefix itself cannot be continued, so the session deletes one more token, bans it at
its own position, and tries again: at most :data:`MAX_BAN_REWIND` tokens further back than the
match's start, never into text already final. (Without this, the sampler ignores bans that
exclude everything, the banned text comes straight back, and the ban and the draw alternate
until the forward-pass budget ends decoding.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import regex

# How many tokens beyond a match's start one ban may delete when it finds dead ends. Reaching
# depth d needs the whole vocabulary rejected at d positions in a row, i.e. about V ** d ban
# rollbacks; no budget affords a third level on a real vocabulary (V ~ 50k), so a deeper
# rewind would only ever follow a pattern that condemns nearly all text, which no rewind can
# satisfy. 4 covers every case that can finish and keeps one ban's reach small and known.
MAX_BAN_REWIND = 4


@dataclass(frozen=True)
class BanScan:
    """What :meth:`BannedStrings.scan` found in the completion text.

    Attributes:
        match_start: character offset where the leftmost complete match begins (``None``: no
            complete match).
        match_text: the matched text (``""`` when none).
        hold_from: the earliest character offset from which the text could still become part
            of a match as decoding goes on; text before it is safe from every ban
            (``len(text)`` when nothing is pending).
    """

    match_start: int | None
    match_text: str
    hold_from: int


class BannedStrings:
    """Banned literal strings and regular expressions, compiled into one pattern.

    >>> bans = BannedStrings(["As an AI"], regexes=[r"TODO\\b"], ignore_case=True)
    >>> bans.scan("Sure. as an ai model").match_start
    6
    >>> bans.scan("Sure. As an").hold_from      # "As an" may still become "As an AI"
    6

    Args:
        strings: literal phrases to ban (matched exactly, or case-insensitively).
        regexes: regular expressions to ban (``regex`` module syntax, a superset of ``re``).
        ignore_case: match everything case-insensitively.
    """

    def __init__(
        self,
        strings: Sequence[str] = (),
        regexes: Sequence[str] = (),
        ignore_case: bool = False,
    ) -> None:
        if isinstance(strings, str) or isinstance(regexes, str):
            raise TypeError("banned strings and regexes are lists of strings, not one string")
        self.strings = tuple(strings)
        self.regexes = tuple(regexes)
        self.ignore_case = bool(ignore_case)
        if any(not s for s in self.strings):
            raise ValueError("banned strings must be non-empty")
        alternatives = [regex.escape(s) for s in self.strings]
        for pattern in self.regexes:
            try:
                compiled = regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"invalid banned regex {pattern!r}: {exc}") from None
            if compiled.fullmatch("") is not None:
                raise ValueError(f"banned regex {pattern!r} matches the empty string")
            alternatives.append(f"(?:{pattern})")
        if not alternatives:
            raise ValueError("BannedStrings needs at least one string or regex")
        flags = regex.IGNORECASE if self.ignore_case else 0
        self.pattern = regex.compile("|".join(alternatives), flags)

    def scan(self, text: str, start: int = 0) -> BanScan:
        """Look for matches in ``text[start:]`` (text before ``start`` is known to be safe)."""
        # The first non-empty match (a pattern like r"\b|x" can match empty text in context).
        full = next((m for m in self.pattern.finditer(text, start) if m.end() > m.start()), None)
        if full is not None:
            return BanScan(full.start(), full.group(), full.start())
        # Without a complete match, a partial search returns the leftmost partial one (a
        # match that reaches the end of the text and could go on), or an empty match; either
        # way, holding back from its start is safe.
        partial = self.pattern.search(text, start, partial=True)
        hold = len(text) if partial is None else min(partial.start(), len(text))
        return BanScan(None, "", hold)

    def __repr__(self) -> str:
        return (
            f"BannedStrings(strings={list(self.strings)!r}, regexes={list(self.regexes)!r}, "
            f"ignore_case={self.ignore_case})"
        )

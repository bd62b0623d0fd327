"""Banned phrases and patterns: what the completion must not contain, found as decoding goes.

This is the phrase banning of exllamav2's ``banned_strings``, KoboldCpp and the antislop
sampler: as soon as a banned phrase (or a match of a banned regular expression) appears in the
completion text, decoding rolls back to the token where the match begins and, for a *hard* ban,
bans that token there (it cannot come straight back), then resumes; a *soft* ban multiplies
that token's probability there by the phrase's weight instead (:mod:`backtrack.engine.banning`).
Matches are found in the decoded text, so they are caught across token boundaries however the
tokenizer splits them.

Matching costs what the new text costs, not what the list holds. Literal phrases, any number
of them, sit in one Aho-Corasick automaton (``pyahocorasick``, C) per list, built once and
shared by every request and batch row that uses the list (:mod:`backtrack.engine.banlists`);
after each token only a window of the text is searched: the new text and the ``longest phrase
- 1`` characters before it. Regular expressions run on the ``regex`` module from the first
character that is not final yet; their cost grows with their number (a user's few patterns,
not a list: see docs/concepts.md).

Options: ``ignore_case`` matches lower-cased text against lower-cased phrases; ``whole_words``
matches a literal phrase only between word boundaries (no letter, digit or ``_`` on either
side, as the antislop sampler and EQ-Bench count words), so banning ``mia`` leaves ``Miami``
and ``academia`` alone. Regexes spell their own boundaries.

Streaming must never send text a ban could still delete, so :meth:`Bans.scan` also reports
where the earliest *partial* match begins (text that could still grow into a match, e.g.
``"hel"`` for the banned ``"hello"``, or a whole word banned but not yet followed by a
boundary), and the session holds that text back. Partial regex matches come from the ``regex``
module (``partial=True``), which answers them exactly.

Only the completion is searched, not the prompt, and a match must be non-empty.

Dead ends: a hard ban can leave nothing to draw where decoding resumes (every token of the
vocabulary rejected there, e.g. under a pattern that matches any character after some text).
Then the prefix itself cannot be continued, so the session deletes one more token, bans it at
its own position, and tries again: at most :data:`MAX_BAN_REWIND` tokens further back than the
match's start, never into text already final.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import ahocorasick
import regex

# How many tokens beyond a match's start one ban may delete when it finds dead ends. Reaching
# depth d needs the whole vocabulary rejected at d positions in a row, i.e. about V ** d ban
# rollbacks; no budget affords a third level on a real vocabulary (V ~ 50k), so a deeper
# rewind would only ever follow a pattern that condemns nearly all text, which no rewind can
# satisfy. 4 covers every case that can finish and keeps one ban's reach small and known.
MAX_BAN_REWIND = 4
# The list name of phrases given inline (``banned_strings``, ``banned_regex``).
INLINE = "inline"


@dataclass(frozen=True)
class BanMatch:
    """One complete match in the completion text.

    Attributes:
        start, end: its character offsets (``text[start:end]`` is the matched text).
        text: the matched text.
        weight: what the token that began it is multiplied by where it began (0: a hard ban).
        key: which phrase or pattern matched (``(list name, phrase)``), for the bookkeeping of
            soft bans and for reports.
    """

    start: int
    end: int
    text: str
    weight: float
    key: tuple[str, str]

    @property
    def hard(self) -> bool:
        return self.weight == 0.0


@dataclass(frozen=True)
class BanScan:
    """What :meth:`Bans.scan` found in the completion text.

    Attributes:
        match: the leftmost complete match that is not excused (``None``: none).
        hold_from: the earliest character offset from which the text could still become part
            of a match as decoding goes on; text before it is safe from every ban
            (``len(text)`` when nothing is pending).
    """

    match: BanMatch | None
    hold_from: int

    @property
    def match_start(self) -> int | None:
        return None if self.match is None else self.match.start


class PhraseSet:
    """Literal phrases with their factors, compiled into one Aho-Corasick automaton.

    ```pycon
    >>> phrases = PhraseSet("demo", {"tapestry": 0.5, "testament to": 0.0})
    >>> [(end, phrase) for end, phrase, _ in phrases.find("a tapestry, a testament to it", 0)]
    [(10, 'tapestry'), (26, 'testament to')]

    ```

    Args:
        name: the list's name (reports say which list a ban came from).
        factors: ``{phrase: factor}``, factor in [0, 1] (0: banned outright).
        ignore_case: phrases are lower-cased, and so is the text searched.
    """

    def __init__(self, name: str, factors: dict[str, float], ignore_case: bool = False) -> None:
        self.name, self.ignore_case = name, ignore_case
        automaton = ahocorasick.Automaton()
        stored: dict[str, float] = {}
        for phrase, factor in factors.items():
            key = fold(phrase) if ignore_case else phrase
            # Two phrases that fold alike: the stronger down-weighting holds.
            stored[key] = min(factor, stored.get(key, factor))
        for phrase, factor in stored.items():
            automaton.add_word(phrase, (phrase, factor))
        self.size = len(stored)
        self.longest = max((len(p) for p in stored), default=0)
        if stored:
            automaton.make_automaton()
        self._automaton = automaton

    def find(self, text: str, lo: int):
        """``(end offset, phrase, factor)`` of every phrase occurring in ``text`` that ends at
        or after ``lo`` (``text`` already folded when ``ignore_case``); a phrase ending exactly
        at ``lo`` counts, since a whole word there was waiting for its right boundary."""
        if not self.size:
            return
        window = max(0, lo - self.longest)
        for last, (phrase, factor) in self._automaton.iter(text, window):
            yield last + 1, phrase, factor

    def prefix_from(self, text: str, lo: int, word_starts: bool = False) -> int:
        """The earliest offset ``>= lo`` where the rest of ``text`` is a proper beginning of
        some phrase (``len(text)`` if none); ``word_starts``: only where a word may begin."""
        first = max(lo, len(text) - self.longest + 1)
        for i in range(first, len(text)):
            if word_starts and i > 0 and is_word_char(text[i - 1]):
                continue
            if self._automaton.match(text[i:]):
                return i
        return len(text)


def fold(text: str) -> str:
    """``text`` lower-cased, one character for one, so offsets stay valid (the few characters
    whose lower case is longer, like ``İ``, stay as they are)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def is_word_char(char: str) -> bool:
    """A character of a word, as ``\\w`` matches it."""
    return char.isalnum() or char == "_"


class Bans:
    """Everything one generation must not produce: phrase lists, inline phrases, regexes.

    Args:
        phrase_sets: compiled phrase lists (:class:`PhraseSet`, shared between generations).
        regexes: regular expressions banned outright (``regex`` module syntax).
        whole_words: a literal phrase matches only between word boundaries.
        strength: a phrase with factor ``f`` weighs ``f ** strength`` (the antislop sampler's
            ``adjustment_strength``); 0 makes soft phrases harmless, a large value hard.
        hard: every phrase is banned outright, whatever its factor.
        ignore_case: regexes match case-insensitively (phrase sets carry their own folding).
        compiled: ``regexes`` already compiled by :func:`compile_regexes` (a cache's).
    """

    def __init__(
        self,
        phrase_sets: Sequence[PhraseSet] = (),
        regexes: Sequence[str] = (),
        *,
        whole_words: bool = False,
        strength: float = 1.0,
        hard: bool = False,
        ignore_case: bool = False,
        compiled: regex.Pattern | None = None,
    ) -> None:
        self.phrase_sets = tuple(p for p in phrase_sets if p.size)
        self.whole_words, self.strength, self.hard = whole_words, strength, hard
        if compiled is None and regexes:
            compiled = compile_regexes(regexes, ignore_case)
        self.pattern = compiled
        self.fold = any(p.ignore_case for p in self.phrase_sets)
        if not self.phrase_sets and self.pattern is None:
            raise ValueError("nothing to ban: no phrases and no regexes")

    def weight(self, factor: float) -> float:
        """What a phrase of factor ``factor`` multiplies its first token by."""
        if self.hard or factor <= 0.0:
            return 0.0
        return float(factor) ** self.strength

    def scan(
        self,
        text: str,
        start: int = 0,
        *,
        new_from: int | None = None,
        excused: Collection[tuple[int, tuple[str, str]]] = (),
        at_end: bool = False,
    ) -> BanScan:
        """Look for matches in ``text[start:]`` (text before ``start`` is final).

        ``new_from``: where text not searched before begins (phrases ending before it were
        already seen; ``None``: search it all). ``excused``: ``(start offset, key)`` of soft
        matches already paid for, which stand. ``at_end``: the text is complete, so its end is
        a word boundary (a whole word banned at the very end matches).
        """
        matches: list[BanMatch] = []
        holds = [len(text)]
        folded = fold(text) if self.fold else text
        lo = start if new_from is None else max(start, new_from)
        for phrases in self.phrase_sets:
            haystack = folded if phrases.ignore_case else text
            for end, phrase, factor in phrases.find(haystack, lo):
                begin = end - len(phrase)
                if begin < start:
                    continue
                if self.whole_words:
                    if begin > 0 and is_word_char(text[begin - 1]):
                        continue
                    if end == len(text) and not at_end:
                        holds.append(begin)  # a word that may still go on
                        continue
                    if end < len(text) and is_word_char(text[end]):
                        continue
                weight = self.weight(factor)
                key = (phrases.name, phrase)
                if weight < 1.0 and (begin, key) not in excused:
                    matches.append(BanMatch(begin, end, text[begin:end], weight, key))
            holds.append(phrases.prefix_from(haystack, start, self.whole_words))
        if self.pattern is not None:
            found = next(
                (m for m in self.pattern.finditer(text, start) if m.end() > m.start()), None
            )
            if found is not None:
                key = (INLINE, found.group())
                matches.append(BanMatch(found.start(), found.end(), found.group(), 0.0, key))
            else:
                partial = self.pattern.search(text, start, partial=True)
                if partial is not None:
                    holds.append(min(partial.start(), len(text)))
        if matches:
            first = min(matches, key=lambda m: (m.start, -len(m.text)))
            return BanScan(first, first.start)
        return BanScan(None, min(holds))

    def __repr__(self) -> str:
        lists = ", ".join(f"{p.name} ({p.size})" for p in self.phrase_sets)
        return (
            f"Bans([{lists}], regex={self.pattern is not None}, whole_words={self.whole_words}, "
            f"strength={self.strength}, hard={self.hard})"
        )


def compile_regexes(patterns: Sequence[str], ignore_case: bool = False) -> regex.Pattern:
    """The patterns as one alternation; a pattern that does not compile, or that matches the
    empty string, is a one-line ``ValueError``."""
    alternatives = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("banned regexes must be non-empty strings")
        try:
            compiled = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"invalid banned regex {pattern!r}: {exc}") from None
        if compiled.fullmatch("") is not None:
            raise ValueError(f"banned regex {pattern!r} matches the empty string")
        alternatives.append(f"(?:{pattern})")
    return regex.compile("|".join(alternatives), regex.IGNORECASE if ignore_case else 0)

"""``bad-words``: vLLM's ``bad_words`` rule, as a baseline that never rolls back.

vLLM (``SamplingParams.bad_words``) turns each banned phrase into token sequences (the phrase
as written and with a leading space) and, before every draw, bans the *last* token of a
sequence whose other tokens are the last tokens of the completion. Nothing is ever deleted, so
it cannot catch a phrase tokenised another way than those two (another split, another case,
text that began inside a longer token), and the token before the last is drawn without
knowing it leads nowhere. It is here so that the measurements compare the project's
rollback-based bans with what a user of such a server gets, through the same engine, sampler
and seeds (``scripts/ban_quality.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

from backtrack.engine.banlists import read_ban_file
from backtrack.engine.results import Step
from backtrack.operators.base import Operator


class BadWords(Operator):
    """Ban the last token of a phrase whose other tokens end the completion (vLLM's rule).

    Args:
        file: a ban-list file (text or antislop JSON; factors are ignored: every phrase is
            banned outright, as vLLM's ``bad_words`` has no factors).

    Examples:
        >>> op = BadWords(file="slop.txt")              # doctest: +SKIP
        >>> decoder.generate(prompt, operator=op)        # doctest: +SKIP
    """

    name = "bad-words"
    combinable = False  # it shapes the draw through the session (excluded_tokens)

    def __init__(self, file: str) -> None:
        if not isinstance(file, str) or not file:
            raise ValueError("bad-words needs file=PATH (a ban list)")
        self.file = file
        self.phrases = tuple(read_ban_file(file))  # a bad file fails here, one line
        self._table: dict[tuple[int, ...], frozenset[int]] = {}
        self._lengths: tuple[int, ...] = ()

    def attach(self, session: Any) -> None:
        """Tokenise the phrases with the session's tokenizer (once per tokenizer and list)."""
        self._table, self._lengths = _sequences(_TokenizerKey(session.tokenizer), self.phrases)

    def excluded_tokens(self, generated: Sequence[int]) -> Collection[int]:
        """Tokens the next draw must not give: the last token of every sequence whose other
        tokens end ``generated``."""
        out: set[int] = set()
        for length in self._lengths:
            if length > len(generated):
                break
            tail = tuple(generated[len(generated) - length :]) if length else ()
            out.update(self._table.get(tail, ()))
        return out

    def __call__(self, step: Step) -> int:
        return 0

    def __repr__(self) -> str:
        return f"BadWords(file={self.file!r})"


class _TokenizerKey:
    """A tokenizer, hashed by what decides its tokens (so the table is built once)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), type(tokenizer))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TokenizerKey) and self.key == other.key


@functools.lru_cache(maxsize=8)
def _sequences(
    tokenizer: _TokenizerKey, phrases: tuple[str, ...]
) -> tuple[dict[tuple[int, ...], frozenset[int]], tuple[int, ...]]:
    """``{prefix: last tokens}`` of every phrase variant, and the prefix lengths, shortest
    first."""
    variants = [v for p in phrases for v in (p.lstrip(), " " + p.lstrip()) if v.strip()]
    encoded = tokenizer.tokenizer(variants, add_special_tokens=False)["input_ids"]
    table: dict[tuple[int, ...], set[int]] = {}
    for ids in encoded:
        if ids:
            table.setdefault(tuple(ids[:-1]), set()).add(ids[-1])
    lengths = tuple(sorted({len(prefix) for prefix in table}))
    return {k: frozenset(v) for k, v in table.items()}, lengths

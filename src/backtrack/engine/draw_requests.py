"""What a row's bans can ask of its draw, beyond excluding tokens: one token only
(:class:`Only`), the most likely token whatever the settings (:class:`Greedy`), and soft-ban
weights (:class:`Weighted`). Each is a ``Collection`` of the banned ids, so
:func:`~backtrack.engine.sampling.draw` takes any of them where it takes a set.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Only:
    """A row's bans that exclude every token but ``token``: the draw must give it (an
    operator forcing the next token, :mod:`backtrack.engine.forcing`). Masked as one fill of
    the row, not as a ban set the size of the vocabulary."""

    token: int

    def __contains__(self, token: object) -> bool:
        return token != self.token

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Greedy:
    """A row's bans (``bans``) for a draw that takes the most likely token left, whatever
    the row's sampling settings (an operator's greedy lookahead,
    :mod:`backtrack.engine.forcing`). It uses none of the row's random stream."""

    bans: Collection[int] = ()
    weights: Mapping[int, float] = field(default_factory=dict)

    def __contains__(self, token: object) -> bool:
        return token in self.bans

    def __bool__(self) -> bool:
        return True


@dataclass(frozen=True)
class Weighted:
    """A row's bans (``bans``) and soft-ban ``weights`` (``{token: multiplier in (0, 1)}``):
    each weighted token's probability is multiplied by its weight after the warpers."""

    bans: Collection[int]
    weights: Mapping[int, float]

    def __contains__(self, token: object) -> bool:
        return token in self.bans

    def __iter__(self):
        return iter(self.bans)

    def __len__(self) -> int:
        return len(self.bans)

    def __bool__(self) -> bool:
        return True

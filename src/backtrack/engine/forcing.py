"""Forcing the next draw: the channel an operator uses to explore alternatives.

An operator that explores (:class:`~backtrack.operators.lookahead.Lookahead`) rolls back and
then needs a *particular* token drawn where decoding resumes. It asks through two optional
duck-typed hooks, so every driver of a session (single sequence, batch, server) honours it the
same way, through the one sampler:

- ``attach(session)``: called once by the session after the other hooks, so the operator can
  read what it needs to plan (budget, EOS ids, stop strings) without a copy of them.
- ``forced_token(generated) -> int | None``: asked before every draw with the completion so far;
  a token id makes the draw give that token, whatever the ban policy banned there.
- ``draws_greedily(generated) -> bool``: asked the same way when no token is forced; True
  makes the draw take the most likely token left (after penalties and bans), whatever the
  sampling settings, without using the row's random stream (a greedy lookahead).
- ``excluded_tokens(generated) -> Collection[int]``: tokens the next draw must not give, on top
  of the rejections (a constraint in the spirit of a logits processor: vLLM's ``bad_words``
  rule, :class:`~backtrack.operators.bad_words.BadWords`).

Forcing overrides the bans of ``GenerationConfig.ban``: an operator that explores candidates
one after the other deletes each (which bans it where decoding resumes) and then forces the
best one back, so the forced token is usually among the banned. It does not override a banned
string: a token that began a banned string stays banned (the guarantee), and the draw is then
an ordinary one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from backtrack.engine.draw_requests import Greedy, Only, Weighted
from backtrack.engine.positions import Rejections


def attach(operator: Any, session: Any) -> None:
    """Let ``operator`` see the ``session`` it decodes in, if it asks to."""
    hook = getattr(operator, "attach", None)
    if hook is not None:
        hook(session)


def bans_at(operator: Any, generated: Sequence[int], rejections: Rejections) -> Collection[int]:
    """What the draw at position ``len(generated)`` excludes: the rejections there, or every
    token but the one ``operator`` forces (an :class:`~backtrack.engine.sampling.Only`); as a
    :class:`~backtrack.engine.sampling.Greedy` when ``operator`` asks for a greedy draw."""
    position = len(generated)
    hook = getattr(operator, "forced_token", None)
    forced = hook(generated) if hook is not None else None
    if forced is not None and forced not in rejections.banned_strings_at(position):
        return Only(int(forced))  # type: ignore[return-value]  # a Collection for the sampler
    banned = rejections.banned_at(position)
    excluded = getattr(operator, "excluded_tokens", None)
    if excluded is not None and (also := excluded(generated)):
        banned = {*banned, *also}  # an operator's constraint on the draw (bad-words)
    weights = rejections.weights_at(position)
    greedy = getattr(operator, "draws_greedily", None)
    if greedy is not None and greedy(generated):
        return Greedy(banned, weights)  # type: ignore[return-value]
    return Weighted(banned, weights) if weights else banned  # type: ignore[return-value]

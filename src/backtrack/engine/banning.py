"""How a decoding session enforces its bans after every token: hard and soft, exactly.

After each token the session asks its :class:`BanGuard` to look at the text that is new (a
window of it: :meth:`~backtrack.engine.banned.Bans.scan`). On a complete match that begins at
character ``a``, in the token at position ``p``:

- **hard** (weight 0: inline phrases and regexes, text lists, ``ban_hard``, factor 0): roll back
  to ``p`` and ban that token there (it cannot come straight back; the dead-end rewind below
  keeps the prefix continuable);
- **soft** (weight ``w = f ** strength`` in (0, 1)): roll back to ``p`` and multiply that
  token's probability at ``p`` by ``w``, then draw again there. The draw's distribution is the
  one decoding would draw from at ``p``, times ``w`` for that token, renormalised (several soft
  bans of one token at one position multiply). The phrase, begun by that token at ``p``, is then
  paid for: if the draw picks the token again and the phrase comes back, it stands. So a phrase
  of factor ``f`` survives with the probability a single draw gives it once its first token is
  down-weighted by ``w``, no lower, and soft bans never loop.

Both roll back whatever the operator, ``period``, retry cap or budget (a ban is a guarantee,
not a heuristic; the forward-pass cap still ends decoding), never into text already final.

How this differs from the antislop sampler's own rule (its ``SlopPhraseHandler``): it matches
token sequences of six case and space variants of each phrase, down-weights *every* token that
begins any variant at that position, and keeps the phrase without resampling when the
down-weighted token is still the most likely one (an argmax test, at any temperature). Here a
phrase is matched in the text (any tokenisation, any case with ``ignore_case``, between word
boundaries with ``whole_words``), only the token that actually began it is down-weighted, and
the new token is *drawn* from the down-weighted distribution (at temperature 0 that is the
argmax of the down-weighted probabilities, the sampler's test).

When the text is complete (EOS, a stop string, the length limit), a whole word banned at its
very end has its right boundary, so the guard looks once more before decoding may finish.
"""

from __future__ import annotations

from typing import Any

from backtrack.engine.banned import MAX_BAN_REWIND, BanMatch, Bans, BanScan
from backtrack.engine.positions import Rejections


class BanGuard:
    """A session's bans and what they hold back.

    Args:
        bans: the compiled bans (:meth:`~backtrack.engine.settings.GenerationConfig.bans`).
        rejections: the session's per-position bookkeeping (hard bans, soft weights).
    """

    def __init__(self, bans: Bans, rejections: Rejections) -> None:
        self.bans = bans
        self.rejections = rejections
        # The first token a banned phrase could still begin at (from the last scan).
        self.hold = 0
        # How much of the text the last scan saw: phrases ending before it were seen then.
        self._seen = 0

    def enforce(self, session: Any, *, at_end: bool = False) -> int:
        """Roll back a banned match the last token completed (tokens deleted), and update
        what the bans hold back. ``at_end``: the text is complete (decoding is about to
        finish), so a whole word at its very end has its right boundary."""
        found = self._scan(session, at_end)
        deleted = 0
        if found.match is not None:
            deleted = self._roll_back(session, found.match)
            if deleted:  # what is left is a prefix that held no complete match
                found = self._scan(session, at_end=False)
        self.hold = session._undo.token_at(found.hold_from, len(session.text))
        self._seen = len(session.text)
        return deleted

    def _roll_back(self, session: Any, match: BanMatch) -> int:
        """Roll back to the token where ``match`` begins: banned there (hard) or down-weighted
        there (soft); the tokens deleted."""
        keep = max(session._undo.token_at(match.start, len(session.text)), session._final)
        if keep >= len(session.completion):
            return 0
        token = session.completion[keep]
        kind = "hard" if match.hard else "soft"
        deleted = session.rollback(len(session.completion) - keep, "banned-string", kind=kind,
                                   banned=match, reuse=True)  # fmt: skip
        if not deleted:
            return 0
        session.counts.ban_rollbacks += 1
        if match.hard:
            deleted += rewind_dead_ends(session, self.rejections)
            if self.rejections.exhausted(len(session.completion), session.vocab_size):
                session.forget_reuse()  # a dead end left: each draw must cost a pass
            return deleted
        session.counts.soft_ban_rollbacks += 1
        self.rejections.weigh(keep, token, match.weight, (match.start, match.key))
        return deleted

    def _scan(self, session: Any, at_end: bool) -> BanScan:
        """The bans' scan of the text not final yet, with the soft bans paid for excused."""
        excused = {
            paid
            for position, pairs in self.rejections.excused_items()
            if position >= session._final
            for token, paid in pairs
            if position < len(session.completion) and session.completion[position] == token
        }
        return self.bans.scan(
            session.text,
            session.text_offset(session._final),
            new_from=min(self._seen, len(session.text)),
            excused=excused,
            at_end=at_end,
        )

    def rolled_back(self, text_length: int) -> None:
        """The text was cut to ``text_length`` characters (a rollback)."""
        self._seen = min(self._seen, text_length)


def rewind_dead_ends(session: Any, rejections: Rejections) -> int:
    """After a hard ban's rollback: while every token is banned where decoding resumes (a
    dead end), delete one more token, banned at its own position, at most
    :data:`~backtrack.engine.banned.MAX_BAN_REWIND` deep and never into final text; return
    how many tokens went. ``session``: the :class:`~backtrack.engine.session.DecodingSession`.
    """
    deleted = 0
    for _ in range(MAX_BAN_REWIND):
        if not rejections.exhausted(len(session.completion), session.vocab_size):
            break
        if not session.rollback(1, "banned-string", kind="hard"):
            break  # the text before it is final
        deleted += 1
    return deleted

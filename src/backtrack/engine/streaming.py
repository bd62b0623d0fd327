"""Streaming a session's text as it becomes final (:class:`CommittedText`)."""

from __future__ import annotations

from backtrack.engine.session import DecodingSession


class CommittedText:
    """A session's text, handed out piece by piece as it becomes final (for streaming).

    A token is final once no rollback can delete it (:meth:`DecodingSession.committed_length`:
    behind the rollback window or beyond the budget, and clear of any banned string that could
    still grow); text that could still turn out to be the start of a stop string is held back
    too. So the pieces concatenate to exactly the result's text, and nothing handed out is
    ever deleted. Every streaming path (``Decoder.stream_text``, the server) uses this.
    """

    def __init__(self, session: DecodingSession) -> None:
        self.session = session
        self.sent = 0  # characters handed out
        self._hold = max((len(s) for s in session.config.stop), default=1) - 1

    def new(self) -> str:
        """The text that became final since the last call (``""`` if none)."""
        session = self.session
        if session.done:
            return self.rest()
        committed = session.committed_length()
        if committed <= 0:
            return ""
        upto = min(session.text_offset(committed), len(session.text) - self._hold)
        if upto <= self.sent:
            return ""
        piece, self.sent = session.text[self.sent : upto], upto
        return piece

    def rest(self) -> str:
        """After the end: whatever of the final text was not handed out yet."""
        final = self.session.final_text()
        piece, self.sent = final[self.sent :], max(self.sent, len(final))
        return piece

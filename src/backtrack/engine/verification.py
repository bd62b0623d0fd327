"""Checking a finished completion, and repairing it locally: the engine's side of operators
that verify (the ``examples`` operator runs the prompt's visible examples).

When a session is about to finish (EOS, a stop string, the length limit), an operator with a
``verify(text)`` method may return a future of a :class:`Verdict` instead of letting it finish.
The session then waits, holding no forward pass: a single session blocks on the future, a
batch row simply sits out the batch's forward passes until the verdict is there, so checks
overlap with the other rows' decoding (:meth:`BatchRun.turn`). When the verdict comes:

* passed: the session finishes as it was going to;
* failed: the operator's ``repair(verdict, attempt)`` says how many of the last tokens to
  delete. The rollback is forced (like a banned string's: the first deleted token stays
  banned where decoding resumes, whatever ``GenerationConfig.ban`` says, so the repair cannot
  redraw it), and decoding goes on from the shorter prefix; the next finish is checked again;
* failed and ``repair`` returns 0 (it gave up): the session finishes with the best attempt
  it checked (the highest :attr:`Verdict.score`, the earliest on ties), which may be an
  earlier one. The best attempt is also what a session ends with when the forward-pass budget
  runs out in the middle of a repair.

Switching to an earlier attempt is recorded in the trace as a rollback (source
``best-attempt``) followed by that attempt's tokens, so replaying the trace still gives the
final text. The KV cache is not rebuilt for it: decoding has finished, and nothing reads the
cache after that.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from backtrack.engine.results import FinishReason, RollbackEvent, TokenEvent

# The session imports this module, so the functions below take it untyped (no import back).
DecodingSession = Any


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one finished completion.

    ``score`` ranks attempts (higher is better; e.g. the number of examples passed);
    ``detail`` is for the trace and the records.
    """

    passed: bool
    score: float
    detail: str = ""


@dataclass(frozen=True)
class Attempt:
    """A finished completion as a repair sees it.

    ``starts[i]``: where token ``i``'s text starts in ``text`` (the completion text as decoded
    so far, stop string included); ``checked_length``: how much of ``text`` the check saw
    (up to the stop string); ``first_editable``: the first position a repair may delete
    (text before it is final).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    starts: tuple[int, ...]
    text: str
    checked_length: int
    first_editable: int


@dataclass
class _Snapshot:
    completion: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: FinishReason
    stop_string: str | None
    score: float


@dataclass
class CheckState:
    """A session's checks: the one in flight, what finishing was held for it, the best
    attempt so far, and the time spent waiting."""

    pending: Future | None = None
    held: tuple[FinishReason, str | None] | None = None
    best: _Snapshot | None = None
    waited_s: float = 0.0
    started: float = field(default=0.0, repr=False)


def start_check(session: DecodingSession) -> bool:
    """The session just met a stop condition: ask its operator to verify the completion.

    True when decoding has finished (nothing to verify); False when a check is in flight.
    """
    verify = getattr(session.operator, "verify", None)
    if verify is None or session.finish_reason is None:
        return True
    future = verify(session.final_text())
    if future is None:  # nothing to check this completion against
        return True
    state = session.check
    state.pending, state.held = future, (session.finish_reason, session.stop_string)
    state.started = time.perf_counter()
    session.finish_reason = None
    session.counts.checks += 1
    return False


def check_ready(session: DecodingSession) -> bool:
    """Whether the session's check in flight has its verdict."""
    pending = session.check.pending
    return pending is not None and pending.done()


def settle_check(session: DecodingSession) -> bool:
    """Act on the verdict of the check in flight (waiting for it if needed); True when
    decoding has finished."""
    state = session.check
    assert state.pending is not None and state.held is not None
    verdict: Verdict = state.pending.result()
    state.waited_s += time.perf_counter() - state.started
    session.counts.check_wait_s = state.waited_s
    reason, stop_string = state.held
    state.pending = state.held = None
    session.stop_string = stop_string
    if state.best is None or verdict.score > state.best.score:
        state.best = _Snapshot(
            list(session.completion),
            list(session.logprobs),
            [list(top) for top in session.top_logprobs],
            reason,
            stop_string,
            verdict.score,
        )
    if verdict.passed:
        session._finish(reason)
        return True
    k = session.operator.repair(verdict, attempt_of(session))
    if k > 0 and session.rollback(k, session.operator.name, kind="hard"):
        session.stop_string = None
        return not session.advance()
    restore_best(session)
    session._finish(state.best.finish_reason)
    return True


def attempt_of(session: DecodingSession) -> Attempt:
    """The session's completion, as :meth:`repair` sees it."""
    n = len(session.completion)
    return Attempt(
        token_ids=tuple(session.completion),
        logprobs=tuple(session.logprobs),
        starts=tuple(session.text_offset(i) for i in range(n)),
        text=session.text,
        checked_length=len(session.final_text()),
        first_editable=session._final,
    )


def restore_best(session: DecodingSession) -> None:
    """Make the best checked attempt the session's completion (see the module docstring)."""
    best = session.check.best
    if best is None or best.completion == session.completion:
        return
    keep = 0
    for mine, theirs in zip(session.completion, best.completion, strict=False):
        if mine != theirs:
            break
        keep += 1
    tail: Any = session.completion[keep:]
    if tail:
        restore = session._undo.truncate(keep)
        removed_text = session.text[restore.text_len :]
        session._detok, session.text = restore.detok_state, session.text[: restore.text_len]
        del session.completion[keep:], session.logprobs[keep:], session.top_logprobs[keep:]
        event = RollbackEvent(keep, len(tail), removed_text, tuple(tail), "best-attempt")
        session.trace.append(event)
    for position in range(keep, len(best.completion)):
        token, logprob = best.completion[position], best.logprobs[position]
        session.completion.append(token)
        session.logprobs.append(logprob)
        if best.top_logprobs:
            session.top_logprobs.append(best.top_logprobs[position])
        piece, session._detok = session.detokenizer.next_piece(session.completion, session._detok)
        session.text += piece
        session.trace.append(TokenEvent(position, token, piece, math.exp(logprob)))
    session.stop_string = best.stop_string

"""Lookahead: at an uncertain step, decode each top candidate a few tokens ahead, keep the best.

This is AdaDec's execution-free lookahead (entropy-gated token choice) as a backtracking
operator. When the entropy of the distribution a token was drawn from exceeds ``threshold``,
the operator takes the ``m`` most likely tokens of that distribution as candidates and, one
after the other, puts each at that position, lets decoding run ``length - 1`` tokens further,
scores the candidate by the mean raw log-probability of those ``length`` tokens and rolls
them back; then it puts the best-scoring candidate there for good and decoding goes on.

Everything is ordinary decoding: the lookahead tokens are drawn by the session's one sampler
(greedily by default, as AdaDec does, through the engine's greedy-draw request; with the
session's own sampling settings under ``greedy=False``), deleted by the session's exact
rollbacks, and counted as sampled and discarded tokens and forward passes. In a batch, a
row that explores keeps taking one step per batched forward pass like every other row. The
candidate at the uncertain position is put there through the engine's forcing channel
(:mod:`backtrack.engine.forcing`), which overrides the ban the rollback left on it.

Two shortcuts save work without changing which token is chosen: the token actually drawn, if
it is a candidate, is explored first where it stands (nothing to delete), and the last
candidate explored, if it wins, keeps its lookahead instead of decoding it again.

Bookkeeping: the engine rolls the operator's ``state`` back with every rollback, and each
exploration ends in one, so what an exploration learned lives outside the rolled-back state
(in ``self._exploration``), tied to the position and the prefix it explores; any step that does
not continue it (a banned-string rollback, a clamped rollback) abandons it, and the tokens in
place stay as ordinarily decoded text. The operator keeps no rolled-back state at all.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backtrack.engine.results import Step
from backtrack.engine.settings import GenerationConfig
from backtrack.engine.text import find_stop
from backtrack.operators.base import Operator


@dataclass(frozen=True)
class LookaheadChoice:
    """One finished exploration: at ``position``, each candidate's mean lookahead log-probability
    (``scores``, in the candidates' order) and the token kept."""

    position: int
    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    chosen: int


@dataclass
class _Exploration:
    """An exploration in progress at ``anchor`` (mutable; outside the rolled-back state)."""

    anchor: int
    prefix: list[int]  # the completion before the anchor, which the exploration belongs to
    candidates: tuple[int, ...]
    anchor_logprobs: tuple[float, ...]  # each candidate's raw log-probability at the anchor
    current: int  # index of the candidate being explored
    todo: list[int]  # indices of the candidates still to explore, in order
    logprobs: list[float] = field(default_factory=list)  # the current lookahead's, after anchor
    scores: dict[int, float] = field(default_factory=dict)
    best: int | None = None  # set once every candidate is scored and the best is being forced


class Lookahead(Operator):
    """At a step whose entropy exceeds ``threshold``, try the top ``m`` tokens, each decoded
    ``length`` tokens ahead, and keep the one whose lookahead has the highest mean raw
    log-probability (AdaDec-style, execution-free).

    It must be the session's own operator (not combined with ``+``): it forces tokens through
    the session and reads its budget. It needs ``period=1`` (it scores every lookahead token),
    and explores only when the backtracking budget still covers a whole exploration (at most
    ``1 + m * length`` deleted tokens), so a budget never cuts one short.

    Args:
        threshold: entropy (nats) of the sampled distribution above which to explore, >= 0.
            Default 1.0.
        m: candidates to try, >= 2 (fewer if the distribution has fewer tokens). Default 2.
        length: tokens each candidate is scored on, itself included, >= 1. Default 4.
        greedy: draw the ``length - 1`` tokens after a candidate greedily (AdaDec), whatever
            the sampling settings; False draws them as any other token. Default True.

    Attributes:
        explored: every exploration finished in this generation, as :class:`LookaheadChoice`.

    Examples:
        >>> from backtrack.engine import GenerationConfig, generate
        >>> from backtrack.models.tiny import build_tiny_model
        >>> model, tokenizer = build_tiny_model()
        >>> op = Lookahead(threshold=1.0, m=2, length=3)
        >>> config = GenerationConfig(max_new_tokens=12, temperature=0)
        >>> result = generate(model, tokenizer, "def add(a, b):", op, config)
        >>> choice = op.explored[0]
        >>> result.token_ids[choice.position] == choice.chosen
        True
        >>> choice.chosen == choice.candidates[choice.scores.index(max(choice.scores))]
        True
        >>> Lookahead(m=1)
        Traceback (most recent call last):
        ...
        ValueError: m (candidates) must be an integer >= 2, got 1
    """

    name = "lookahead"
    combinable = False  # it forces tokens through the session: AnyOf refuses it

    def __init__(
        self, threshold: float = 1.0, m: int = 2, length: int = 4, greedy: bool = True
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"threshold must be a number of nats >= 0, got {threshold!r}")
        if not (math.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold must be a number of nats >= 0, got {threshold!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise ValueError(f"m (candidates) must be an integer >= 2, got {m!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length (lookahead tokens) must be an integer >= 1, got {length!r}")
        if not isinstance(greedy, bool):
            raise ValueError(f"greedy must be true or false, got {greedy!r}")
        self.threshold = float(threshold)
        self.greedy = greedy
        self.m = m
        self.length = length
        self._session: Any = None
        self._exploration: _Exploration | None = None
        self.explored: list[LookaheadChoice] = []

    # ------------------------------------------------------------------ engine hooks
    def reset(self) -> None:
        super().reset()
        self._session = None
        self._exploration = None
        self.explored = []

    def check_config(self, config: GenerationConfig) -> None:
        if config.period != 1:
            raise ValueError(
                f"the lookahead operator needs period=1 (it scores every lookahead token), "
                f"got period={config.period}"
            )
        window = config.rollback_window
        if window is not None and window < self.length:
            raise ValueError(
                f"the lookahead operator needs rollback_window >= length ({self.length}), "
                f"got {window}"
            )

    def attach(self, session: Any) -> None:
        """Called by the session (:mod:`backtrack.engine.forcing`); kept weakly, so a finished
        session's cache is not kept alive by the operator."""
        self._session = weakref.ref(session)

    def forced_token(self, generated: Sequence[int]) -> int | None:
        """The candidate to draw at the explored position, when decoding is back there."""
        x = self._exploration
        if x is None or len(generated) != x.anchor or list(generated) != x.prefix:
            return None
        return x.candidates[x.best if x.best is not None else x.current]

    def draws_greedily(self, generated: Sequence[int]) -> bool:
        """Whether the draw at ``len(generated)`` continues a candidate's lookahead (with
        ``greedy``, such draws take the most likely token)."""
        x = self._exploration
        if not self.greedy or x is None or x.best is not None:
            return False
        p = x.anchor
        return (
            p < len(generated) < p + self.length
            and generated[p] == x.candidates[x.current]
            and list(generated[:p]) == x.prefix
        )

    # ------------------------------------------------------------------ decisions
    def __call__(self, step: Step) -> int:
        session = self._session() if self._session is not None else None
        if session is None:
            raise RuntimeError(
                "the lookahead operator must be the session's own operator (it forces "
                "tokens through the session, which attaches it)"
            )
        if self._exploration is not None:
            k = self._continue(self._exploration, step, session)
            if k is not None:
                return k
        if step.entropy > self.threshold:
            return self._start(step, session)
        return 0

    def _start(self, step: Step, session: Any) -> int:
        probs = step.probs
        values, ids = torch.topk(probs, min(self.m, probs.shape[-1]))
        candidates = tuple(
            int(i) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v > 0
        )
        if len(candidates) < 2 or not self._affordable(session):
            return 0
        # The engine's formula for a raw log-probability (logit - logsumexp), as Step.logprob.
        logits = step.logits.float()
        lse = torch.logsumexp(logits, dim=-1)
        anchor_logprobs = tuple(float(logits[c] - lse) for c in candidates)
        drawn = step.token_id
        order = sorted(range(len(candidates)), key=lambda i: candidates[i] != drawn)
        x = _Exploration(
            anchor=step.position,
            prefix=list(step.generated[: step.position]),
            candidates=candidates,
            anchor_logprobs=anchor_logprobs,
            current=order[0],
            todo=order[1:],
        )
        if self.length == 1:  # nothing to decode ahead: the scores are the log-probabilities
            x.scores = dict(enumerate(anchor_logprobs))
            return self._settle(x, keep_current=candidates[order[0]] == drawn)
        self._exploration = x
        return 0 if candidates[x.current] == drawn else 1

    def _continue(self, x: _Exploration, step: Step, session: Any) -> int | None:
        """The decision for a step of exploration ``x``; None when ``step`` is not one (``x``
        is then dropped and the step judged like any other)."""
        p, q, generated = x.anchor, step.position, step.generated
        on_track = p <= q == len(generated) - 1 and list(generated[:p]) == x.prefix
        if x.best is not None:
            self._exploration = None
            # The best candidate is back at the anchor: settled, whatever its entropy. (When
            # the anchor was not consulted, its retries spent, the next step is a new one.)
            return 0 if on_track and q == p and generated[p] == x.candidates[x.best] else None
        expected = p + 1 + len(x.logprobs)
        if not on_track or generated[p] != x.candidates[x.current] or q not in (p, expected):
            self._exploration = None
            return None
        if q == p:
            return 0  # the forced candidate itself; its log-probability is known already
        x.logprobs.append(step.logprob)
        if len(x.logprobs) < self.length - 1 and not self._stops(step, session):
            return 0
        # A lookahead that ends the completion (EOS, stop string, length) is scored as is.
        x.scores[x.current] = (x.anchor_logprobs[x.current] + sum(x.logprobs)) / (
            1 + len(x.logprobs)
        )
        if x.todo:
            x.current, x.logprobs = x.todo.pop(0), []
            return q - p + 1
        return self._settle(x, keep_current=True, delete=q - p + 1)

    def _settle(self, x: _Exploration, keep_current: bool, delete: int = 1) -> int:
        """Every candidate is scored: keep the best (ties to the more likely candidate)."""
        scores = tuple(x.scores[i] for i in range(len(x.candidates)))
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        self.explored.append(LookaheadChoice(x.anchor, x.candidates, scores, x.candidates[best]))
        if keep_current and best == x.current:
            self._exploration = None  # what is in place already starts with the best
            return 0
        x.best = best
        self._exploration = x
        return delete

    def _affordable(self, session: Any) -> bool:
        """Whether the budget covers a whole exploration: the budget terms of
        ``DecodingSession.rollback_allowance`` for ``1 + m * length`` deleted tokens (the window
        is checked once, in :meth:`check_config`)."""
        budget, counts, config = session.budget, session.counts, session.config
        need = 1 + self.m * self.length
        regrow = config.max_new_tokens - len(session.completion)
        spare_forward = budget.max_forward_passes - counts.forward_passes - regrow
        return (
            counts.backtracks + self.m + 1 <= budget.max_backtracks
            and budget.max_discarded_tokens - counts.tokens_discarded >= need
            and spare_forward >= need
        )

    @staticmethod
    def _stops(step: Step, session: Any) -> bool:
        """Whether keeping ``step``'s token would end decoding (``DecodingSession.check_stop``'s
        conditions), so a lookahead must end there."""
        config = session.config
        if step.token_id in session.eos_ids or len(step.generated) >= config.max_new_tokens:
            return True
        stop = config.stop
        offset = session.text_offset(step.position)
        return bool(stop) and find_stop(step.completion, offset, stop) is not None

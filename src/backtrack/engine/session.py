"""One sequence being decoded, with exact rollback.

One class in three files: the completion's side here (the draw, the decision, rolling back
ids, text, operator state and bookkeeping in lockstep), the model's side in
:mod:`backtrack.engine.feeding` (forward passes; the KV cache, cropped by exactly what a
rollback deletes, never recomputed) and the end in :mod:`backtrack.engine.finishing`.

Alongside the ids and the cache, the session keeps, for every completion position, what must
be put back when that position is deleted (the operator's state and the detokenizer's window)
and what was already rejected there (:mod:`backtrack.engine.positions`).

The loop, once for every driver
-------------------------------
One turn of decoding is::

    sample()                      # run the queued forward pass if needed, draw, append
    k = decision about that token # the operator (decide), an RL agent, or 0
    conclude(k)                   # roll back k, or else check the stop conditions;
                                  # then queue the next forward pass (or finish)

:meth:`step` is that turn with the session's own operator; :meth:`run` repeats it and yields
every event. The batch decoder calls :meth:`step` for each row after handing it the row's
token drawn from one batched forward pass (:meth:`receive_draw`), and the RL environment calls
:meth:`sample` and :meth:`conclude` with the agent's action in between. The forward pass is
*queued* by :meth:`advance` and run lazily by :meth:`sample`, so a driver that computes it
elsewhere (the batch) needs no override.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backtrack.backends.base import SequenceCache, as_backend
from backtrack.engine.banning import BanGuard
from backtrack.engine.feeding import Feeding
from backtrack.engine.finishing import Finishing
from backtrack.engine.forcing import attach, bans_at
from backtrack.engine.positions import Rejections, UndoLog, UndoRecord
from backtrack.engine.prompt import encode_prompt, eos_ids_for
from backtrack.engine.results import (
    Counts,
    Event,
    FinishReason,
    RollbackEvent,
    Step,
    TokenEvent,
)
from backtrack.engine.reuse import LogitMemory
from backtrack.engine.sampling import Draws, Sampler, draw
from backtrack.engine.settings import Budget, GenerationConfig
from backtrack.engine.text import DetokState, IncrementalDetokenizer
from backtrack.engine.verification import CheckState, settle_check, start_check


@dataclass
class DecodingSession(Feeding, Finishing):
    """Decode one sequence step by step; roll back exactly.

    Most users call :func:`backtrack.engine.generate`. The RL environment drives a session
    directly: :meth:`sample` one token, then :meth:`conclude` with the agent's action.

    Sampling draws from ``generator`` when given; otherwise from a ``torch.Generator`` seeded
    with ``config.seed`` when that is set (the same draws as ``torch.manual_seed(seed)`` and
    ``model.generate``, isolated from anything else that uses torch's global RNG, e.g. a
    policy sampling its actions), else from the global RNG.
    """

    model: Any
    tokenizer: Any
    prompt_ids: list[int]
    config: GenerationConfig
    operator: Any = None  # backtrack.operators.Operator, or None for plain decoding
    eos_ids: frozenset[int] = frozenset()
    detokenizer: IncrementalDetokenizer | None = None
    generator: torch.Generator | None = None

    completion: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    # Per completion token, its position's raw top alternatives (config.top_logprobs of them).
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    counts: Counts = field(default_factory=Counts)
    finish_reason: FinishReason | None = None
    stop_string: str | None = None
    trace: list[Event] = field(default_factory=list)

    @classmethod
    def for_prompt(
        cls,
        model,
        tokenizer,
        prompt: str | Sequence[int],
        operator: Any = None,
        config: GenerationConfig | None = None,
        **fields: Any,
    ) -> DecodingSession:
        """A session for ``prompt`` (text or ids), with the EOS ids for this model and config.

        ``fields``: other constructor fields (a shared ``detokenizer``, a ``generator``).
        """
        config = config or GenerationConfig()
        return cls(
            model=model,
            tokenizer=tokenizer,
            prompt_ids=encode_prompt(tokenizer, prompt),
            config=config,
            operator=operator,
            eos_ids=eos_ids_for(model, tokenizer, config),
            **fields,
        )

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("the prompt must contain at least one token")
        self.budget: Budget = self.config.budget.resolve(self.config.max_new_tokens)
        self.backend = as_backend(self.model)
        self.device = self.backend.device
        if self.generator is None and self.config.seed is not None:
            self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self.sampler = Sampler(
            self.config,
            self.generator,
            match_generate=self.backend.matches_generate,
            history=(self.prompt_ids, self.completion),
            tokenizer=self.tokenizer,
        )
        # Opened by prefill() (a batch row gets a view of the batch's caches instead).
        self.cache: SequenceCache | None = None
        if self.detokenizer is None:
            self.detokenizer = IncrementalDetokenizer(self.tokenizer)
        self._undo = UndoLog()
        self.check = CheckState()  # an operator's check of a finished completion (verification)
        self._rejections = Rejections(self.config.ban)
        self.bans = self.config.bans()
        # Enforces the bans after every token (engine/banning.py); None without bans.
        self.guard = BanGuard(self.bans, self._rejections) if self.bans is not None else None
        # What a ban's rollback reuses instead of recomputing (engine/reuse.py).
        self.memory = LogitMemory() if self.guard is not None else None
        # The high-water mark of committed_length(): nothing before it is ever deleted again.
        self._final = 0
        self.vocab_size: int | None = None  # known from the first draw
        self.furthest = 0  # the longest the completion has been (the window's reference)
        self._detok = DetokState()
        self._next_logits: torch.Tensor | None = None
        # A draw made elsewhere for this session (the batch draws every row at once).
        self._drawn: tuple[Draws, int] | None = None
        self.pending_token: int | None = None  # the token whose pass is queued (advance)
        self._start = time.perf_counter()
        if self.operator is not None:
            self.operator.reset()
            for hook in ("check_config", "begin"):  # duck-typed operators may lack them
                method = getattr(self.operator, hook, None)
                if method is not None:
                    method(self.config)
            set_prompt = getattr(self.operator, "set_prompt", None)
            if set_prompt is not None:
                set_prompt(self.detokenizer.decode(self.prompt_ids))
            attach(self.operator, self)  # for operators that force tokens (engine/forcing.py)

    def banned_now(self) -> Collection[int]:
        """Token ids banned at the position about to be sampled (all but one where the
        operator forces the token: :mod:`backtrack.engine.forcing`)."""
        return bans_at(self.operator, self.completion, self._rejections)

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def sample(self) -> Step:
        """Sample the next token from the current distribution and append it."""
        if self._drawn is None:
            if self._next_logits is None and self.pending_token is not None:
                self.receive_logits(self._forward([self.pending_token]))
            assert self._next_logits is not None, "call prefill() first"
            self._drawn = (draw(self._next_logits, [self.sampler], [self.banned_now()]), 0)
        draws, row = self._drawn
        self._drawn = None
        self.vocab_size = draws.logits.shape[-1]
        position = len(self.completion)
        self._rejections.drawn(position)
        token = int(draws.tokens[row])
        if self.memory is not None:
            self.memory.remember(position, draws.logits[row])
        prow = draws.probs[row]
        prob = float(prow[token])
        logprob = float(draws.logprob[row])

        self._undo.push(
            UndoRecord(
                self.operator.get_state() if self.operator is not None else None,
                self._detok,
                len(self.text),
            )
        )
        self.completion.append(token)
        self.furthest = max(self.furthest, len(self.completion))
        self.logprobs.append(logprob)
        if n := self.config.top_logprobs:  # the batch's draws hold the most any row asked for
            assert draws.top_ids is not None and draws.top_logprobs is not None
            ids, values = draws.top_ids[row, :n].tolist(), draws.top_logprobs[row, :n].tolist()
            top = zip(ids, values, strict=True)
            self.top_logprobs.append(list(top))
        piece, self._detok = self.detokenizer.next_piece(self.completion, self._detok)
        self.text += piece
        self.counts.tokens_sampled += 1
        self._next_logits = None
        if self.memory is not None and self.memory.ahead:
            self._follow_ahead(token, position)
        self.trace.append(TokenEvent(position, token, piece, prob))
        return Step(
            position=position,
            token_id=token,
            text=piece,
            prob=prob,
            logprob=logprob,
            logit=float(draws.logit[row]),
            rank=int(draws.rank[row]),
            entropy=float(draws.entropy[row]),
            top1_prob=float(draws.top1[row]),
            top2_prob=float(draws.top2[row]),
            logits=draws.logits[row],
            probs=prow,
            generated=self.completion,
            completion=self.text,
        )

    # ------------------------------------------------------------------ backtracking
    def rollback_allowance(self) -> int:
        """Most tokens a rollback may delete now (0 once any budget is spent).

        Besides the backtrack and discard budgets and the rollback window, a rollback must
        leave enough forward passes to regrow the completion to ``max_new_tokens``, so the
        hard cap never cuts a completion short because of backtracking. Each bound only
        moves the deepest deletable position forward, never back, so
        ``len(completion) - rollback_allowance()`` (what is final) never decreases.
        """
        if self.counts.backtracks >= self.budget.max_backtracks:
            return 0
        regrow = self.config.max_new_tokens - len(self.completion)
        spare_forward = self.budget.max_forward_passes - self.counts.forward_passes - regrow
        window = self.config.rollback_window
        floor = 0 if window is None else max(0, self.furthest - window)
        return max(
            0,
            min(
                len(self.completion) - floor,
                self.budget.max_discarded_tokens - self.counts.tokens_discarded,
                spare_forward,
            ),
        )

    def committed_length(self) -> int:
        """How many completion tokens are final: no rollback can delete them any more.

        Without an operator nothing is ever deleted (a driver that rolls back without one,
        like the RL environment, should not stream from this). With banned strings, the text
        that could still grow into a banned match is held back too, and what was once final
        stays final (a ban rollback never reaches behind it)."""
        if self.operator is None:
            final = len(self.completion)
        elif hasattr(self.operator, "verify"):  # a failed check may repair anything not final
            final = self._final
        else:
            final = len(self.completion) - self.rollback_allowance()
        if self.guard is not None:
            final = max(self._final, min(final, self.guard.hold))
        return final

    def consult_due(self) -> bool:
        """Whether the operator (or an RL agent) decides after the token just sampled.

        Every ``period`` tokens, while the budget allows a rollback and the position has not
        used up its retries (``GenerationConfig.max_retries_per_position``). Every driver of a
        session (``run``, the batch engine, the RL environment) asks this same question.
        """
        n = len(self.completion)
        if n == 0 or n % self.config.period or self.rollback_allowance() == 0:
            return False
        cap = self.config.max_retries_per_position
        return cap is None or self._rejections.retries(n - 1) < cap

    def decide(self, step: Step) -> int:
        """The session's operator's decision about ``step``: its ``k`` when due, else 0."""
        if self.operator is None or not self.consult_due():
            return 0
        return self.operator(step)

    def conclude(self, k: int, source: str | None = None) -> bool:
        """Act on the decision about the token just sampled; True once decoding has finished.

        Roll back ``k`` tokens (clamped to what is allowed); if nothing was deleted, the kept
        token may end decoding (EOS, stop string, length). Otherwise queue the next forward
        pass, which can still finish decoding when the forward-pass budget is spent.
        ``source`` names who decided, for the trace (default: the operator's name).
        """
        if source is None:
            source = self.operator.name if self.operator is not None else "operator"
        deleted = self.rollback(k, source) if k else 0
        if self.guard is not None:
            deleted += self.guard.enforce(self)
            self._final = self.committed_length()
        if not deleted and (stop := self.stop_reason()) is not None:
            # The text is complete: a whole word banned at its very end has its boundary now.
            if self.guard is not None and self.guard.enforce(self, at_end=True):
                self._final = self.committed_length()
                return not self.advance()
            self.stop_string = stop[1]
            self._finish(stop[0])
            return start_check(self)
        return not self.advance()

    def step(self) -> bool:
        """One turn of the loop: sample, ask the operator, conclude; True when finished.
        While a check of the finished completion is in flight, the turn acts on its verdict
        instead (:mod:`backtrack.engine.verification`), waiting for it if needed."""
        if self.check.pending is not None:
            return settle_check(self)
        return self.conclude(self.decide(self.sample()))

    def rollback(
        self,
        k: int,
        source: str = "operator",
        *,
        kind: str = "operator",
        banned: Any = None,
        reuse: bool = False,
    ) -> int:
        """Delete the last ``k`` tokens (clamped to what is allowed); return how many went.

        The ids, the KV cache, the operator state, the detokenizer and the text all go back
        to exactly what they were before those tokens. The first deleted token is banned at
        the position where decoding resumes (see ``GenerationConfig.ban``).

        ``kind``: ``"operator"`` (clamped to the allowance), or a rollback the engine
        requires, clamped only by what is already final: ``"hard"`` (a banned phrase, a
        failed check: its first deleted token stays banned there whatever
        ``GenerationConfig.ban`` says) or ``"soft"`` (a soft-banned phrase: the token is
        down-weighted there, not banned; :mod:`backtrack.engine.banning`). ``banned``: the
        :class:`~backtrack.engine.banned.BanMatch` that caused it, for the trace. ``reuse``:
        resume from the remembered logits where they are known, and after a soft ban keep the
        deleted path in the KV cache (:mod:`backtrack.engine.reuse`).
        """
        force = kind != "operator"
        if k < 0:
            raise ValueError(f"an operator returned a negative rollback ({k}); k must be >= 0")
        if force:
            k = min(int(k), len(self.completion) - self._final)
        else:
            k = min(int(k), self.rollback_allowance())
        if k == 0:
            return 0
        keep = len(self.completion) - k
        removed = self.completion[keep:]
        restore = self._undo.truncate(keep)
        if self.operator is not None:
            self.operator.set_state(restore.operator_state)
        self._detok = restore.detok_state
        removed_text = self.text[restore.text_len :]
        self.text = self.text[: restore.text_len]
        del self.completion[keep:], self.logprobs[keep:], self.top_logprobs[keep:]
        self._restore_cache(keep, removed, kind, reuse)
        # A driver without an operator (the RL agent) may reach behind what bans held final.
        self._final = min(self._final, keep)
        # Bans and retry counts of later positions belonged to a prefix that is gone.
        self._rejections.resumed(keep, removed[0], kind=kind)
        if self.guard is not None:
            self.guard.rolled_back(len(self.text))
        self.counts.tokens_discarded += k
        self.counts.backtracks += 1
        self.counts.deepest_rollback = max(self.counts.deepest_rollback, self.furthest - keep)
        self.trace.append(
            RollbackEvent(
                keep, k, removed_text, tuple(removed), source,
                banned=None if banned is None else banned.text,
                ban_list=None if banned is None else banned.key[0],
                ban_weight=None if banned is None else banned.weight,
            )
        )  # fmt: skip
        return k

    def text_offset(self, position: int) -> int:
        """Length of the completion text before the token at ``position`` (``len(text)`` at
        the end): where that token's text starts."""
        return self._undo.text_offset(position, len(self.text))

    # ------------------------------------------------------------------ the loop
    def run(self) -> Iterator[Event]:
        """The decoding loop; yields each event (token, rollback) as its turn ends."""
        self.prefill()
        seen = 0
        while True:
            done = self.step()
            yield from self.trace[seen:]
            seen = len(self.trace)
            if done:
                return

"""Test-guided local backtracking: run the prompt's own examples when a completion finishes,
and repair it locally when one fails (:class:`Examples`).

Unlike the token-level heuristics, this operator knows whether the code works on what the
prompt shows (``>>> f(1)`` lines, ``f(2) == 4`` statements; see
:mod:`backtrack.execution.examples`). It never sees the hidden tests. The engine's side
(holding the finish, waiting for the verdict without stalling a batch, the forced rollback,
keeping the best attempt) is :mod:`backtrack.engine.verification`.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Literal

from backtrack.engine.results import Step
from backtrack.engine.verification import Attempt, Verdict
from backtrack.execution.examples import VisibleExamples, check_pool, parse_examples, run_examples
from backtrack.execution.sandbox import SandboxConfig
from backtrack.operators.base import Operator

RepairTarget = Literal["token", "line"]


class Examples(Operator):
    """Check a finished completion against the prompt's visible examples; on a failure, roll
    back to its least-confident token (or line) and decode again from there.

    When the completion finishes (EOS, a stop string, the length limit), the program it makes
    with the prompt runs the examples in the sandbox (a fresh contained subprocess; in a batch
    the other rows keep decoding meanwhile). If every example passes, decoding finishes. If
    not, the repair deletes from the least-confident token of the checked code to the end,
    bans that token at its position and lets decoding continue; the new ending is checked
    again. After ``max_repairs`` failed repairs the best attempt (most examples passed, the
    earliest on ties) is kept. A prompt without parseable examples makes the operator a no-op
    for it (the result's ``counts.checks`` stays 0).

    Args:
        max_repairs: repairs after a failed check before keeping the best attempt, >= 0.
            Default 3.
        target: where a repair resumes: ``token`` (the token with the lowest log-probability;
            only it is banned) or ``line`` (the first token of the line with the lowest mean
            log-probability, which is banned). Default ``token``.
        timeout_s: the sandbox's wall-clock limit for one run of the examples, > 0. Default 3.

    It decides nothing per token (``__call__`` returns 0), so it combines with a token-level
    operator (``examples+probability-trend``).

    Examples:
        >>> op = Examples(max_repairs=2)
        >>> op.reset()
        >>> quotes = '"' * 3   # the prompt's docstring quotes
        >>> op.set_prompt(f"def double(x):\\n    {quotes}\\n"
        ...               f"    >>> double(2)\\n    4\\n    {quotes}\\n")
        >>> verdict = op.verify("    return x * 2\\n").result()
        >>> verdict.passed, verdict.detail
        (True, '1/1 passed')
        >>> op.verify("    return x + 3\\n").result().detail
        '0/1 failed: AssertionError'
        >>> from backtrack.engine.verification import Attempt
        >>> attempt = Attempt(token_ids=(11, 12, 13), logprobs=(-0.1, -2.5, -0.3),
        ...     starts=(0, 10, 13), text="    return x + 3\\n", checked_length=17,
        ...     first_editable=0)
        >>> op.repair(verdict, attempt)   # delete from the least-confident token: 2 tokens
        2
        >>> Examples(target="word")
        Traceback (most recent call last):
        ...
        ValueError: target must be 'token' or 'line', got 'word'
    """

    name = "examples"

    def __init__(
        self, max_repairs: int = 3, target: RepairTarget = "token", timeout_s: float = 3.0
    ) -> None:
        if int(max_repairs) != max_repairs or max_repairs < 0:
            raise ValueError(f"max_repairs must be an integer >= 0, got {max_repairs}")
        if target not in ("token", "line"):
            raise ValueError(f"target must be 'token' or 'line', got {target!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.max_repairs = int(max_repairs)
        self.target: RepairTarget = target
        self.timeout_s = float(timeout_s)
        self._shown = VisibleExamples("", False, None, ())
        self._repairs = 0

    def reset(self) -> None:
        super().reset()
        # Not operator state: a repair's own rollback must not give its repairs back.
        self._repairs = 0

    def set_prompt(self, prompt: str) -> None:
        self._shown = parse_examples(prompt)

    @property
    def examples(self) -> int:
        """How many examples the current prompt shows (0: nothing to check)."""
        return len(self._shown.examples)

    def __call__(self, step: Step) -> int:
        return 0

    def verify(self, text: str) -> Future[Verdict] | None:
        """Start running the examples on the prompt's program completed by ``text``; None when
        the prompt shows none."""
        if not self._shown.examples:
            return None
        program = self._shown.program(text)
        return check_pool().submit(self._check, program)

    def _check(self, program: str) -> Verdict:
        run = run_examples(program, self._shown.examples, SandboxConfig(timeout_s=self.timeout_s))
        outcome = run.status if run.passed else f"{run.status}: {run.detail}"
        return Verdict(run.passed, run.passed_count, f"{run.passed_count}/{run.total} {outcome}")

    def repair(self, verdict: Verdict, attempt: Attempt) -> int:
        """Tokens to delete after a failed check (0: give up and keep the best attempt)."""
        if self._repairs >= self.max_repairs:
            return 0
        position = self._resume_position(attempt)
        if position is None:
            return 0
        self._repairs += 1
        return len(attempt.token_ids) - position

    def _resume_position(self, attempt: Attempt) -> int | None:
        """Where the repair resumes: the least-confident editable token of the checked text,
        or the first token of its least-confident line."""
        editable = [
            p
            for p in range(attempt.first_editable, len(attempt.token_ids))
            if attempt.starts[p] < attempt.checked_length
        ]
        if not editable:
            return None
        if self.target == "token":
            return min(editable, key=lambda p: attempt.logprobs[p])
        lines: dict[int, list[int]] = {}
        for p in editable:
            line_start = attempt.text.rfind("\n", 0, attempt.starts[p]) + 1
            lines.setdefault(line_start, []).append(p)
        worst = min(lines.values(), key=lambda ps: sum(attempt.logprobs[p] for p in ps) / len(ps))
        return worst[0]

"""Operators that read code structure, which the paper's operators do not.

Both act at line ends (a token whose text contains a newline), the natural unit of a program,
and delete whole lines, so that the ban on the first deleted token (``GenerationConfig.ban``)
makes the resampled line start differently. They need to see every token: use them with
``period=1`` (the default).

* :class:`LineRestart`: a line that contained a very unlikely token is written again.
* :class:`SyntaxCheck`: once prompt + completion can no longer be the beginning of a valid
  Python program, delete back to the last line end where it still could be.
"""

from __future__ import annotations

import codeop
import warnings
from typing import Literal

from backtrack.engine.results import Step
from backtrack.operators.base import Operator

PythonPrefix = Literal["complete", "incomplete", "invalid"]


def python_prefix(source: str) -> PythonPrefix:
    """Whether ``source`` is a valid Python program (``complete``), the beginning of one
    (``incomplete``: an open block, bracket or string), or neither (``invalid``).

    Uses the interpreter's own parser through :mod:`codeop` (which tells incomplete input
    from invalid input); compile warnings (e.g. an invalid escape) are silenced.

    Examples:
        >>> python_prefix("def f(x):\\n"), python_prefix("x = 1\\n"), python_prefix("x = )\\n")
        ('incomplete', 'complete', 'invalid')
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = codeop.compile_command(source, "<completion>", "exec")
        except (SyntaxError, ValueError, OverflowError, MemoryError):
            return "invalid"
    return "incomplete" if code is None else "complete"


class LineRestart(Operator):
    """At a line end, delete the whole line if it holds a token less likely than ``min_prob``
    (or if the line's mean token probability is below ``min_mean``).

    A line the model was unsure about is written again from its start, with its first token
    banned there, instead of one token at a time.

    Args:
        min_prob: delete the line if any of its tokens had a probability below this, in
            [0, 1). Default 0.05; 0 disables the test.
        min_mean: delete the line if its mean token probability is below this, in [0, 1).
            Default 0 (off).
        max_k: longest line (in tokens) that may be deleted, >= 1; a longer line is kept.
            Default 32.

    State: ``(line start position, least probability, sum of probabilities, tokens)``.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = LineRestart(min_prob=0.05)
        >>> op.reset()
        >>> line = [step(0.9, position=0, text="x ="), step(0.01, position=1, text=" 1"),
        ...         step(0.8, position=2, text="\\n")]
        >>> [op(s) for s in line]           # the line end deletes the unsure line, 3 tokens
        [0, 0, 3]

        In decoding (a loaded model and tokenizer):

        >>> decoder.generate(prompt, op, config)          # doctest: +SKIP
    """

    name = "line-restart"

    def __init__(self, min_prob: float = 0.05, min_mean: float = 0.0, max_k: int = 32) -> None:
        for label, value in (("min_prob", min_prob), ("min_mean", min_mean)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {value!r}")
        if min_prob == 0 and min_mean == 0:
            raise ValueError("LineRestart needs min_prob > 0 or min_mean > 0")
        if not isinstance(max_k, int) or max_k < 1:
            raise ValueError(f"max_k must be a positive integer, got {max_k!r}")
        self.min_prob, self.min_mean, self.max_k = float(min_prob), float(min_mean), max_k

    def initial_state(self) -> tuple[int, float, float, int]:
        return (0, 1.0, 0.0, 0)

    def __call__(self, step: Step) -> int:
        start, least, total, count = self.state
        least, total, count = min(least, step.prob), total + step.prob, count + 1
        if "\n" not in step.text:
            self.state = (start, least, total, count)
            return 0
        length = step.position + 1 - start
        unsure = least < self.min_prob or total / count < self.min_mean
        if unsure and length <= self.max_k:
            return length  # the state stays: it is restored to the line's start anyway
        self.state = (step.position + 1, 1.0, 0.0, 0)
        return 0


class SyntaxCheck(Operator):
    """At a line end, if the prompt plus the completion up to that line can no longer begin a
    valid Python program, delete back to the last line end where it still could.

    The check is the interpreter's own parser (:func:`python_prefix`): an open block, bracket
    or string is fine (more lines may close it); an invalid token, a bad indentation or a
    statement that cannot continue is not. It suits completion-mode code prompts (the prompt
    is Python); on a prompt that is not valid Python it never fires.

    Args:
        max_k: deepest deletion in tokens, >= 1. When the last good line end is further back
            (the engine clamped an earlier deletion, e.g. to the rollback window), the
            operator gives up and keeps the text. Default 64.

    A line that keeps coming back invalid is deleted again each time until the position's
    retry cap (``GenerationConfig.max_retries_per_position``) or the budget stops it.

    State: the completion length (tokens) at the last line end that could still be valid.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = SyntaxCheck()
        >>> op.reset()
        >>> op.set_prompt("def f(x):\\n")
        >>> op(step(0.9, position=0, text="    return x\\n", completion="    return x\\n"))
        0
        >>> op(step(0.9, position=1, text=" )\\n", completion="    return x\\n )\\n"))
        1

        In decoding (a loaded model and tokenizer, a HumanEval prompt):

        >>> decoder.generate(humaneval_prompt, op, config)        # doctest: +SKIP
    """

    name = "syntax-check"

    def __init__(self, max_k: int = 64) -> None:
        if not isinstance(max_k, int) or max_k < 1:
            raise ValueError(f"max_k must be a positive integer, got {max_k!r}")
        self.max_k = max_k
        self._prompt = ""
        self._prompt_ok = True

    def set_prompt(self, prompt: str) -> None:
        self._prompt = prompt
        # A prompt that is not the start of a program (a chat prompt) leaves nothing to check.
        self._prompt_ok = python_prefix(prompt[: prompt.rfind("\n") + 1]) != "invalid"

    def initial_state(self) -> int:
        return 0

    def __call__(self, step: Step) -> int:
        if "\n" not in step.text or not self._prompt_ok:
            return 0
        end = step.position + 1
        completion = step.completion[: step.completion.rfind("\n") + 1]
        if python_prefix(self._prompt + completion) != "invalid":
            self.state = end
            return 0
        k = end - self.state
        return k if k <= self.max_k else 0

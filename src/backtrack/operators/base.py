"""The operator interface: look at one step, say how many recent tokens to delete.

An operator is a small callable object in the spirit of transformers' ``LogitsProcessor``::

    from backtrack.operators import Operator

    class LowConfidenceStreak(Operator):
        \"\"\"Delete the streak once ``length`` tokens in a row fell under ``min_prob``.\"\"\"

        name = "low-confidence-streak"

        def __init__(self, min_prob: float = 0.2, length: int = 3) -> None:
            if not 0 < min_prob < 1 or length < 1:
                raise ValueError("need 0 < min_prob < 1 and length >= 1")
            self.min_prob, self.length = min_prob, length

        def initial_state(self):
            return 0                      # the current streak length

        def __call__(self, step) -> int:
            self.state = self.state + 1 if step.prob < self.min_prob else 0
            return self.state if self.state >= self.length else 0

State lives in ``self.state`` and must be an immutable value (a number, a tuple, a frozen
dataclass, a tensor that is replaced rather than modified in place). The engine keeps the value
it had before every token and, on a rollback of ``k`` tokens, puts back the one from before
them: the operator ends up exactly as if the deleted tokens had never been seen. Operators
whose state cannot be immutable override :meth:`get_state` / :meth:`set_state` to copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from backtrack.engine.results import Step
from backtrack.engine.settings import GenerationConfig


class Operator:
    """Base class of backtracking operators.

    Subclasses set ``name``, validate their parameters in ``__init__``, implement
    :meth:`__call__`, and, if stateful, :meth:`initial_state`.
    """

    name: str = "operator"
    state: Any = None
    # Whether the operator reads text (``Step.text``, ``Step.completion``, the prompt). Decoding
    # from token ids alone, without a tokenizer (``backtrack.hf``), refuses an operator that
    # does; one that reads only numbers and token ids sets this False.
    reads_text: bool = True

    def initial_state(self) -> Any:
        """State at the start of a generation (``None`` for stateless operators)."""
        return None

    def reset(self) -> None:
        """Called by the engine before each generation."""
        self.state = self.initial_state()

    def check_config(self, config: GenerationConfig) -> None:
        """Called by the engine before each generation with its settings (and by the server
        when a request arrives), to refuse or warn; it changes nothing.

        Operators tuned or trained for particular settings (e.g. a learned policy) warn here
        when used under others; the default accepts anything.
        """

    def begin(self, config: GenerationConfig) -> None:
        """Called by the engine before each generation (after :meth:`reset` and
        :meth:`check_config`) with its settings, for state that depends on them (a learned
        policy seeds its sampled actions with the generation's seed); the default does
        nothing."""

    def set_prompt(self, prompt: str) -> None:
        """Called by the engine before each generation (after :meth:`reset`) with the prompt's
        text, for operators that read it (e.g. a syntax check); the default ignores it."""

    def __call__(self, step: Step) -> int:
        """Return how many of the most recent tokens to delete (0 = keep going)."""
        raise NotImplementedError

    def get_state(self) -> Any:
        """A snapshot of the state; must not change when the operator goes on."""
        return self.state

    def set_state(self, state: Any) -> None:
        """Restore a snapshot taken by :meth:`get_state`."""
        self.state = state

    def __repr__(self) -> str:
        params = ", ".join(
            f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "state"
        )
        return f"{type(self).__name__}({params})"


class Never(Operator):
    """Never backtracks: plain sampling through the same engine (the no-op baseline).

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> Never()(step(0.001))
        0
    """

    name = "never"
    reads_text = False

    def __call__(self, step: Step) -> int:
        return 0


class AnyOf(Operator):
    """Combine operators: each sees every step; the largest deletion asked for wins.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> from backtrack.operators import ProbabilityThreshold, Repetition
        >>> op = AnyOf([ProbabilityThreshold(min_prob=0.05), Repetition(max_repetitions=2)])
        >>> op.name
        'probability-threshold+repetition'
        >>> op.reset()
        >>> op(step(0.01))                                       # the threshold fires: 1 token
        1
        >>> op(step(0.9, token_id=7, generated=(7, 7, 7)))       # a run of 3: delete the run
        3
    """

    name = "any-of"

    def __init__(self, operators: Sequence[Operator]) -> None:
        if not operators:
            raise ValueError("AnyOf needs at least one operator")
        alone = [op.name for op in operators if not getattr(op, "combinable", True)]
        if alone and len(operators) > 1:
            raise ValueError(f"{alone[0]} cannot be combined with other operators")
        self.operators = list(operators)
        self.name = "+".join(op.name for op in self.operators)
        # A verifying operator (e.g. examples) keeps its check of the finished completion.
        verifying = [op for op in self.operators if hasattr(op, "verify")]
        if len(verifying) > 1:
            raise ValueError("AnyOf takes at most one operator that verifies completions")
        if verifying:
            self.verify, self.repair = verifying[0].verify, verifying[0].repair

    @property
    def reads_text(self) -> bool:  # type: ignore[override]
        return any(getattr(op, "reads_text", True) for op in self.operators)

    def reset(self) -> None:
        for op in self.operators:
            op.reset()

    def check_config(self, config: GenerationConfig) -> None:
        for op in self.operators:
            op.check_config(config)

    def begin(self, config: GenerationConfig) -> None:
        for op in self.operators:
            op.begin(config)

    def set_prompt(self, prompt: str) -> None:
        for op in self.operators:
            op.set_prompt(prompt)

    def __call__(self, step: Step) -> int:
        return max(op(step) for op in self.operators)

    def get_state(self) -> Any:
        return tuple(op.get_state() for op in self.operators)

    def set_state(self, state: Any) -> None:
        for op, sub in zip(self.operators, state, strict=True):
            op.set_state(sub)


def example_step(prob: float, **fields: Any) -> Step:
    """A :class:`~backtrack.engine.results.Step` with made-up statistics, for trying an
    operator by hand (the examples in these pages use it).

    ``prob`` is the token's probability (and the top one's); ``fields`` override any other
    field. The rest: position 0, token 5 with text ``"x"``, log-probability -1, logit 1, rank 0,
    entropy 0.1, a second-best probability of 0, logits and probabilities of zeros over 8
    tokens, and a completion of that one token.

    >>> step = example_step(0.3, entropy=1.2)
    >>> step.prob, step.top1_prob, step.entropy, step.generated
    (0.3, 0.3, 1.2, (5,))
    """
    made_up = {
        "position": 0, "token_id": 5, "text": "x", "prob": prob, "logprob": -1.0,
        "logit": 1.0, "rank": 0, "entropy": 0.1, "top1_prob": prob, "top2_prob": 0.0,
        "logits": torch.zeros(8), "probs": torch.zeros(8), "generated": (5,), "completion": "x",
    }  # fmt: skip
    return Step(**{**made_up, **fields})

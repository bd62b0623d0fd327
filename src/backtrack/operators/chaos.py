"""``chaos``: random rollbacks, for testing that rollback is exact."""

from __future__ import annotations

import random

from backtrack.engine.results import Step
from backtrack.operators.base import Operator


class Chaos(Operator):
    """With probability ``p``, delete a random number of tokens in ``1..max``.

    Its randomness comes from its own generator (seeded with ``seed``), never from torch's, so
    it does not change what the model samples. That generator is deliberately *not* part of
    the rolled-back state: a test operator that replayed the same decision after every
    rollback would only exercise the budget.

    Args:
        p: probability of a rollback at each call, in [0, 1]. Default 0.3.
        max: largest deletion, >= 1. Default 4.
        seed: seed of the private generator. Default 0.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = Chaos(p=0.5, max=4, seed=1)
        >>> op.reset()                                 # restarts its generator from the seed
        >>> [op(step(0.5)) for _ in range(8)]
        [1, 4, 0, 4, 0, 1, 0, 1]
        >>> op.reset()
        >>> [op(step(0.5)) for _ in range(8)]          # the same seed, the same decisions
        [1, 4, 0, 4, 0, 1, 0, 1]
    """

    name = "chaos"
    reads_text = False

    def __init__(self, p: float = 0.3, max: int = 4, seed: int = 0) -> None:  # noqa: A002
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be between 0 and 1, got {p!r}")
        if not isinstance(max, int) or max < 1:
            raise ValueError(f"max must be a positive integer, got {max!r}")
        self.p, self.max, self.seed = float(p), max, seed
        self._rng = random.Random(seed)

    def reset(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, step: Step) -> int:
        if self._rng.random() < self.p:
            return self._rng.randint(1, self.max)
        return 0

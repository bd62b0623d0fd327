"""The eight heuristic operators of the local-backtracking paper (its ``backtracking-llm``
package), with its parameter names and defaults, so results compare with the paper's.

Each looks at the step record the engine already computed (no extra model work, no text
processing) and returns ``k`` tokens to delete. Probabilities are those of the distribution the
token was actually sampled from (after temperature and top-k/top-p), as the paper's operators
use them; the logit threshold looks at the raw logit.

Stateful operators keep immutable state in ``self.state`` so the engine can restore it exactly
on rollback (see :mod:`backtrack.operators.base`).
"""

from __future__ import annotations

from backtrack.engine.results import Step
from backtrack.operators.base import Operator


def _check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens to delete) must be a positive integer, got {k!r}")
    return k


def _check_unit(name: str, value: float, *, open_low: bool = True, open_high: bool = True) -> float:
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (low_ok and high_ok):
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


class ProbabilityThreshold(Operator):
    """Delete ``k`` tokens when the chosen token's probability is below ``min_prob``.

    Args:
        min_prob: threshold in (0, 1). Default 0.05.
        k: tokens to delete. Default 1.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = ProbabilityThreshold(min_prob=0.05)
        >>> op(step(0.01)), op(step(0.30))
        (1, 0)
    """

    name = "probability-threshold"
    reads_text = False

    def __init__(self, min_prob: float = 0.05, k: int = 1) -> None:
        self.min_prob = _check_unit("min_prob", min_prob)
        self.k = _check_k(k)

    def __call__(self, step: Step) -> int:
        return self.k if step.prob < self.min_prob else 0


class EntropyThreshold(Operator):
    """Delete ``k`` tokens when the entropy (nats) of the distribution exceeds ``max_entropy``.

    Args:
        max_entropy: threshold >= 0. Default 0.2.
        k: tokens to delete. Default 2.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = EntropyThreshold(max_entropy=0.2)
        >>> op(step(0.5, entropy=1.3)), op(step(0.99, entropy=0.05))
        (2, 0)
    """

    name = "entropy-threshold"
    reads_text = False

    def __init__(self, max_entropy: float = 0.2, k: int = 2) -> None:
        if max_entropy < 0:
            raise ValueError(f"max_entropy must be >= 0, got {max_entropy!r}")
        self.max_entropy = float(max_entropy)
        self.k = _check_k(k)

    def __call__(self, step: Step) -> int:
        return self.k if step.entropy > self.max_entropy else 0


class ProbabilityMargin(Operator):
    """Delete ``k`` tokens when the top two probabilities are closer than ``min_margin``.

    Args:
        min_margin: threshold in [0, 1]. Default 0.05.
        k: tokens to delete. Default 1.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = ProbabilityMargin(min_margin=0.05)
        >>> op(step(0.40, top2_prob=0.38)), op(step(0.90, top2_prob=0.05))
        (1, 0)
    """

    name = "probability-margin"
    reads_text = False

    def __init__(self, min_margin: float = 0.05, k: int = 1) -> None:
        self.min_margin = _check_unit("min_margin", min_margin, open_low=False, open_high=False)
        self.k = _check_k(k)

    def __call__(self, step: Step) -> int:
        return self.k if step.top1_prob - step.top2_prob < self.min_margin else 0


class ProbabilityDrop(Operator):
    """Delete ``k`` tokens when the probability falls below ``(1 - max_drop)`` x the previous one.

    Args:
        max_drop: allowed relative drop in [0, 1]. Default 0.8 (fire under 20% of the previous).
        k: tokens to delete. Default 1.

    State: the previous kept token's probability.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = ProbabilityDrop(max_drop=0.8)
        >>> op.reset()
        >>> [op(step(p)) for p in (0.9, 0.1)]          # 0.1 < (1 - 0.8) x 0.9
        [0, 1]
    """

    name = "probability-drop"
    reads_text = False

    def __init__(self, max_drop: float = 0.8, k: int = 1) -> None:
        self.max_drop = _check_unit("max_drop", max_drop, open_low=False, open_high=False)
        self.k = _check_k(k)

    def __call__(self, step: Step) -> int:
        previous, self.state = self.state, step.prob
        if previous is not None and step.prob < previous * (1.0 - self.max_drop):
            return self.k
        return 0


class ProbabilityTrend(Operator):
    """Delete ``k`` tokens when the probability falls below ``drop`` x its recent moving average.

    The average is over the last ``window`` kept probabilities and is used once at least
    ``window // 2`` are known. A token that triggers the operator is not added to the history.

    Args:
        window: moving-average window, >= 2. Default 10.
        drop: fraction of the average in (0, 1) below which to backtrack. Default 0.5.
        k: tokens to delete. Default 1.

    State: the tuple of the last ``window`` probabilities.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = ProbabilityTrend(window=4, drop=0.5)
        >>> op.reset()
        >>> [op(step(p)) for p in (0.9, 0.8, 0.85, 0.3)]   # 0.3 < 0.5 x mean(0.9, 0.8, 0.85)
        [0, 0, 0, 1]
        >>> op.state                                       # the token that fired is not kept
        (0.9, 0.8, 0.85)
    """

    name = "probability-trend"
    reads_text = False

    def __init__(self, window: int = 10, drop: float = 0.5, k: int = 1) -> None:
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"window must be an integer >= 2, got {window!r}")
        self.window = window
        self.drop = _check_unit("drop", drop)
        self.k = _check_k(k)

    def initial_state(self) -> tuple[float, ...]:
        return ()

    def __call__(self, step: Step) -> int:
        history = self.state
        if len(history) >= self.window // 2:
            mean = sum(history) / len(history)
            if step.prob < mean * self.drop:
                return self.k
        self.state = (*history, step.prob)[-self.window :]
        return 0


class Repetition(Operator):
    """Delete the run when the same token repeats more than ``max_repetitions`` times in a row.

    Args:
        max_repetitions: longest allowed run of one token, >= 1. Default 3.

    Stateless: the run is read from ``step.generated``.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = Repetition(max_repetitions=3)
        >>> op(step(0.9, token_id=7, generated=(1, 7, 7, 7, 7)))   # 4 in a row: delete all 4
        4
        >>> op(step(0.9, token_id=7, generated=(1, 7, 7, 7)))
        0
    """

    name = "repetition"
    reads_text = False

    def __init__(self, max_repetitions: int = 3) -> None:
        if not isinstance(max_repetitions, int) or max_repetitions < 1:
            raise ValueError(f"max_repetitions must be a positive integer, got {max_repetitions!r}")
        self.max_repetitions = max_repetitions

    def __call__(self, step: Step) -> int:
        ids = step.generated
        run = 1
        while run < len(ids) and ids[-1 - run] == step.token_id:
            run += 1
            if run > self.max_repetitions:
                break
        return run if run > self.max_repetitions else 0


class NGramOverlap(Operator):
    """Delete ``k`` tokens when the latest ``n``-gram of tokens already occurred in the completion.

    Args:
        n: n-gram size, >= 2. Default 4.
        k: tokens to delete. Default 1.

    Stateless: n-grams are read from ``step.generated`` (linear in the completion length,
    which is a few microseconds for code-sized completions).

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = NGramOverlap(n=2)
        >>> op(step(0.9, token_id=2, generated=(1, 2, 3, 1, 2)))   # (1, 2) occurred before
        1
        >>> op(step(0.9, token_id=4, generated=(1, 2, 3, 4)))
        0
    """

    name = "ngram-overlap"
    reads_text = False

    def __init__(self, n: int = 4, k: int = 1) -> None:
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an integer >= 2, got {n!r}")
        self.n = n
        self.k = _check_k(k)

    def __call__(self, step: Step) -> int:
        ids, n = step.generated, self.n
        if len(ids) < n + 1:
            return 0
        last = list(ids[-n:])
        first = last[0]
        for start in range(len(ids) - n):
            if ids[start] == first and list(ids[start : start + n]) == last:
                return self.k
        return 0


class LogitThreshold(Operator):
    """Delete ``k`` tokens when the chosen token's raw logit is below ``min_logit``.

    Args:
        min_logit: threshold on the raw logit. Default -20.0.
        k: tokens to delete. Default 1.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> op = LogitThreshold(min_logit=-20.0)
        >>> op(step(0.5, logit=-25.0)), op(step(0.5, logit=3.0))
        (1, 0)
    """

    name = "logit-threshold"
    reads_text = False

    def __init__(self, min_logit: float = -20.0, k: int = 1) -> None:
        self.min_logit = float(min_logit)
        self.k = _check_k(k)

    def __call__(self, step: Step) -> int:
        return self.k if step.logit < self.min_logit else 0


# The paper's eight, in its order (the spec strings list them so).
HEURISTICS: tuple[type[Operator], ...] = (
    ProbabilityThreshold,
    EntropyThreshold,
    ProbabilityMargin,
    ProbabilityDrop,
    ProbabilityTrend,
    Repetition,
    NGramOverlap,
    LogitThreshold,
)

"""Backtracking operators: the interface, heuristics, chaos, and spec strings."""

from backtrack.operators.bad_words import BadWords
from backtrack.operators.base import AnyOf, Never, Operator
from backtrack.operators.chaos import Chaos
from backtrack.operators.code import LineRestart, SyntaxCheck
from backtrack.operators.examples import Examples
from backtrack.operators.heuristics import (
    EntropyThreshold,
    LogitThreshold,
    NGramOverlap,
    ProbabilityDrop,
    ProbabilityMargin,
    ProbabilityThreshold,
    ProbabilityTrend,
    Repetition,
)
from backtrack.operators.lookahead import Lookahead, LookaheadChoice
from backtrack.operators.spec import (
    OperatorSpecError,
    operator_help,
    parse_operator,
    register_operator,
)

__all__ = [
    "BadWords",
    "AnyOf",
    "Chaos",
    "EntropyThreshold",
    "Examples",
    "LineRestart",
    "LogitThreshold",
    "Lookahead",
    "LookaheadChoice",
    "NGramOverlap",
    "Never",
    "Operator",
    "OperatorSpecError",
    "ProbabilityDrop",
    "ProbabilityMargin",
    "ProbabilityThreshold",
    "ProbabilityTrend",
    "Repetition",
    "SyntaxCheck",
    "operator_help",
    "parse_operator",
    "register_operator",
]

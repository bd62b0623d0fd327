"""The no-op judge: :class:`TestsOnlyJudge` switches the dense reward off."""

from __future__ import annotations

from backtrack.rl.judges.base import Judge


class TestsOnlyJudge(Judge):
    """The dense reward switched off: always 0.0, so only the unit-test terminal reward counts.

    It exists so that "no judge" is an ordinary judge and the environment needs no special case;
    ``enabled`` is False so callers may also skip it entirely.
    """

    __test__ = False  # not a pytest test class despite the name
    enabled = False

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Always 0.0: no dense reward."""
        return 0.0

    def __repr__(self) -> str:
        return "TestsOnlyJudge()"

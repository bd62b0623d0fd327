"""Judges: dense rewards from scoring a *partial* program, behind one interface.

The RL operator only gets the unit-test verdict at the end of an episode; a judge adds a dense
signal by rating, after a step, whether the code written so far is on track to a correct
solution. A judge sees only the problem statement and the partial code, never the reference
solution or the tests, so the dense reward cannot leak the answer the terminal reward checks.

Three judges share :class:`Judge`:

* :class:`OpenAIJudge` asks any OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, ...)
  for a 0-10 rating, with timeouts, retries with exponential backoff and an LRU cache.
* :class:`LocalJudge` reads a local model's next-token probabilities of the digits ``0``..``9``
  after a rating prompt (on transformers or llama.cpp): one forward pass over what the previous
  prompt did not share, no generation, so it is cheap and graded (the expected rating) rather
  than sampled.
* :class:`TestsOnlyJudge` disables the dense reward, so only the unit tests count.

:func:`make_judge` builds any of them from a CLI string or a YAML mapping.

Submodules, one job each:

* :mod:`~backtrack.rl.judges.base`: the :class:`Judge` interface, :class:`JudgeError`,
  :class:`JudgeConfigError`, :class:`JudgeStats`, :data:`NEUTRAL_SCORE`,
  :data:`DEFAULT_CACHE_SIZE` and the LRU score cache.
* :mod:`~backtrack.rl.judges.prompts`: the system prompt and user message both model-backed
  judges send, with the answer format each asks for.
* :mod:`~backtrack.rl.judges.openai_http`: :class:`OpenAIJudge` (httpx) and
  :func:`parse_rating`, which reads its answers.
* :mod:`~backtrack.rl.judges.local`: :class:`LocalJudge` (torch is imported only when a judge
  is built).
* :mod:`~backtrack.rl.judges.tests_only`: :class:`TestsOnlyJudge`.
* :mod:`~backtrack.rl.judges.spec`: :func:`make_judge` and the parsing of spec strings.

Importing this package imports httpx (for :class:`OpenAIJudge`) but not torch;
``import backtrack.rl`` alone imports neither.
"""

from __future__ import annotations

from backtrack.rl.judges.base import (
    DEFAULT_CACHE_SIZE,
    NEUTRAL_SCORE,
    Judge,
    JudgeConfigError,
    JudgeError,
    JudgeStats,
)
from backtrack.rl.judges.local import LocalJudge
from backtrack.rl.judges.openai_http import OpenAIJudge, parse_rating
from backtrack.rl.judges.spec import make_judge
from backtrack.rl.judges.tests_only import TestsOnlyJudge

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "NEUTRAL_SCORE",
    "Judge",
    "JudgeConfigError",
    "JudgeError",
    "JudgeStats",
    "LocalJudge",
    "OpenAIJudge",
    "TestsOnlyJudge",
    "make_judge",
    "parse_rating",
]

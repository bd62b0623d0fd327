"""What every judge shares: the :class:`Judge` interface, its errors, and the score cache.

* :class:`Judge`: the abstract interface (``score(problem_prompt, partial_code) -> [0, 1]``).
* :class:`JudgeError` (a judge could not score) and :class:`JudgeConfigError` (a bad spec).
* :data:`NEUTRAL_SCORE` and :data:`DEFAULT_CACHE_SIZE`.
* :class:`LRUCache`: the thread-safe LRU map the model-backed judges keep their scores in.
* :class:`JudgeStats`: what a judge cost so far (requests, cache hits, model seconds, tokens).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any

#: What ``OpenAIJudge(on_error="neutral")`` returns when a request fails for a transient reason:
#: the middle of the scale, so a failed call neither rewards nor punishes the step.
NEUTRAL_SCORE = 0.5

DEFAULT_CACHE_SIZE = 4096


class JudgeError(RuntimeError):
    """A judge could not produce a score; the message says what failed and what to check.

    ``transient`` is true for failures that may go away on their own (timeouts, connection
    errors, HTTP 5xx/429, malformed answers), false for configuration errors (a 4xx such as a bad
    API key or an unknown model) that retrying cannot fix.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class JudgeConfigError(ValueError):
    """A judge spec (CLI string or config mapping) is invalid; the message lists what is allowed."""


@dataclass
class JudgeStats:
    """What a judge has cost so far: the figures a dense-reward run is budgeted by.

    ``requests`` counts scores asked for, ``cache_hits`` those answered from the score cache,
    ``seconds`` the wall time spent computing the rest (model forwards or HTTP round trips) and
    ``prompt_tokens`` the prompt tokens a local teacher actually ran (after reusing the cached
    prefix of the previous prompt; 0 for remote judges).
    """

    requests: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0

    @property
    def computed(self) -> int:
        """Scores that needed the model (requests minus cache hits)."""
        return self.requests - self.cache_hits

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0

    @property
    def seconds_per_judgment(self) -> float:
        """Mean wall time of a computed score (cache hits cost next to nothing)."""
        return self.seconds / self.computed if self.computed else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            **asdict(self),
            "computed": self.computed,
            "hit_rate": self.hit_rate,
            "seconds_per_judgment": self.seconds_per_judgment,
        }


class Judge(ABC):
    """Scores how likely a partial program is on track to a correct solution.

    Implementations must not look at reference solutions or tests: the judge is a dense proxy
    for the terminal test reward, and giving it the answer would let the policy learn to please
    the judge instead of writing correct code.
    """

    #: False for judges whose score is a constant no-op, so callers can skip calling them.
    enabled: bool = True

    @property
    def stats(self) -> JudgeStats:
        """This judge's running cost (see :class:`JudgeStats`); zeros for a judge that never
        computes anything."""
        found = self.__dict__.get("_stats")
        if found is None:
            found = self.__dict__["_stats"] = JudgeStats()
        return found

    def _lookup(self, cache: LRUCache, key: Hashable) -> Any | None:
        """``cache``'s entry for ``key`` (or None), counting the request and any hit in
        :attr:`stats`: the one place a model-backed judge's cache traffic is counted."""
        self.stats.requests += 1
        found = cache.get(key)
        if found is not None:
            self.stats.cache_hits += 1
        return found

    @abstractmethod
    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Return a score in [0, 1]: how likely ``partial_code`` is on track for the problem."""

    def close(self) -> None:  # noqa: B027 - optional hook, most judges hold nothing to release
        """Release resources (connections, caches). Safe to call more than once."""

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LRUCache:
    """A small thread-safe LRU map, so identical judge requests cost one call.

    RL rollouts re-score the same prefix often (after a backtrack the operator returns to a
    prefix it has seen), and judge calls dominate step time, so caching pays off. ``maxsize=0``
    disables caching. The judges count hits in their :class:`JudgeStats`.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"cache_size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

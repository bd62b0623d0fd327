"""The RL environment's settings, :class:`EnvConfig` (the ``env`` half of a training config),
and the problems an environment draws its episodes from.

A module of its own so that what reads a training config or picks the problems (the trainer's
config, ``backtrack label``) needs neither gymnasium nor the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtrack.engine.settings import GENERATION_KEYS, GenerationConfig
from backtrack.evaluation.data import Problem, load_mbpp, mbpp_problems, select_problems
from backtrack.evaluation.settings import default_generation
from backtrack.operators.features import FeatureExtractor

__all__ = ["EnvConfig", "load_problems"]


def _completion_generation() -> GenerationConfig:
    """An episode decodes as the evaluation does in completion mode (its one default)."""
    return default_generation("completion")


@dataclass
class EnvConfig:
    """Everything that defines the environment (the ``env`` half of a training config).

    Attributes:
        model: model name for :func:`backtrack.models.load_model`.
        dtype, device, backend: passed to ``load_model`` (``backend="llama.cpp"`` decodes
            episodes on GGUF weights, several times faster on a CPU).
        data_path: the MBPP jsonl file (HumanEval layout); required unless problems are given.
        split: MBPP split to draw problems from (``train``; ``validation`` for evaluation).
            Problems whose canonical solution fails its own tests are dropped.
        problem_ids: optional explicit subset (task ids) of the split; ``limit``: keep the first N.
        generation: every decoding setting of an episode (sampling, length, stop strings,
            period, ban, retry cap, budget), the same object ``generate`` and ``eval`` take;
            each episode adds its own seed. Recorded whole in the trained policy's metadata.
        max_rollback: K, the largest deletion the agent can ask for (actions are ``0..K``).
        window: moving-average window of the feature extractor.
        judge: judge spec for :func:`backtrack.rl.judges.make_judge` (``"tests"``: none).
        judge_every: judge at least every this many new tokens (and at every line end).
        judge_coef, pass_reward, discard_cost, forward_cost: reward weights (see
            :mod:`backtrack.rl.env`).
        sandbox_timeout_s: time limit of one unit-test run.

    :meth:`from_mapping` builds one from a flat mapping (a YAML file), where the generation
    settings sit at top level (``temperature: 0.5``, ``max_discarded_tokens: 64``...).
    """

    model: str = "tiny-random-qwen2"
    dtype: str = "auto"
    device: str = "cpu"
    backend: str = "transformers"
    data_path: str | None = None
    split: str = "train"
    problem_ids: list[str] | None = None
    limit: int | None = None
    generation: GenerationConfig = field(default_factory=_completion_generation)
    max_rollback: int = 4
    window: int = 10
    judge: Any = "tests"
    judge_every: int = 16
    judge_coef: float = 1.0
    pass_reward: float = 1.0
    discard_cost: float = 0.01
    forward_cost: float = 0.0
    sandbox_timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if self.max_rollback < 1:
            raise ValueError(f"max_rollback (K) must be >= 1, got {self.max_rollback}")
        if self.judge_every < 1:
            raise ValueError(f"judge_every must be >= 1, got {self.judge_every}")
        if self.discard_cost < 0 or self.forward_cost < 0:
            raise ValueError("discard_cost and forward_cost must be >= 0")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The keys a flat mapping may hold: the fields, with the generation keys flat."""
        own = {f.name for f in dataclasses.fields(cls)} - {"generation"}
        return frozenset(own | set(GENERATION_KEYS))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EnvConfig:
        """From a flat mapping; generation keys on top of the evaluation's completion-mode
        defaults (:func:`~backtrack.evaluation.settings.default_generation`)."""
        data = dict(data)
        flat = {k: data.pop(k) for k in GENERATION_KEYS if k in data}
        return cls(generation=_completion_generation().updated(flat), **data)

    def to_flat(self) -> dict[str, Any]:
        """The inverse of :meth:`from_mapping`."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del flat["generation"]
        return {**flat, **self.generation.to_flat()}

    def feature_extractor(self) -> FeatureExtractor:
        return FeatureExtractor(window=self.window, max_new_tokens=self.generation.max_new_tokens)


def load_problems(config: EnvConfig) -> list[Problem]:
    """The MBPP problems of ``config.split`` (broken canonical solutions dropped)."""
    if config.data_path is None:
        raise ValueError("EnvConfig.data_path (the MBPP jsonl file) is required")
    path = Path(config.data_path).expanduser()
    problems = mbpp_problems(load_mbpp(path), config.split, drop_broken=True)
    problems = select_problems(problems, config.problem_ids, config.limit)
    if not problems:
        raise ValueError(f"no problems selected from {path} (split {config.split!r})")
    return problems

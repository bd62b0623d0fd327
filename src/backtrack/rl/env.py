"""A Gymnasium environment over the real decoding engine: the agent *is* the operator.

Why drive the engine's own :class:`~backtrack.engine.session.DecodingSession` instead of a
re-implementation: rollouts must see exactly what inference will see. A turn of the
environment is a turn of the session's loop with the agent in the operator's place::

    session.sample() -> if session.consult_due(): the agent decides k (one env step)
                     -> session.conclude(k)   (roll back, or else check the stop conditions;
                                               then queue the next forward pass)

``consult_due`` and ``conclude`` are the very methods :meth:`DecodingSession.step` uses, so an
action is asked for exactly where an operator would be called, and nowhere else: tokens sampled
between decision points (``period > 1``, or once the budget is spent) are concluded with
``k = 0``, as at inference.

The observation is the :class:`~backtrack.operators.features.FeatureExtractor` vector of the
token just sampled. The extractor's state lives in a small :class:`FeatureOperator` attached
to the session as its operator, so the session snapshots it before every token and restores it
on rollback, exactly as it does for :class:`~backtrack.operators.learned.LearnedOperator`.

Known gap (documented, not hidden): during training the policy's LSTM state is carried by
stable-baselines3 from step to step and is *not* rolled back when the agent deletes tokens,
while :class:`LearnedOperator` restores it (``restore_memory=True``, the default, so that
rollback is exact). ``LearnedOperator(..., restore_memory=False)`` reproduces the training
behaviour instead.

Rewards, per :meth:`BacktrackEnv.step`:

* terminal: ``pass_reward`` if the completion (cut at the stop strings) passes the problem's
  unit tests in the sandbox, else 0;
* dense: ``judge_coef * (score_now - score_before)`` whenever a judge is enabled and the
  completion reached a line end or its length moved ``judge_every`` tokens from the last
  judgement (potential-based shaping, so it cannot change which policy is optimal; the judge
  sees the problem prompt and ``prompt + completion so far``, cut at the stop strings; the
  final step is left to the tests); the tests-only judge switches it off;
* cost: ``-discard_cost`` per token actually deleted and ``-forward_cost`` per forward pass.

The last step's ``info`` also says what the episode's judgements cost (``judge_requests``,
``judge_hits`` from the score cache, ``judge_seconds``, ``judge_tokens`` the teacher ran), which
the trainer writes to ``monitor.csv`` and TensorBoard.

Each episode's session is seeded with ``info["episode_seed"]``, so it samples from its own
``torch.Generator`` (the session's, as for any seeded generation): an episode is reproducible
and equals ``Decoder.generate(..., seed=episode_seed)`` with the same decisions, whatever else
(e.g. the policy's own sampling) uses torch's global RNG meanwhile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from backtrack.engine.decoder import Decoder
from backtrack.engine.results import Step
from backtrack.engine.session import DecodingSession
from backtrack.evaluation.data import Problem
from backtrack.evaluation.prompts import build_program, build_prompt, postprocess
from backtrack.evaluation.prompts import program_for as _program_for
from backtrack.execution.sandbox import SandboxConfig, run_program
from backtrack.operators.base import Operator
from backtrack.operators.features import (
    FEATURE_HIGH,
    FEATURE_LOW,
    FeatureExtractor,
    FeatureState,
)
from backtrack.rl.env_config import EnvConfig, load_problems

# EnvConfig and load_problems live in env_config (no gymnasium needed to read a config);
# they are importable from here too.
__all__ = ["BacktrackEnv", "EnvConfig", "FeatureOperator", "load_problems"]

#: Episodes that end before the agent is ever consulted are skipped; give up after this many.
_MAX_EMPTY_EPISODES = 20

#: The keys of a finished episode's ``info`` that say what its judgements cost.
JUDGE_COST_KEYS = ("judge_requests", "judge_hits", "judge_seconds", "judge_tokens")


def judgement_due(step_text: str, length: int, judged_length: int, every: int) -> bool:
    """When the dense reward asks the teacher: the step wrote a line end, or the completion's
    length (in tokens) moved ``every`` from the last judgement (a rollback moves it too)."""
    return "\n" in step_text or abs(length - judged_length) >= every


def partial_program(problem: Problem, completion_text: str, stop: Sequence[str]) -> str:
    """The program the teacher judges: the completion so far, cut at the stop strings as the
    evaluation cuts it, in the problem's program."""
    return build_program(problem, postprocess(problem, completion_text, "completion", stop))


class FeatureOperator(Operator):
    """The policy-facing side of the environment, as an operator the session manages.

    It never decides anything (it returns 0); calling it computes the observation of the step
    and advances the feature state, exactly as :class:`LearnedOperator` does before asking its
    policy. Because it is the session's operator, the session snapshots its state before each
    token and restores it on rollback, so no separate bookkeeping can drift.
    """

    name = "rl-env"

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self.observation = np.zeros(len(extractor.names), dtype=np.float32)

    def initial_state(self) -> FeatureState:
        return self.extractor.initial_state()

    def __call__(self, step: Step) -> int:
        self.observation, self.state = self.extractor.features(step, self.state)
        return 0


class BacktrackEnv(gym.Env):
    """One episode = one completion of one MBPP problem, decoded by the engine.

    Args:
        config: the environment settings; keyword ``overrides`` replace single fields.
        problems: use these problems instead of loading ``config.data_path``.
        model_and_tokenizer: reuse a loaded model (several envs may share one) instead of
            loading ``config.model``.
        judge: a ready :class:`~backtrack.rl.judges.Judge` instead of ``config.judge``.

    ``reset(options={"task_id": ...})`` picks a given problem; ``options["episode_seed"]`` fixes
    the sampling seed. ``info`` carries ``task_id``, ``episode_seed``, ``position`` (of the token
    observed), ``rolled_back`` (tokens deleted by the last action) and, at the end, ``passed``,
    ``status``, ``completion``, ``token_ids``, ``finish_reason`` and the work ``counts``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: EnvConfig | None = None,
        *,
        problems: Sequence[Problem] | None = None,
        model_and_tokenizer: tuple[Any, Any] | None = None,
        judge: Any = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if overrides:  # flat keys, generation settings included
            config = EnvConfig.from_mapping({**(config or EnvConfig()).to_flat(), **overrides})
        config = config or EnvConfig()
        self.config = config
        self.problems = list(problems) if problems is not None else load_problems(config)
        if not self.problems:
            raise ValueError("BacktrackEnv needs at least one problem")
        if model_and_tokenizer is None:
            from backtrack.models import load_model

            model_and_tokenizer = load_model(
                config.model,
                dtype=config.dtype,
                device=config.device,
                backend=config.backend,
                progress=False,
            )
        self.model, self.tokenizer = model_and_tokenizer
        self.decoder = Decoder(self.model, self.tokenizer)
        from backtrack.rl.judges import make_judge

        self._owns_judge = judge is None
        self.judge = make_judge(judge if judge is not None else config.judge)
        self._judge_on = bool(getattr(self.judge, "enabled", True))
        self.generation_config = config.generation
        self.extractor = config.feature_extractor()
        self.sandbox = SandboxConfig(timeout_s=config.sandbox_timeout_s)

        self.observation_space = gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(config.max_rollback + 1)

        self.operator = FeatureOperator(self.extractor)
        self.session: DecodingSession | None = None
        self.problem: Problem | None = None
        self.episode_seed = 0
        self._last_step: Step | None = None
        self._judged_len = 0
        self._judge_score = 0.0
        self._judge_before = dataclasses.replace(self.judge.stats)
        self._finished = True

    # ------------------------------------------------------------------ the loop
    def _sample_until_decision(self) -> bool:
        """Decode until the agent must decide (True) or the session finishes (False).

        Tokens where no decision is due are concluded with ``k = 0``, as ``step()`` does.
        """
        session = self.session
        assert session is not None
        while True:
            step = session.sample()
            if session.consult_due():
                self.operator(step)  # observation + feature state, as the operator would
                self._last_step = step
                return True
            if session.conclude(0):
                return False

    def _partial_code(self) -> str:
        assert self.session is not None and self.problem is not None
        return partial_program(self.problem, self.session.text, self.generation_config.stop)

    def _info(self) -> dict[str, Any]:
        assert self.problem is not None and self.session is not None
        step = self._last_step
        return {
            "task_id": self.problem.task_id,
            "episode_seed": self.episode_seed,
            "position": -1 if step is None else step.position,
            "length": len(self.session.completion),
        }

    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        by_id = {p.task_id: p for p in self.problems}
        for _ in range(_MAX_EMPTY_EPISODES):
            if "task_id" in options:
                self.problem = by_id[options["task_id"]]
            else:
                self.problem = self.problems[int(self.np_random.integers(len(self.problems)))]
            drawn = int(self.np_random.integers(2**31 - 1))
            self.episode_seed = int(options.get("episode_seed", drawn))
            prompt = build_prompt(self.problem, "completion")
            self.session = self.decoder.session(
                prompt, self.operator, self.generation_config, seed=self.episode_seed
            )
            self._last_step = None
            self.session.prefill()
            decided = self._sample_until_decision()
            if decided:
                break
            if "task_id" in options and "episode_seed" in options:
                break  # nothing else to try
        else:
            decided = False
        if not decided:
            raise RuntimeError(
                "every episode tried ended before the agent was consulted once; "
                "check max_new_tokens, period and the rollback budget"
            )
        self._finished = False
        self._judged_len = 0
        self._judge_before = dataclasses.replace(self.judge.stats)
        self._judge_score = (
            float(self.judge.score(self.problem.prompt, self._partial_code()))
            if self._judge_on
            else 0.0
        )
        return self.operator.observation.copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._finished or self.session is None:
            raise RuntimeError("call reset() before step(); the episode has ended")
        requested = int(np.asarray(action).reshape(()))
        if not 0 <= requested <= self.config.max_rollback:
            raise ValueError(f"action must be in 0..{self.config.max_rollback}, got {requested}")
        session = self.session
        forward_before = session.counts.forward_passes
        discarded_before = session.counts.tokens_discarded
        stopped = session.conclude(requested, self.operator.name)
        deleted = session.counts.tokens_discarded - discarded_before
        decided = False if stopped else self._sample_until_decision()

        reward = -self.config.discard_cost * deleted
        reward -= self.config.forward_cost * (session.counts.forward_passes - forward_before)
        info = self._info()
        info["rolled_back"] = deleted
        if decided:
            reward += self._dense_reward()
        else:
            self._finished = True
            reward += self._terminal(info)
        return self.operator.observation.copy(), float(reward), not decided, False, info

    def _dense_reward(self) -> float:
        """Judge score change since the last judgement, at line ends or every M tokens."""
        if not self._judge_on or self.session is None or self._last_step is None:
            return 0.0
        length = len(self.session.completion)
        if not judgement_due(
            self._last_step.text, length, self._judged_len, self.config.judge_every
        ):
            return 0.0
        assert self.problem is not None
        score = float(self.judge.score(self.problem.prompt, self._partial_code()))
        gain = self.config.judge_coef * (score - self._judge_score)
        self._judge_score, self._judged_len = score, length
        return gain

    def _terminal(self, info: dict[str, Any]) -> float:
        """Run the unit tests on the final completion (cut at the stop strings)."""
        assert self.session is not None and self.problem is not None
        result = self.session.result()
        completion = postprocess(
            self.problem, result.text, "completion", self.generation_config.stop
        )
        verdict = run_program(_program_for(self.problem, completion), self.sandbox)
        info.update(
            passed=verdict.passed,
            status=verdict.status,
            completion=completion,
            token_ids=list(result.token_ids),
            finish_reason=result.finish_reason,
            counts=dataclasses.asdict(result.counts),
            tokens_discarded=result.counts.tokens_discarded,
            **self._judge_cost(),
        )
        return self.config.pass_reward if verdict.passed else 0.0

    def _judge_cost(self) -> dict[str, float]:
        """What this episode's judgements cost: requests, cache hits, seconds, prompt tokens."""
        now, before = self.judge.stats, self._judge_before
        deltas = (
            now.requests - before.requests,
            now.cache_hits - before.cache_hits,
            now.seconds - before.seconds,
            now.prompt_tokens - before.prompt_tokens,
        )
        return dict(zip(JUDGE_COST_KEYS, deltas, strict=True))

    def close(self) -> None:
        if self._owns_judge:
            self.judge.close()
        super().close()

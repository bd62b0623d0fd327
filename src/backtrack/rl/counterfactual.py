"""Counterfactual restart labels: where a deletion would have turned a failure into a pass.

The paper's rewards tell a policy that deletions cost; they say little about *where* one
helps, and the policy trained on them learned to never delete. This module makes that signal
explicit, with the unit tests as the oracle (MBPP train only):

1. **Trajectories** (:func:`sample_trajectories`): plain sampling, batched, with a
   :class:`RecordingOperator` in the operator's place. It is the environment's
   :class:`~backtrack.rl.env.FeatureOperator` (the same feature extractor, called at the same
   decision points) that also keeps every observation and never deletes. Each completion is
   then run against the problem's tests.
2. **Restarts** (:func:`label_restarts`): in a failing trajectory, the ``positions`` decision
   steps with the least probable tokens are the candidate mistakes. For each, the completion
   is resampled ``restarts`` times from the prefix just before that token (batched: the
   prompt of a restart is the problem prompt plus the kept tokens), and every resulting
   program is run against the tests.
3. **Labels**: at a candidate step whose restarts pass at least ``min_pass_rate`` of the
   time, the label is action 1 (delete the token just sampled and resample); every other
   step, and every step of a passing trajectory, is 0. A restart may draw the same token
   again (the engine's ban rule would forbid it): candidates are improbable tokens, so this
   is rare, and it keeps restarts batchable.

Records are JSONL, one trajectory per line with its observations, labels and restart
verdicts, appended (and fsynced) as each trajectory is done, so an interrupted run resumes.

:func:`behaviour_cloning` pretrains a RecurrentPPO policy's actor on the labels through its
own LSTM (one trajectory per sequence), before PPO fine-tunes it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backtrack.engine.batch import BatchDecoder
from backtrack.engine.prompt import encode_prompt
from backtrack.engine.results import Step
from backtrack.engine.settings import GenerationConfig
from backtrack.evaluation.data import Problem
from backtrack.evaluation.prompts import build_prompt, postprocess, program_for
from backtrack.execution.sandbox import SandboxConfig, run_program
from backtrack.operators.features import FeatureExtractor
from backtrack.rl.env import FeatureOperator
from backtrack.rl.env_config import EnvConfig, load_problems
from backtrack.rl.label_settings import LabelSettings

__all__ = [
    "CloningStats",
    "RecordingOperator",
    "Trajectory",
    "behaviour_cloning",
    "label_restarts",
    "load_trajectories",
    "make_labels",
    "sample_trajectories",
]


class RecordingOperator(FeatureOperator):
    """:class:`FeatureOperator` that keeps every observation and token probability."""

    name = "recorder"

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__(extractor)
        self.observations: list[list[float]] = []
        self.probs: list[float] = []

    def __call__(self, step: Step) -> int:
        super().__call__(step)
        self.observations.append([float(x) for x in self.observation])
        self.probs.append(float(step.prob))
        return 0


@dataclass
class Trajectory:
    """One sampled completion, what the policy saw at each decision, and its labels.

    ``observations[t]`` is the observation after the ``t``-th completion token (period 1:
    one per token); ``labels[t]`` the action to learn there; ``restarts`` maps a candidate
    step to the verdicts of its restarts.
    """

    task_id: str
    seed: int
    token_ids: list[int]
    observations: list[list[float]]
    probs: list[float]
    passed: bool
    labels: list[int]
    restarts: dict[str, list[bool]]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, line: str) -> Trajectory:
        return cls(**json.loads(line))


def load_trajectories(path: str | Path) -> list[Trajectory]:
    """The labelled trajectories of a file (a line cut short by a crash is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(Trajectory.from_json(line))
        except (ValueError, TypeError):
            continue
    return out


def _verdicts(
    problems: Sequence[Problem],
    completions: Sequence[str],
    workers: int,
    sandbox: SandboxConfig | None = None,
) -> list[bool]:
    sandbox = sandbox or SandboxConfig(timeout_s=3.0)  # the environment's default limit
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(
            lambda pc: run_program(program_for(pc[0], pc[1]), sandbox).passed,
            zip(problems, completions, strict=True),
        )
        return list(results)


def sample_trajectories(
    model,
    tokenizer,
    problems: Sequence[Problem],
    config: GenerationConfig,
    extractor: FeatureExtractor,
    seeds: Sequence[int],
    batch_size: int = 16,
    workers: int = 2,
    sandbox: SandboxConfig | None = None,
) -> list[Trajectory]:
    """One plain-sampling trajectory per (problem, seed), batched, with its verdict."""
    if config.period != 1:
        raise ValueError("counterfactual labels need period 1 (an observation per token)")
    decoder = BatchDecoder(model, tokenizer)
    recorders = [RecordingOperator(extractor) for _ in problems]
    requests = [
        (build_prompt(p), rec, replace(config, seed=seed))
        for p, rec, seed in zip(problems, recorders, seeds, strict=True)
    ]
    results = decoder.generate_all(requests, batch_size)
    completions = [
        postprocess(p, r.text, "completion", config.stop)
        for p, r in zip(problems, results, strict=True)
    ]
    passed = _verdicts(problems, completions, workers, sandbox)
    trajectories = []
    for p, seed, rec, result, ok in zip(problems, seeds, recorders, results, passed, strict=True):
        if len(rec.observations) != len(result.token_ids):
            raise RuntimeError("a recorder missed a token (rollbacks during plain sampling?)")
        trajectories.append(
            Trajectory(
                p.task_id,
                seed,
                list(result.token_ids),
                rec.observations,
                rec.probs,
                ok,
                [0] * len(result.token_ids),
                {},
            )  # fmt: skip
        )
    return trajectories


def candidate_steps(trajectory: Trajectory, positions: int) -> list[int]:
    """The ``positions`` steps with the least probable tokens (the first token excluded:
    deleting it restarts the whole completion, which plain resampling already covers)."""
    order = sorted(range(1, len(trajectory.probs)), key=lambda t: trajectory.probs[t])
    return sorted(order[:positions])


def label_restarts(
    model,
    tokenizer,
    trajectories: Sequence[Trajectory],
    problems: dict[str, Problem],
    config: GenerationConfig,
    settings: LabelSettings | None = None,
    workers: int = 2,
    seed: int = 0,
    sandbox: SandboxConfig | None = None,
) -> Iterator[Trajectory]:
    """Label each trajectory (see the module docstring) as ``settings`` say (default:
    :class:`~backtrack.rl.label_settings.LabelSettings`'); yield it when done."""
    settings = settings or LabelSettings()
    decoder = BatchDecoder(model, tokenizer)
    rng = random.Random(seed)
    for trajectory in trajectories:
        if trajectory.passed:
            yield trajectory
            continue
        problem = problems[trajectory.task_id]
        prompt_ids = encode_prompt(tokenizer, build_prompt(problem))
        steps = candidate_steps(trajectory, settings.positions)
        requests, owners = [], []
        for step in steps:
            kept = trajectory.token_ids[:step]
            remaining = config.max_new_tokens - len(kept)
            for _ in range(settings.restarts):
                restart = replace(config, max_new_tokens=remaining, seed=rng.randrange(2**31))
                requests.append((prompt_ids + kept, None, restart))
                owners.append(step)
        results = decoder.generate_all(requests, settings.batch_size)
        completions = [
            postprocess(
                problem,
                tokenizer.decode(
                    trajectory.token_ids[:step] + list(result.token_ids),
                    skip_special_tokens=True,
                ),
                "completion",
                config.stop,
            )
            for step, result in zip(owners, results, strict=True)
        ]
        verdicts = _verdicts([problem] * len(completions), completions, workers, sandbox)
        restarts_of: dict[str, list[bool]] = {str(s): [] for s in steps}
        for step, ok in zip(owners, verdicts, strict=True):
            restarts_of[str(step)].append(bool(ok))
        labels = [0] * len(trajectory.token_ids)
        for step, oks in restarts_of.items():
            if oks and sum(oks) / len(oks) >= settings.min_pass_rate:
                labels[int(step)] = 1
        yield replace(trajectory, labels=labels, restarts=restarts_of)


def append_trajectory(path: Path, trajectory: Trajectory) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(trajectory.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class CloningStats:
    """What :func:`behaviour_cloning` did: losses per epoch and the final fit."""

    epochs: list[float]
    positives: int
    steps: int
    recall: float  # positive steps where the policy's most likely action is the label's
    false_deletions: float  # negative steps where it is not 0


def behaviour_cloning(
    policy: Any,
    trajectories: Sequence[Trajectory],
    epochs: int = 20,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> CloningStats:
    """Fit a RecurrentPPO policy's actor to the labels: weighted cross-entropy of each step's
    label through the policy's own LSTM, one trajectory per sequence. Positives are weighted
    by the negatives/positives ratio, so that rare restarts are not drowned by the zeros."""
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    data = [t for t in trajectories if t.observations]
    if not data:
        raise ValueError("no trajectory to learn from")
    positives = sum(sum(1 for y in t.labels if y) for t in data)
    steps = sum(len(t.labels) for t in data)
    weight_pos = (steps - positives) / positives if positives else 1.0
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    rng = random.Random(seed)
    device = policy.device
    hidden = policy.lstm_actor.hidden_size
    layers = policy.lstm_actor.num_layers

    def inputs(t: Trajectory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observations, a zero LSTM state and episode starts for one trajectory. The state
        starts at zero, which is what an episode start resets it to; with no start flagged,
        sb3 runs the LSTM over the sequence in one call, not step by step."""
        obs = torch.tensor(np.asarray(t.observations, dtype=np.float32), device=device)
        zeros = torch.zeros((layers, 1, hidden), device=device)
        return obs, zeros, torch.zeros(len(t.labels), device=device)

    def run(t: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
        obs, zeros, starts = inputs(t)
        actions = torch.tensor(t.labels, dtype=torch.long, device=device)
        states = RNNStates((zeros, zeros), (zeros, zeros))
        _, log_prob, _ = policy.evaluate_actions(obs, actions, states, starts)
        return log_prob, actions

    losses = []
    policy.set_training_mode(True)
    for _ in range(epochs):
        rng.shuffle(data)
        total = 0.0
        for t in data:
            log_prob, actions = run(t)
            weights = torch.where(actions > 0, weight_pos, 1.0)
            loss = -(weights * log_prob).sum() / weights.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / len(data))
    policy.set_training_mode(False)
    hits = misses = wrong = negatives = 0
    with torch.no_grad():
        for t in data:
            obs, zeros, starts = inputs(t)
            dist, _ = policy.get_distribution(obs, (zeros, zeros), starts)
            best = dist.distribution.probs.argmax(dim=-1).tolist()
            for label, choice in zip(t.labels, best, strict=True):
                if label:
                    hits += choice == label
                    misses += choice != label
                else:
                    negatives += 1
                    wrong += choice != 0
    return CloningStats(
        epochs=losses,
        positives=positives,
        steps=steps,
        recall=hits / max(1, hits + misses),
        false_deletions=wrong / max(1, negatives),
    )


def make_labels(
    env: EnvConfig,
    out: str | Path,
    limit: int | None = None,
    settings: LabelSettings | None = None,
    chunk: int = 32,
    seed: int = 0,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Label MBPP train trajectories under a training config's environment ``env``
    (``TrainConfig.load(path).env``, see :mod:`backtrack.rl.config`: its model, decoding
    settings and feature extractor, so the observations are the policy's) into ``out``,
    resuming what is there, as ``settings`` say (default: :class:`LabelSettings`'). Problem
    ``i`` is sampled with seed ``seed + i``."""
    from tqdm import tqdm

    settings = settings or LabelSettings()

    if env.split != "train":
        raise ValueError(f"labels come from MBPP train only (the config's split is {env.split!r})")
    problems = load_problems(env)[:limit]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {t.task_id for t in load_trajectories(out)} if out.exists() else set()
    todo = [(i, p) for i, p in enumerate(problems) if p.task_id not in done]
    if model_and_tokenizer is None:
        from backtrack.models import load_model

        model_and_tokenizer = load_model(
            env.model, dtype=env.dtype, device=env.device, backend=env.backend, progress=False
        )
    model, tokenizer = model_and_tokenizer
    by_id = {p.task_id: p for p in problems}
    sandbox = SandboxConfig(timeout_s=env.sandbox_timeout_s)  # the environment's verdicts
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), disable=not progress,
               desc="labels", unit="problem")  # fmt: skip
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        trajectories = sample_trajectories(
            model, tokenizer, [p for _, p in part], env.generation, env.feature_extractor(),
            [seed + i for i, _ in part], settings.batch_size, sandbox=sandbox,
        )  # fmt: skip
        for labelled in label_restarts(
            model, tokenizer, trajectories, by_id, env.generation, settings,
            seed=seed + part[0][0], sandbox=sandbox,
        ):  # fmt: skip
            append_trajectory(out, labelled)
            bar.update(1)
    bar.close()
    return out

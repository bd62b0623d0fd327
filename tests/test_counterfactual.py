"""Counterfactual restart labels and behaviour cloning (:mod:`backtrack.rl.counterfactual`).

On tiny-random-qwen2 no completion passes its tests, so the end-to-end test checks the
machinery (trajectories, restarts run in the real sandbox, resume) with all-zero labels; the
label rule itself is checked with a scripted oracle, and behaviour cloning on a synthetic rule
the LSTM policy can learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")

from backtrack.engine.settings import GenerationConfig  # noqa: E402
from backtrack.operators.features import FEATURE_HIGH, FEATURE_LOW  # noqa: E402
from backtrack.operators.spec import parse_operator  # noqa: E402
from backtrack.rl import counterfactual  # noqa: E402
from backtrack.rl.config import TrainConfig, TrainConfigError  # noqa: E402
from backtrack.rl.counterfactual import (  # noqa: E402
    Trajectory,
    behaviour_cloning,
    candidate_steps,
    label_restarts,
    load_trajectories,
    make_labels,
    sample_trajectories,
)
from backtrack.rl.env import BacktrackEnv  # noqa: E402
from backtrack.rl.env_config import EnvConfig, load_problems  # noqa: E402
from backtrack.rl.label_settings import LabelSettings  # noqa: E402
from backtrack.rl.train import train  # noqa: E402

# Observations of a batched trajectory against the environment's for the same greedy
# episode: the batch's logits differ from the single sequence's in the last bits
# (test_batch.py), and so do the features computed from them. Measured: at most 3.3e-6 over
# these 3 episodes of 12 tokens; the bound leaves 30x for other CPUs' kernels, and a feature
# off by one step moves by far more (probabilities of neighbouring tokens differ by ~1e-2).
OBS_TOL = 1e-4


def _config(mbpp: str, out: Path, **extra) -> dict:
    return {
        "model": "tiny-random-qwen2",
        "data_path": mbpp,
        "limit": 6,
        "max_new_tokens": 12,
        "K": 3,
        "output_dir": str(out),
        "total_timesteps": 32,
        "n_steps": 32,
        "batch_size": 16,
        "n_epochs": 1,
        "lstm_hidden_size": 16,
        "net_arch": [16],
        "checkpoint_every": 32,
        "progress_bar": False,
        **extra,
    }


def test_recorded_observations_are_the_environments(tiny, mbpp):
    """The recorder sees what the policy sees: the same features, at the same steps."""
    env_config = EnvConfig.from_mapping(
        {"data_path": mbpp, "limit": 3, "max_new_tokens": 12, "temperature": 0}
    )
    env = BacktrackEnv(env_config, model_and_tokenizer=tiny)
    model, tok = tiny
    trajectories = sample_trajectories(
        model, tok, env.problems, env_config.generation, env_config.feature_extractor(),
        seeds=[5, 6, 7], batch_size=2,
    )  # fmt: skip
    for problem, trajectory in zip(env.problems, trajectories, strict=True):
        obs, info = env.reset(options={"task_id": problem.task_id, "episode_seed": trajectory.seed})
        seen, done = [obs], False
        while not done:
            obs, _, done, _, info = env.step(0)
            if not done:
                seen.append(obs)
        assert info["token_ids"] == trajectory.token_ids
        assert len(seen) == len(trajectory.observations)
        gap = np.abs(np.asarray(seen) - np.asarray(trajectory.observations)).max()
        assert gap <= OBS_TOL
        assert trajectory.passed is info["passed"] is False  # a random model passes nothing


def test_labels_end_to_end_resume_and_damage(tiny, mbpp, tmp_path):
    out = tmp_path / "labels.jsonl"
    config = _config(mbpp, tmp_path / "run")
    env = TrainConfig.load(config).env
    make_labels(env, out, limit=3, settings=LabelSettings(positions=2, batch_size=4),
                model_and_tokenizer=tiny, progress=False)  # fmt: skip
    first = load_trajectories(out)
    ids = [p.task_id for p in load_problems(EnvConfig.from_mapping({"data_path": mbpp}))[:4]]
    assert [t.task_id for t in first] == ids[:3]
    for t in first:
        assert not t.passed and len(t.labels) == len(t.token_ids) == len(t.observations)
        assert sorted(map(int, t.restarts)) == candidate_steps(t, 2)
        assert all(len(v) == 2 and not any(v) for v in t.restarts.values())  # ran, failed
        assert not any(t.labels)
    # A line cut short by a crash is skipped and its problem redone; done ones are kept.
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:40] + "\n")
    make_labels(env, out, limit=4, settings=LabelSettings(positions=2, batch_size=4),
                model_and_tokenizer=tiny, progress=False)  # fmt: skip
    again = load_trajectories(out)
    assert sorted(t.task_id for t in again) == sorted(ids)
    assert again[:2] == first[:2]
    validation = TrainConfig.load({**config, "split": "validation"}).env
    with pytest.raises(ValueError, match="MBPP train only"):
        make_labels(validation, tmp_path / "x.jsonl", limit=1,
                    model_and_tokenizer=tiny, progress=False)  # fmt: skip


def test_a_step_is_labelled_where_its_restarts_pass(tiny, mbpp, monkeypatch):
    """Scripted oracle: the first candidate's restarts pass 2 of 2, the second's 1 of 2 (at
    min_pass_rate 0.75, not a label)."""
    model, tok = tiny
    env_config = EnvConfig.from_mapping({"data_path": mbpp, "limit": 1, "max_new_tokens": 12})
    problem = BacktrackEnv(env_config, model_and_tokenizer=tiny).problems[0]
    [trajectory] = sample_trajectories(
        model, tok, [problem], env_config.generation, env_config.feature_extractor(), [3]
    )
    steps = candidate_steps(trajectory, 2)
    scripted = iter([[True, True, True, False]])
    monkeypatch.setattr(counterfactual, "_verdicts", lambda problems, c, w, box: next(scripted))
    settings = LabelSettings(positions=2, restarts=2, min_pass_rate=0.75)
    [labelled] = label_restarts(model, tok, [trajectory], {problem.task_id: problem},
                                env_config.generation, settings)  # fmt: skip
    assert labelled.restarts == {str(steps[0]): [True, True], str(steps[1]): [True, False]}
    assert [t for t, y in enumerate(labelled.labels) if y] == [steps[0]]
    assert labelled.labels[steps[0]] == 1


class _Space(gym.Env):
    observation_space = gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32)
    action_space = gym.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


def test_behaviour_cloning_learns_where_to_delete(one_thread):  # conftest.py
    """A rule the features carry (delete where the token's probability, feature 0, is below
    0.3): after cloning, the policy's most likely action follows it. Measured: the loss
    breaks through after 6 to 12 epochs at this learning rate; 20 leave room."""
    from sb3_contrib import RecurrentPPO

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    trajectories = []
    for i in range(40):
        obs = rng.uniform(FEATURE_LOW, FEATURE_HIGH, size=(30, len(FEATURE_LOW)))
        obs = obs.astype(np.float32)
        labels = [int(o[0] < 0.3) for o in obs]
        trajectories.append(Trajectory(f"T/{i}", i, [0] * 30, obs.tolist(), [0.5] * 30, False,
                                       labels, {}))  # fmt: skip
    model = RecurrentPPO("MlpLstmPolicy", _Space(), seed=0,
                         policy_kwargs={"lstm_hidden_size": 16, "net_arch": [16]})  # fmt: skip
    stats = behaviour_cloning(model.policy, trajectories, epochs=20, learning_rate=1e-2)
    assert stats.positives > 200 and stats.epochs[-1] < stats.epochs[0]
    assert stats.recall >= 0.8 and stats.false_deletions <= 0.1


def test_training_pretrains_on_labels(tiny, mbpp, tmp_path):
    labels = tmp_path / "labels.jsonl"
    env = TrainConfig.load(_config(mbpp, tmp_path / "a")).env
    make_labels(env, labels, limit=2,
                settings=LabelSettings(positions=1, restarts=1, batch_size=2),
                model_and_tokenizer=tiny, progress=False)  # fmt: skip
    out = tmp_path / "run"
    train(_config(mbpp, out, pretrain_labels=str(labels), pretrain_epochs=2),
          model_and_tokenizer=tiny)  # fmt: skip
    fit = json.loads((out / "pretrain.json").read_text())
    assert len(fit["epochs"]) == 2 and fit["steps"] > 0
    # The cloned policy, before PPO, is kept and loads as an operator with its metadata.
    cloned = parse_operator(f"rl:path={out / 'pretrained.zip'}")
    assert cloned.metadata == json.loads((out / "backtrack.json").read_text())
    with pytest.raises(TrainConfigError, match="no such file"):
        train(_config(mbpp, out, pretrain_labels=str(tmp_path / "none.jsonl")),
              model_and_tokenizer=tiny)  # fmt: skip
    # Resuming from a checkpoint does not clone again, so it does not need the labels.
    train(_config(mbpp, out, pretrain_labels=str(tmp_path / "none.jsonl"), total_timesteps=64),
          resume=True, model_and_tokenizer=tiny)  # fmt: skip
    assert (out / "checkpoints" / "policy_64_steps.zip").is_file()
    bad = tmp_path / "bad.jsonl"
    t = load_trajectories(labels)[0]
    t.observations = [o[:3] for o in t.observations]
    bad.write_text(t.to_json() + "\n")
    with pytest.raises(TrainConfigError, match="features"):
        train(_config(mbpp, tmp_path / "b", pretrain_labels=str(bad)), model_and_tokenizer=tiny)


def test_period_must_be_one(tiny, mbpp):
    model, tok = tiny
    env_config = EnvConfig.from_mapping({"data_path": mbpp, "limit": 1, "period": 2})
    with pytest.raises(ValueError, match="period 1"):
        sample_trajectories(model, tok, [], env_config.generation,
                            env_config.feature_extractor(), [])  # fmt: skip
    assert isinstance(GenerationConfig(), GenerationConfig)


def test_label_refuses_bad_settings_before_anything_loads(tmp_path):
    """`backtrack label`'s flags are LabelSettings' fields: a bad one is a one-line error,
    found before the config or a model is read."""
    from typer.testing import CliRunner

    from backtrack.cli import app

    out = tmp_path / "labels.jsonl"
    args = ["label", "--config", str(tmp_path / "absent.yaml"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--min-pass-rate", "2"])
    assert result.exit_code == 2 and "min_pass_rate must be in (0, 1], got 2.0" in result.output
    assert not out.exists()
    result = CliRunner().invoke(app, [*args, "--restarts", "0"])
    assert result.exit_code == 2 and "restarts" in result.output

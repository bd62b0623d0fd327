"""A training run's configuration: :class:`TrainConfig` (the trainer's settings, and the
environment's in ``env``), read from one flat YAML mapping (see ``configs/train-*.yaml``).

A module of its own so that what reads a training config (the trainer, ``backtrack label``,
which labels under the config's environment) needs no trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backtrack.rl.env_config import EnvConfig

__all__ = ["TrainConfig", "TrainConfigError"]

_ALIASES = {"K": "max_rollback", "k": "max_rollback", "data": "data_path", "out": "output_dir"}


class TrainConfigError(ValueError):
    """The training configuration is invalid (unknown key, bad value, missing file)."""


@dataclass
class TrainConfig:
    """Trainer settings; ``env`` holds the environment's.

    Attributes:
        output_dir: where policy, checkpoints and logs go.
        total_timesteps: agent decisions (environment steps) to train for, in total.
        seed: seeds the policy, the environment's problem/seed draws and the action sampler.
        n_envs: environments stepped in turn (they share one loaded model).
        n_steps, batch_size, n_epochs, learning_rate, gamma, gae_lambda, clip_range, ent_coef,
            vf_coef, max_grad_norm: RecurrentPPO hyperparameters.
        lstm_hidden_size, net_arch: policy size (a small LSTM, then small MLP heads).
        checkpoint_every: save a checkpoint every this many steps.
        progress_bar: show sb3's progress bar (tqdm + rich).
        verbose: sb3 verbosity.
        policy_device: where the (tiny) policy runs; the LLM's device is ``env.device``.
        torch_threads: ``torch.set_num_threads`` during training (restored afterwards);
            ``None`` leaves it. On a busy shared CPU, 1 can be many times faster: the small
            LSTM and the tiny model suffer more from thread contention than they gain.
        init_keep_prob: the fresh policy's probability of action 0 (delete nothing) in every
            state; the rest is spread evenly over 1..K. A freshly initialised policy is
            uniform, i.e. it deletes tokens (K/2 on average) after 80% of the tokens with K=4,
            so its episodes are all rollback and budget and teach nothing about where a
            rollback helps. Starting near plain sampling (0.97: a rollback every ~30 tokens,
            about what probability-trend does) lets PPO move from a sensible baseline.
            ``None`` keeps sb3's uniform start. Not used when resuming.
        pretrain_labels: counterfactual restart labels (``backtrack label``, see
            :mod:`backtrack.rl.counterfactual`) to pretrain the fresh policy on by behaviour
            cloning before PPO (``pretrain_epochs`` passes at ``pretrain_learning_rate``);
            the fit is written to ``pretrain.json`` and the cloned policy, before any PPO
            update, to ``pretrained.zip``. Not used when resuming.
    """

    output_dir: str = "runs/rl"
    total_timesteps: int = 2048
    seed: int = 0
    n_envs: int = 1
    n_steps: int = 128
    batch_size: int = 64
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    lstm_hidden_size: int = 32
    net_arch: list[int] = field(default_factory=lambda: [32])
    checkpoint_every: int = 512
    progress_bar: bool = True
    verbose: int = 0
    policy_device: str = "cpu"
    torch_threads: int | None = None
    init_keep_prob: float | None = 0.97
    pretrain_labels: str | None = None
    pretrain_epochs: int = 20
    pretrain_learning_rate: float = 1e-2
    env: EnvConfig = field(default_factory=EnvConfig)

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "n_envs", "n_steps", "n_epochs", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise TrainConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise TrainConfigError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.pretrain_epochs < 1 or self.pretrain_learning_rate <= 0:
            raise TrainConfigError("pretrain_epochs must be >= 1 and pretrain_learning_rate > 0")
        if self.lstm_hidden_size < 1:
            raise TrainConfigError("lstm_hidden_size must be >= 1")
        if self.init_keep_prob is not None and not 0.0 < self.init_keep_prob < 1.0:
            raise TrainConfigError(
                f"init_keep_prob must be in (0, 1) or null, got {self.init_keep_prob}"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a flat mapping (YAML); unknown keys are an error, not silently dropped."""
        data = {_ALIASES.get(k, k): v for k, v in dict(data).items()}
        nested = data.pop("env", None) or {}
        data.update({_ALIASES.get(k, k): v for k, v in dict(nested).items()})
        own = {f.name for f in dataclasses.fields(cls)} - {"env"}
        env_keys = EnvConfig.field_names()
        unknown = sorted(set(data) - own - env_keys)
        if unknown:
            raise TrainConfigError(
                f"unknown training config keys: {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(own | env_keys))}"
            )
        try:
            env = EnvConfig.from_mapping({k: v for k, v in data.items() if k in env_keys})
            return cls(env=env, **{k: v for k, v in data.items() if k in own})
        except (TypeError, ValueError) as exc:
            raise TrainConfigError(f"invalid training config: {exc}") from exc

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any] | TrainConfig) -> TrainConfig:
        """From a YAML file path, a mapping, or a TrainConfig (returned as is)."""
        if isinstance(source, TrainConfig):
            return source
        if isinstance(source, Mapping):
            return cls.from_mapping(source)
        path = Path(source).expanduser()
        if not path.is_file():
            raise TrainConfigError(f"training config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise TrainConfigError(f"{path} must hold a mapping of settings")
        return cls.from_mapping(data)

    def to_flat_dict(self) -> dict[str, Any]:
        """The resolved configuration as one flat mapping (what config.yaml stores)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "env"}
        return {**own, **self.env.to_flat()}

"""Train a learned backtracking operator: RecurrentPPO (LSTM policy) on :class:`BacktrackEnv`.

Why RecurrentPPO: whether to delete tokens depends on how the last several tokens went, not
only on the current one; a small LSTM carries that history cheaply, while the features (see
:mod:`backtrack.operators.features`) stay per-token and identical at training and inference.

A run is described by one flat YAML mapping (see ``configs/train-*.yaml``): the environment's
fields (:class:`~backtrack.rl.env_config.EnvConfig`: model, data, decoding, K, rewards, judge) plus
the trainer's (:class:`~backtrack.rl.config.TrainConfig`, read by :mod:`backtrack.rl.config`).
Relative paths are taken from the current directory.

The output directory receives::

    policy.zip            the final policy, with backtrack.json (feature version...) inside
    backtrack.json        the same metadata, readable without unzipping
    config.yaml           the resolved configuration of the run
    checkpoints/          policy_<steps>_steps.zip every ``checkpoint_every`` steps
    tb/                   TensorBoard logs (rollout/ep_rew_mean, rollout/pass_rate, losses...)
    monitor.csv           one line per episode (problem, seed, reward, length, passed,
                          judge cost)

``resume=True`` loads the newest checkpoint and continues to ``total_timesteps`` without
resetting the step counter, drawing fresh problems and seeds (not the run's first ones again).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from backtrack.operators.learned import METADATA_NAME
from backtrack.rl.config import TrainConfig, TrainConfigError
from backtrack.rl.env import JUDGE_COST_KEYS, BacktrackEnv
from backtrack.rl.env_config import load_problems

__all__ = [
    "bias_towards_keeping",
    "latest_checkpoint",
    "train",
    "train_command",
]

_CHECKPOINT = re.compile(r"^policy_(\d+)_steps\.zip$")


def resume_seed(seed: int, steps: int) -> int:
    """The seed a run resumed at ``steps`` continues with: a fresh stream for each resume
    point, the same one when the same point is resumed again."""
    return int(np.random.SeedSequence([seed, steps]).generate_state(1)[0])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the most steps in ``output_dir/checkpoints``, if any."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return max(found)[1] if found else None


def policy_metadata(config: TrainConfig) -> dict[str, Any]:
    """What :class:`~backtrack.operators.learned.LearnedOperator` needs to use the policy."""
    from backtrack import __version__

    env = config.env
    return {
        **env.feature_extractor().metadata(),
        "max_rollback": env.max_rollback,
        "model": env.model,
        "split": env.split,
        # Every decoding setting of training, flat; LearnedOperator warns when evaluated
        # under other ones (stop strings aside).
        "generation": env.generation.to_flat(),
        "backtrack_version": __version__,
    }


def add_metadata(policy_zip: str | Path, metadata: Mapping[str, Any]) -> None:
    """Store ``backtrack.json`` inside a saved policy zip (sb3 ignores unknown entries)."""
    with zipfile.ZipFile(policy_zip, "a") as archive:
        if METADATA_NAME not in archive.namelist():
            archive.writestr(METADATA_NAME, json.dumps(dict(metadata), indent=2))


def bias_towards_keeping(policy: Any, keep_prob: float) -> None:
    """Make a fresh policy's action distribution ``keep_prob`` on 0, the rest even on 1..K.

    sb3 initialises the action head orthogonally with gain 0.01, so its logits are ~0 whatever
    the input; the head's bias then sets the starting distribution. Zeroing the weights as well
    makes the start exactly the same in every state (and still trainable).
    """
    head = policy.action_net
    n = head.out_features
    rest = (1.0 - keep_prob) / (n - 1)
    logits = torch.full((n,), math.log(rest))
    logits[0] = math.log(keep_prob)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(logits)


def _callbacks(config: TrainConfig, checkpoints: Path, metadata: Mapping[str, Any]) -> list:
    from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback

    class MetadataCheckpoint(CheckpointCallback):
        """sb3's checkpoints, each made loadable by LearnedOperator on its own."""

        def _on_step(self) -> bool:
            keep_going = super()._on_step()
            if self.n_calls % self.save_freq == 0:
                add_metadata(self._checkpoint_path(extension="zip"), metadata)
            return keep_going

    class EpisodeStats(BaseCallback):
        """Log the pass rate, discarded tokens and judge cost of finished episodes."""

        def _on_step(self) -> bool:
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=False):
                if done and "passed" in info:
                    self.logger.record_mean("rollout/pass_rate", float(info["passed"]))
                    discarded = float(info["tokens_discarded"])
                    self.logger.record_mean("rollout/tokens_discarded", discarded)
                    for key in JUDGE_COST_KEYS:
                        self.logger.record_mean(f"rollout/{key}", float(info[key]))
            return True

    save_freq = max(config.checkpoint_every // config.n_envs, 1)
    return [
        MetadataCheckpoint(save_freq=save_freq, save_path=str(checkpoints), name_prefix="policy"),
        EpisodeStats(),
    ]


#: What monitor.csv logs per episode besides sb3's r, l, t. Deletions are logged directly:
#: with a dense reward they do not follow from the reward.
MONITOR_COLUMNS = ("task_id", "episode_seed", "passed", "tokens_discarded", *JUDGE_COST_KEYS)


def _monitor_columns(path: Path, resume: bool) -> tuple[str, ...]:
    """The columns to log: :data:`MONITOR_COLUMNS`, or, when resuming, those of the file
    being appended to (sb3 appends rows without rewriting the header, so a run started by an
    older version keeps its own columns rather than getting misaligned rows)."""
    if not resume or not path.is_file():
        return MONITOR_COLUMNS
    with path.open(encoding="utf-8") as fh:
        fh.readline()  # sb3's JSON comment
        header = fh.readline().strip().split(",")
    known = [c for c in header if c in MONITOR_COLUMNS]
    return tuple(known) if known else MONITOR_COLUMNS


def _pretrain(policy: Any, cfg: TrainConfig, out: Path) -> None:
    """Behaviour cloning on counterfactual labels; the fit goes to ``pretrain.json``."""
    from backtrack.rl.counterfactual import behaviour_cloning, load_trajectories

    assert cfg.pretrain_labels is not None
    trajectories = load_trajectories(cfg.pretrain_labels)
    width = len(cfg.env.feature_extractor().names)
    for t in trajectories:
        if t.observations and len(t.observations[0]) != width:
            raise TrainConfigError(
                f"{cfg.pretrain_labels}: observations of {len(t.observations[0])} features, "
                f"the policy takes {width} (labels made under another feature version?)"
            )
        if any(label > cfg.env.max_rollback for label in t.labels):
            raise TrainConfigError(f"{cfg.pretrain_labels}: a label exceeds K")
    stats = behaviour_cloning(
        policy, trajectories, cfg.pretrain_epochs, cfg.pretrain_learning_rate, cfg.seed
    )
    (out / "pretrain.json").write_text(json.dumps(dataclasses.asdict(stats), indent=1))
    print(
        f"[backtrack] behaviour cloning on {len(trajectories)} trajectories "
        f"({stats.positives} restart labels in {stats.steps} steps): recall "
        f"{stats.recall:.2f}, deletions where none helps {stats.false_deletions:.3f}",
        file=sys.stderr,
    )


def train(
    config: str | Path | Mapping[str, Any] | TrainConfig,
    *,
    resume: bool = False,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> Path:
    """Train (or, with ``resume``, continue training) and return the path of ``policy.zip``.

    ``model_and_tokenizer`` reuses a loaded model instead of loading ``config.model``.
    """
    cfg = TrainConfig.load(config)
    out = Path(cfg.output_dir).expanduser()
    start = latest_checkpoint(out) if resume else None
    # Checked here, not when the config loads: `backtrack label` reads the same config to make
    # the labels this names. A resumed run has cloned them already, so it does not need them.
    if (
        start is None
        and cfg.pretrain_labels is not None
        and not Path(cfg.pretrain_labels).is_file()
    ):
        raise TrainConfigError(f"pretrain_labels: no such file {cfg.pretrain_labels}")
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from backtrack.rl.judges import make_judge

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    metadata = policy_metadata(cfg)
    (out / "config.yaml").write_text(
        yaml.safe_dump(cfg.to_flat_dict(), sort_keys=False), encoding="utf-8"
    )
    (out / METADATA_NAME).write_text(json.dumps(metadata, indent=2), encoding="utf-8")

    try:
        problems = load_problems(cfg.env)
    except Exception as exc:
        raise TrainConfigError(f"cannot load training problems: {exc}") from exc
    if model_and_tokenizer is None:
        from backtrack.models import load_model

        model_and_tokenizer = load_model(
            cfg.env.model, dtype=cfg.env.dtype, device=cfg.env.device, backend=cfg.env.backend
        )
    judge = make_judge(cfg.env.judge)

    def make_env(index: int):
        def build():
            env = BacktrackEnv(
                cfg.env, problems=problems, model_and_tokenizer=model_and_tokenizer, judge=judge
            )
            monitor_file = out / (f"monitor{index}.csv" if index else "monitor.csv")
            return Monitor(
                env,
                str(monitor_file),
                info_keywords=_monitor_columns(monitor_file, resume=start is not None),
                override_existing=start is None,
            )

        return build

    venv = DummyVecEnv([make_env(i) for i in range(cfg.n_envs)])
    tb = str(out / "tb")
    threads = torch.get_num_threads()
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    try:
        if start is not None:
            model = RecurrentPPO.load(
                start, env=venv, device=cfg.policy_device, tensorboard_log=tb, verbose=cfg.verbose
            )
            # sb3 seeds a loaded model (its RNGs and the environments) with the run's seed
            # again, so the resumed run would replay the problems and sampling draws of the
            # run's first episodes; a seed of its own per resume point continues with fresh ones.
            model.set_random_seed(resume_seed(cfg.seed, model.num_timesteps))
            remaining = cfg.total_timesteps - model.num_timesteps
            print(
                f"[backtrack] resuming from {start} at step {model.num_timesteps}", file=sys.stderr
            )
        else:
            if resume:
                print("[backtrack] no checkpoint to resume from; starting fresh", file=sys.stderr)
            model = RecurrentPPO(
                "MlpLstmPolicy",
                venv,
                n_steps=cfg.n_steps,
                batch_size=min(cfg.batch_size, cfg.n_steps * cfg.n_envs),
                n_epochs=cfg.n_epochs,
                learning_rate=cfg.learning_rate,
                gamma=cfg.gamma,
                gae_lambda=cfg.gae_lambda,
                clip_range=cfg.clip_range,
                ent_coef=cfg.ent_coef,
                vf_coef=cfg.vf_coef,
                max_grad_norm=cfg.max_grad_norm,
                policy_kwargs={
                    "lstm_hidden_size": cfg.lstm_hidden_size,
                    "n_lstm_layers": 1,
                    "net_arch": list(cfg.net_arch),
                },
                tensorboard_log=tb,
                seed=cfg.seed,
                device=cfg.policy_device,
                verbose=cfg.verbose,
            )
            if cfg.init_keep_prob is not None:
                bias_towards_keeping(model.policy, cfg.init_keep_prob)
            if cfg.pretrain_labels is not None:
                _pretrain(model.policy, cfg, out)
                # The cloned policy before any PPO update, loadable as an operator
                # (rl:path=.../pretrained.zip): what the labels alone teach.
                pretrained = out / "pretrained.zip"
                model.save(pretrained)
                add_metadata(pretrained, metadata)
            remaining = cfg.total_timesteps
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=_callbacks(cfg, checkpoints, metadata),
                reset_num_timesteps=start is None,
                tb_log_name="RecurrentPPO",
                progress_bar=cfg.progress_bar,
            )
        policy = out / "policy.zip"
        if policy.exists():
            policy.unlink()  # model.save writes a fresh zip; metadata is re-added below
        model.save(policy)
        add_metadata(policy, metadata)
    finally:
        torch.set_num_threads(threads)
        venv.close()
        judge.close()
    return policy


def train_command(config: Path, resume: bool = False) -> int:
    """``backtrack train --config FILE.yaml [--resume]``: train and print the policy path."""
    try:
        policy = train(config, resume=resume)
    except TrainConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume (checkpoints are kept)", file=sys.stderr)
        return 130
    print(policy)
    return 0

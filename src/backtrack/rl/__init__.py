"""Reinforcement learning of a backtracking operator (needs ``pip install 'backtrack[rl]'``).

* :mod:`backtrack.rl.env`: :class:`BacktrackEnv`, a Gymnasium environment over the engine.
* :mod:`backtrack.rl.config`: :class:`TrainConfig`, a training run's YAML configuration.
* :mod:`backtrack.rl.train`: ``train.train()`` / :func:`train_command` (RecurrentPPO).
* :mod:`backtrack.rl.counterfactual`: restart labels (``backtrack label``), behaviour cloning.
* :mod:`backtrack.rl.judges`: dense-reward judges.

Names are imported lazily so that ``import backtrack.rl`` does not pull in gymnasium,
stable-baselines3 or httpx until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BacktrackEnv": "backtrack.rl.env",
    "EnvConfig": "backtrack.rl.env_config",
    "FeatureOperator": "backtrack.rl.env",
    "TrainConfig": "backtrack.rl.config",
    "TrainConfigError": "backtrack.rl.config",
    "latest_checkpoint": "backtrack.rl.train",
    "train_command": "backtrack.rl.train",
    "make_judge": "backtrack.rl.judges",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'backtrack.rl' has no attribute {name!r}")

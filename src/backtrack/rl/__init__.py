"""Reinforcement learning of a backtracking operator (needs the ``rl`` extra:
``pip install 'backtrack-decoding[rl]'``).

* :mod:`backtrack.rl.env`: :class:`BacktrackEnv`, a Gymnasium environment over the engine.
* :mod:`backtrack.rl.config`: :class:`TrainConfig`, a training run's YAML configuration.
* :mod:`backtrack.rl.train`: ``train.train()`` / :func:`train_command` (RecurrentPPO).
* :mod:`backtrack.rl.counterfactual`: restart labels (``backtrack label``), behaviour cloning.
* :mod:`backtrack.rl.judges`: dense-reward judges.

Names are imported lazily so that ``import backtrack.rl`` does not pull in gymnasium,
stable-baselines3 or httpx until they are used.
"""

from __future__ import annotations

from backtrack.lazy import lazy_exports

# Each module -> the public names it defines.
_EXPORTS = {
    "backtrack.rl.env": ("BacktrackEnv", "FeatureOperator"),
    "backtrack.rl.env_config": ("EnvConfig",),
    "backtrack.rl.config": ("TrainConfig", "TrainConfigError"),
    "backtrack.rl.train": ("latest_checkpoint", "train_command"),
    "backtrack.rl.judges": ("make_judge",),
}

__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)

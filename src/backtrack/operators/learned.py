"""The learned operator: a RecurrentPPO policy trained by ``backtrack train``, used as an operator.

Spec string: ``rl:path=runs/x/policy.zip`` (optionally ``deterministic=false``, ``seed=N``,
``restore_memory=false``).

Why its state looks the way it does: the engine restores an operator's state on rollback, so
everything the policy remembers must be an immutable value. The state is the tuple
``(feature_state, (h, c), episode_start, rng)``:

* ``feature_state``: the :class:`~backtrack.operators.features.FeatureExtractor` history
  (a tuple of floats), the same extractor and settings the environment trained with;
* ``(h, c)``: the LSTM hidden and cell states, fresh numpy arrays from every call (made
  read-only), never modified in place;
* ``episode_start``: True until the first token, so the policy starts from a zero memory;
* ``rng``: the private torch RNG state used when actions are sampled (``None`` when
  deterministic), so sampling actions never disturbs the token sampler's global RNG stream.

With ``restore_memory=True`` (default) a rollback puts the LSTM back exactly as it was before
the deleted tokens. During training stable-baselines3 does not roll the LSTM back (see
:mod:`backtrack.rl.env`); ``restore_memory=False`` keeps the LSTM running through rollbacks,
matching training, while the feature history is still restored.

The policy zip carries a ``backtrack.json`` entry (feature names and version, window and
horizon) written by :mod:`backtrack.rl.train`; a policy whose feature version or names differ
from this code's is refused with a clear error rather than silently fed the wrong inputs.
"""

from __future__ import annotations

import functools
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backtrack.engine.results import Step
from backtrack.engine.settings import GenerationConfig
from backtrack.operators.base import Operator
from backtrack.operators.features import FEATURE_NAMES, FEATURE_VERSION, FeatureExtractor

#: Name of the metadata entry stored inside a policy zip (and of the sidecar file).
METADATA_NAME = "backtrack.json"


class PolicyLoadError(ValueError):
    """A policy file is missing, unreadable, or was trained with other features."""


def read_policy_metadata(path: str | Path) -> dict[str, Any]:
    """The ``backtrack.json`` metadata of a policy zip (or of a sidecar file next to it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PolicyLoadError(f"policy file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise PolicyLoadError(f"{path} is not a policy zip (corrupt or wrong file)")
    try:
        with zipfile.ZipFile(path) as archive:
            if METADATA_NAME in archive.namelist():
                return json.loads(archive.read(METADATA_NAME).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PolicyLoadError(f"cannot read policy {path}: {exc}") from exc
    for sidecar in (path.with_suffix(".json"), path.parent / METADATA_NAME):
        if sidecar.is_file():
            try:
                return json.loads(sidecar.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise PolicyLoadError(f"cannot read policy metadata {sidecar}: {exc}") from exc
    raise PolicyLoadError(
        f"{path} has no {METADATA_NAME} metadata (feature version); was it written by "
        "`backtrack train`?"
    )


def check_metadata(meta: dict[str, Any], path: str | Path = "policy") -> FeatureExtractor:
    """Refuse a policy trained with other features; return the extractor it was trained with."""
    version = meta.get("feature_version")
    names = meta.get("feature_names")
    if version != FEATURE_VERSION or list(names or ()) != list(FEATURE_NAMES):
        raise PolicyLoadError(
            f"{path} was trained with feature version {version} ({names}); this backtrack "
            f"computes version {FEATURE_VERSION} ({list(FEATURE_NAMES)}). Retrain the policy."
        )
    try:
        return FeatureExtractor(
            window=int(meta["window"]), max_new_tokens=int(meta["max_new_tokens"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyLoadError(f"{path}: bad feature settings in metadata ({exc})") from exc


@functools.lru_cache(maxsize=8)
def _load_policy(path: str, mtime_ns: int, size: int) -> Any:
    """Load a policy zip once per file version and share it.

    Why: an evaluation builds one operator per (problem, run) row, and loading the zip costs far
    more than a whole rollout of the policy. Sharing is safe because ``predict`` never changes
    the network; the per-sequence memory lives in each operator's own ``state``. ``mtime_ns``
    and ``size`` are part of the key so a retrained file at the same path is reloaded.
    """
    from sb3_contrib import RecurrentPPO

    del mtime_ns, size  # only part of the cache key
    return RecurrentPPO.load(path, device="cpu")


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.array(array, dtype=np.float32, copy=True)
    out.setflags(write=False)
    return out


class LearnedOperator(Operator):
    """Ask a trained RecurrentPPO policy, token by token, how many tokens to delete.

    Args:
        path: the ``policy.zip`` written by ``backtrack train`` (or a checkpoint of it).
        deterministic: take the policy's most likely action (default) instead of sampling.
        seed: seed of the private RNG used when ``deterministic`` is False; mixed with each
            generation's own seed, so problems and runs draw different numbers. The RNG only
            advances: a rollback never rewinds it.
        restore_memory: restore the LSTM state on rollback (exact; default) or keep it running
            through rollbacks as during training.
    """

    name = "rl"
    reads_text = False  # features from numbers and token ids (operators.features)

    def __init__(
        self,
        path: str,
        deterministic: bool = True,
        seed: int = 0,
        restore_memory: bool = True,
    ) -> None:
        self.path = str(path)
        self.deterministic = bool(deterministic)
        self.seed = int(seed)
        self.restore_memory = bool(restore_memory)
        self.metadata = read_policy_metadata(self.path)
        self.extractor = check_metadata(self.metadata, self.path)
        try:
            import sb3_contrib  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the rl operator needs the rl extra: pip install 'backtrack-decoding[rl]'"
            ) from exc
        try:
            file = Path(self.path).expanduser().resolve()
            stat = file.stat()
            self.model = _load_policy(str(file), stat.st_mtime_ns, stat.st_size)
        except Exception as exc:  # sb3 raises many kinds on a damaged archive
            raise PolicyLoadError(f"cannot load policy {self.path}: {exc}") from exc
        shape = getattr(self.model.observation_space, "shape", None)
        if shape != (len(FEATURE_NAMES),):
            raise PolicyLoadError(
                f"{self.path}: policy observation shape {shape} does not match the "
                f"{len(FEATURE_NAMES)} features"
            )
        self.max_rollback = int(self.model.action_space.n) - 1
        self._lstm_shape = tuple(self.model.policy.lstm_hidden_state_shape)

    def trained_generation(self) -> dict[str, Any]:
        """The decoding settings the policy was trained under, flat (see GenerationConfig).

        Policies saved before the whole config was recorded carry only some of them."""
        recorded = self.metadata.get("generation")
        if isinstance(recorded, dict):
            return dict(recorded)
        legacy = ("max_new_tokens", "temperature", "top_k", "period")
        return {k: self.metadata[k] for k in legacy if k in self.metadata}

    def begin(self, config: GenerationConfig) -> None:
        """Seed the sampled actions' stream for this generation (``seed`` and the
        generation's seed)."""
        if not self.deterministic and config.seed is not None and self.state is not None:
            # Each generation samples its actions from its own stream, seeded by the
            # operator's seed and the generation's: with the operator's seed alone, every
            # problem of an evaluation drew the same numbers at the same steps.
            mixed = int(np.random.SeedSequence([self.seed, int(config.seed)]).generate_state(1)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mixed)
                self.state = (*self.state[:3], torch.get_rng_state())

    def check_config(self, config: GenerationConfig) -> None:
        """Warn when decoding under settings the policy was not trained with.

        Stop strings are left out: they only cut the completion, the policy never sees them.
        Python shows a given warning once per call site, so an evaluation warns once.
        """
        trained = {k: v for k, v in self.trained_generation().items() if k != "stop"}
        differences = config.differences(trained)
        if differences:
            detail = ", ".join(
                f"{k}: trained {a!r}, now {b!r}" for k, (a, b) in differences.items()
            )
            warnings.warn(
                f"rl policy {self.path} is used under settings it was not trained with ({detail});"
                " its decisions may not transfer",
                UserWarning,
                stacklevel=2,
            )

    def initial_state(self) -> tuple[Any, ...]:
        zeros = _frozen(np.zeros(self._lstm_shape, dtype=np.float32))
        rng = None
        if not self.deterministic:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                rng = torch.get_rng_state()
        return (self.extractor.initial_state(), (zeros, zeros), True, rng)

    def __call__(self, step: Step) -> int:
        feature_state, lstm, episode_start, rng = self.state
        observation, feature_state = self.extractor.features(step, feature_state)
        if rng is None:
            action, new_lstm = self._act(observation, lstm, episode_start, deterministic=True)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                action, new_lstm = self._act(observation, lstm, episode_start, False)
                rng = torch.get_rng_state()
        self.state = (feature_state, new_lstm, False, rng)
        return action

    def _act(
        self, observation: np.ndarray, lstm: tuple, episode_start: bool, deterministic: bool
    ) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """One step of the actor network, called directly.

        Why not ``self.model.predict``: its generic wrapping (observation checks and
        conversion, training-mode switch, numpy round trips for a batch of environments) cost
        most of its 472 us per call. This is the same computation as sb3-contrib's
        ``RecurrentActorCriticPolicy.predict`` for one environment and one step, in the same
        order (features, the state reset at an episode start, the actor LSTM, the actor MLP,
        the action distribution), so decisions and states are identical (tests compare the two
        bit for bit, sampled actions included).
        """
        policy = self.model.policy
        with torch.no_grad():
            obs = torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1)
            features = policy.extract_features(obs, policy.pi_features_extractor)
            keep = 0.0 if episode_start else 1.0
            # torch.tensor copies: the stored states are read-only snapshots (from_numpy warns).
            h = keep * torch.tensor(lstm[0])
            c = keep * torch.tensor(lstm[1])
            out, (h, c) = policy.lstm_actor(features.reshape(1, 1, -1), (h, c))
            latent = policy.mlp_extractor.forward_actor(out.reshape(1, -1))
            distribution = policy._get_action_dist_from_latent(latent)
            action = distribution.get_actions(deterministic=deterministic)
        return int(action.reshape(())), (_frozen(h.numpy()), _frozen(c.numpy()))

    def set_state(self, state: Any) -> None:
        if self.state is not None and state is not None:
            if not self.restore_memory:
                # Keep the memory running; put back only the feature history.
                state = (state[0], self.state[1], self.state[2] and state[2], state[3])
            # The action RNG is never rewound. Rewound, the decision redone after a rollback
            # would reuse the very draw that asked for the rollback, so a sampled deletion
            # repeated itself until the retry cap (measured on MBPP validation: 233 rollbacks
            # per problem instead of ~1). In training sb3 draws from a stream that only
            # advances, so this is also the behaviour the policy was trained under.
            state = (*state[:3], self.state[3])
        self.state = state

    def __repr__(self) -> str:
        return (
            f"LearnedOperator(path={self.path!r}, deterministic={self.deterministic}, "
            f"restore_memory={self.restore_memory})"
        )

"""The one feature extractor shared by RL training (the environment) and inference (the operator).

Why one module: a learned policy is only as good as the agreement between what it saw while
training and what it sees while decoding. Both sides call :meth:`FeatureExtractor.features` on
the engine's :class:`~backtrack.engine.settings.Step`, so the two cannot drift apart; any change to
the features must bump :data:`FEATURE_VERSION`, which is stored with every trained policy and
checked when one is loaded.

The extractor is written as a pure function ``(step, state) -> (vector, new_state)``. The state
(the probabilities of the last ``window`` scored tokens) is a tuple of floats, so it can be
snapshotted and restored by the engine exactly like any operator state: after a rollback the
features are what they would have been had the deleted tokens never been sampled.

Cost: O(1) per step for the probability features, plus two C-level scans of the generated ids
(``list.count`` and a 3-gram search), which are negligible next to a forward pass. No text is
decoded or inspected; everything comes from numbers the engine already computed.

Features (all float32, each bounded, see :data:`FEATURE_LOW` / :data:`FEATURE_HIGH`):

====================  ========================================================================
``prob``              probability of the chosen token under the sampling distribution
``uncertainty``       ``1 - exp(-entropy)`` = ``1 - 1/perplexity``: 0 for a certain distribution,
                      towards 1 as the effective number of choices grows (vocabulary-size free)
``margin``            ``top1_prob - top2_prob`` of the sampling distribution
``top_rank``          ``1 / (1 + rank)`` of the token among the raw logits (1 = model's top choice)
``token_frequency``   share of the completion so far (this token included) equal to this token
``repeat_last``       1 if this token equals the previous one
``trigram_repeat``    1 if the last three tokens already occurred earlier in the completion
``position``          ``position / max_new_tokens`` (the training horizon), clipped to [0, 1]
``recent_mean_prob``  mean probability of the previous ``window`` scored tokens (``prob`` if none)
``prob_deviation``    ``prob - recent_mean_prob``, in [-1, 1]
``prob_ratio``        ``r / (1 + r)`` with ``r = prob / recent_mean_prob``: 0.5 = on trend
====================  ========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from backtrack.engine.results import Step

#: Bump whenever the meaning, order or normalisation of any feature changes.
FEATURE_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "prob",
    "uncertainty",
    "margin",
    "top_rank",
    "token_frequency",
    "repeat_last",
    "trigram_repeat",
    "position",
    "recent_mean_prob",
    "prob_deviation",
    "prob_ratio",
)
N_FEATURES = len(FEATURE_NAMES)

FEATURE_LOW = np.zeros(N_FEATURES, dtype=np.float32)
FEATURE_LOW[FEATURE_NAMES.index("prob_deviation")] = -1.0
FEATURE_HIGH = np.ones(N_FEATURES, dtype=np.float32)

#: The feature state: probabilities of the most recent scored tokens, oldest first.
FeatureState = tuple[float, ...]

_EPS = 1e-6


def _trigram_seen_before(generated: Sequence[int]) -> bool:
    """Whether the last 3 ids occur earlier (the occurrences may overlap the last one)."""
    n = len(generated)
    if n < 4:
        return False
    a, b, c = generated[n - 3], generated[n - 2], generated[n - 1]
    # Candidate starts 0..n-4: scan for ``a`` with list.index (C speed), then compare the rest.
    ids = generated if isinstance(generated, list) else list(generated)
    start = 0
    while True:
        try:
            i = ids.index(a, start, n - 3)
        except ValueError:
            return False
        if ids[i + 1] == b and ids[i + 2] == c:
            return True
        start = i + 1


class FeatureExtractor:
    """Turn engine steps into the observation vectors of the learned operator.

    Args:
        window: how many previous scored tokens the probability trend averages over.
        max_new_tokens: the horizon used to normalise ``position``; a policy keeps the value it
            was trained with, whatever ``max_new_tokens`` a later generation uses.

    Examples:
        >>> from backtrack.operators.base import example_step as step
        >>> extractor = FeatureExtractor(window=4, max_new_tokens=8)
        >>> vector, state = extractor.features(step(0.5, top2_prob=0.3), extractor.initial_state())
        >>> features = dict(zip(extractor.names, vector.tolist()))
        >>> round(features["margin"], 3), features["top_rank"]  # 0.5 - 0.3; the top choice
        (0.2, 1.0)
        >>> state                          # the history the next step's trend features read
        (0.5,)
    """

    names: tuple[str, ...] = FEATURE_NAMES
    version: int = FEATURE_VERSION

    def __init__(self, window: int = 10, max_new_tokens: int = 256) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.window = int(window)
        self.max_new_tokens = int(max_new_tokens)

    def initial_state(self) -> FeatureState:
        """No history yet."""
        return ()

    def features(self, step: Step, state: FeatureState) -> tuple[np.ndarray, FeatureState]:
        """The feature vector of ``step`` given the history ``state``, and the next state.

        Pure: neither ``step`` nor ``state`` is modified, and the same inputs always give the
        same outputs, which is what makes snapshot/restore exact.
        """
        prob = min(max(float(step.prob), 0.0), 1.0)
        entropy = max(float(step.entropy), 0.0)
        generated = step.generated
        n = len(generated)
        token = int(step.token_id)

        mean = sum(state) / len(state) if state else prob
        ratio = prob / max(mean, _EPS)

        vector = np.array(
            (
                prob,
                1.0 - math.exp(-entropy),
                float(step.top1_prob) - float(step.top2_prob),
                1.0 / (1.0 + max(int(step.rank), 0)),
                generated.count(token) / n if n else 0.0,
                1.0 if n >= 2 and generated[n - 2] == token else 0.0,
                1.0 if _trigram_seen_before(generated) else 0.0,
                step.position / self.max_new_tokens,
                mean,
                prob - mean,
                ratio / (1.0 + ratio),
            ),
            dtype=np.float32,
        )
        np.clip(vector, FEATURE_LOW, FEATURE_HIGH, out=vector)
        new_state = (*state[-(self.window - 1) :], prob) if self.window > 1 else (prob,)
        return vector, new_state

    def metadata(self) -> dict:
        """What a trained policy must record to be used with the same features later."""
        return {
            "feature_version": self.version,
            "feature_names": list(self.names),
            "window": self.window,
            "max_new_tokens": self.max_new_tokens,
        }

    def __repr__(self) -> str:
        return f"FeatureExtractor(window={self.window}, max_new_tokens={self.max_new_tokens})"

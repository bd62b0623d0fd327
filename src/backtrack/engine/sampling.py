"""Turning raw logits into the distribution we sample from, exactly as transformers does.

We reuse transformers' own logits warpers, in the order ``generate`` applies them
(temperature, top-k, top-p, min-p), and the same ``softmax`` + ``torch.multinomial`` call, so
that with the same seed our tokens are identical to ``model.generate``'s.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from backtrack.engine.types import GenerationConfig


def build_warpers(config: GenerationConfig) -> LogitsProcessorList:
    """The warpers ``generate(do_sample=True, ...)`` would build for these settings."""
    warpers = LogitsProcessorList()
    if config.greedy:
        return warpers
    if config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k:
        warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
    return warpers


class Sampler:
    """Samples one token from a row of raw logits, optionally with some tokens banned.

    ``generator``: the random stream to draw from; ``None`` draws from torch's global RNG.
    A ``torch.Generator`` seeded with ``S`` gives the same draws as ``torch.manual_seed(S)``
    followed by ``model.generate``, without touching (or being touched by) the global stream.
    """

    def __init__(self, config: GenerationConfig, generator: torch.Generator | None = None) -> None:
        self.greedy = config.greedy
        self.generator = generator
        self.warpers = build_warpers(config)
        # The warpers ignore input_ids; one placeholder avoids an allocation per step.
        self._no_ids = torch.zeros((1, 0), dtype=torch.long)

    def distribution(self, logits: torch.Tensor, banned: Collection[int] = ()) -> torch.Tensor:
        """Processed scores ``[1, V]`` for raw ``logits [1, V]`` with ``banned`` ids excluded.

        A ban that would exclude every candidate is ignored: a ban may redirect decoding,
        never make it impossible.
        """
        if banned:
            masked = logits.clone()
            masked[0, list(banned)] = -float("inf")
            scores = self.warpers(self._no_ids, masked)
            if torch.isfinite(scores).any():
                return scores
        return self.warpers(self._no_ids, logits)

    def sample(self, scores: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Draw a token from processed ``scores``; return it and the distribution used."""
        probs = torch.nn.functional.softmax(scores, dim=-1)
        if self.greedy:
            token = torch.argmax(scores, dim=-1)
        else:
            token = torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)
        return int(token), probs

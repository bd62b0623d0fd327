"""Helpers shared by the test modules."""

from __future__ import annotations

import torch


def fresh_logprobs(model, prompt_ids: list[int], token_ids: list[int]) -> list[float]:
    """Log-probability of each completion token from ONE forward pass over the whole sequence.

    The reference for exactness: a decoder that rolled back and resumed must have recorded
    these same values for its final tokens.
    """
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], device=model.device)
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    p = len(prompt_ids)
    return [float(lp[p - 1 + i, t]) for i, t in enumerate(token_ids)]

"""Helpers shared by the test modules: the references that exactness tests compare against.

Which reference, and why
------------------------
A decoder that rolled back and resumed must have recorded, for every final token, the
log-probability that decoding the final sequence *without any rollback* would give. The
reference that takes the same arithmetic path as the engine is the **incremental replay**
(:func:`replay_logprobs`): prefill the prompt on a fresh ``DynamicCache`` in one pass, then feed
the final tokens one at a time. Every matrix product then has the shapes the engine's had, so
on one machine the only difference left is what a rollback could have introduced.

A **one-shot** forward pass over prompt + completion (:func:`one_shot_logprobs`) reduces in
another order (one big product instead of many one-row ones). Its gap to the engine is pure
rounding that differs between CPUs and kernels (measured 1.7e-4 in fp32 on an AMD EPYC, under
1e-4 on an Intel Xeon), so it is kept only as a loose sanity bound, never as the exactness check.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, Qwen2ForCausalLM

# transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (the old name warns).
CACHE_KW = (
    "cache"
    if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters
    else "past_key_values"
)


def _logprob(last_logits: torch.Tensor, token: int) -> float:
    """The engine's formula: float32 copy of the last position's logits, logit - logsumexp."""
    row = last_logits[0].to(copy=True, dtype=torch.float32)
    return float(row[token] - torch.logsumexp(row, dim=-1))


@torch.inference_mode()
def replay_logprobs(
    model,
    prompt_ids: list[int],
    token_ids: list[int],
    refeed_last_prompt_token: bool = False,
) -> list[float]:
    """Log-probability of each token from an incremental replay without rollbacks.

    Prefill ``prompt_ids`` on a fresh cache in one forward pass, then feed ``token_ids`` one at
    a time, as the engine does. ``refeed_last_prompt_token`` reproduces the one split a rollback
    can change: once every generated token has been deleted, the engine has cropped the last
    prompt position and fed that token again on its own, so position 0's distribution (and
    that position's keys and values) come from a one-token pass instead of the prefill.
    """
    device = next(model.parameters()).device
    kw = {CACHE_KW: DynamicCache(config=model.config), "use_cache": True}
    # logits_to_keep=1 as the engine's prefill: the LM head over the last position only.
    out = model(input_ids=torch.tensor([list(prompt_ids)], device=device), logits_to_keep=1, **kw)
    if refeed_last_prompt_token:
        kw[CACHE_KW].crop(-1)
        out = model(input_ids=torch.tensor([[prompt_ids[-1]]], device=device), **kw)
    logprobs = []
    for i, token in enumerate(token_ids):
        logprobs.append(_logprob(out.logits[:, -1], token))
        if i + 1 < len(token_ids):
            out = model(input_ids=torch.tensor([[token]], device=device), **kw)
    return logprobs


def replay_logprobs_for(model, result) -> list[float]:
    """The incremental replay of a :class:`GenerationResult`, split as its decoding was.

    A rollback that emptied the completion (a ``RollbackEvent`` at position 0) left the last
    prompt token to be fed again; see :func:`replay_logprobs`.
    """
    from backtrack.engine import RollbackEvent

    emptied = any(isinstance(e, RollbackEvent) and e.position == 0 for e in result.trace)
    return replay_logprobs(model, result.prompt_token_ids, result.token_ids, emptied)


@torch.inference_mode()
def one_shot_logprobs(model, prompt_ids: list[int], token_ids: list[int]) -> list[float]:
    """Log-probability of each token from ONE forward pass over the whole sequence.

    Only a loose sanity bound (see the module docstring): it rounds differently.
    """
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], device=next(model.parameters()).device)
    lp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    p = len(prompt_ids)
    return [float(lp[p - 1 + i, t]) for i, t in enumerate(token_ids)]


def max_abs_diff(a: list[float], b: list[float]) -> float:
    """Largest absolute difference of two equally long lists (0.0 when both are empty)."""
    assert len(a) == len(b), (len(a), len(b))
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def backend_replay_logits(backend, result):
    """Yield ``(i, logits)``: the raw logits each final token ``i`` of a
    :class:`GenerationResult` was drawn from, by an incremental replay through a backend's own
    interface (any backend): prefill the prompt on a fresh cache, then feed the final tokens
    one at a time. A rollback that emptied the completion re-fed the last prompt token alone,
    as the engine did (see :func:`replay_logprobs_for`)."""
    from backtrack.engine import RollbackEvent

    emptied = any(isinstance(e, RollbackEvent) and e.position == 0 for e in result.trace)
    prompt, tokens = result.prompt_token_ids, result.token_ids
    cache = backend.new_cache()
    logits = backend.forward(cache, prompt)
    if emptied:
        cache.crop(-1)
        logits = backend.forward(cache, prompt[-1:])
    for i, token in enumerate(tokens):
        yield i, logits
        if i + 1 < len(tokens):
            logits = backend.forward(cache, [token])


def backend_replay_logprobs(backend, result) -> list[float]:
    """:func:`replay_logprobs_for` through a backend's own interface (any backend), by
    :func:`backend_replay_logits`."""
    replayed = backend_replay_logits(backend, result)
    return [
        float(logits[0, token] - torch.logsumexp(logits[0], dim=-1))
        for (_, logits), token in zip(replayed, result.token_ids, strict=True)
    ]

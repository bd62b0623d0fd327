"""Penalties on the raw logits: logit bias, repetition, presence/frequency and DRY.

They run in :func:`~backtrack.engine.sampling.draw` before temperature and the warpers, as in
vLLM and transformers, in this order (vLLM's): ``logit_bias`` added; the repetition penalty
(transformers/vLLM: a positive logit divided by it, a negative one multiplied) on every token
seen in the prompt *or* the completion, as vLLM counts them; presence and frequency penalties
(OpenAI: ``logit - presence * [count > 0] - frequency * count``) on tokens of the completion
only; then DRY ("don't repeat yourself", as in llama.cpp and KoboldCpp), over the prompt and the
completion as llama.cpp's server feeds both to its sampler.

State exact after rollback
--------------------------
Nothing here is kept between steps: every draw recomputes the counts from the row's current
tokens (the sampler reads the session's live ``prompt_ids`` and ``completion`` lists), so the
penalties are a function of the surviving tokens only, and a rollback has nothing to undo. The
alternative, counts kept incrementally and undone in lockstep by the undo log, saves nothing
worth its bookkeeping: recomputing costs about 0.6 ms per step for one row of 2,000 context
tokens on a 152k vocabulary (``benchmarks/bench_penalties.py``, a loaded 2-core machine),
against tens of milliseconds for a real model's forward pass. DRY's scan (a Z-function over
the reversed context) is linear in the context as well.

With every setting neutral (``presence = frequency = 0``, ``repetition = 1``,
``dry_multiplier = 0``, no bias) a row has no :class:`Penalties` and its logits are not touched
at all; a row whose penalties are on with neutral values goes through the arithmetic, which
then leaves every logit bit for bit as it was (``x - 0.0 * n``, ``x / 1.0``, ``x + 0.0``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Largest DRY exponent: base ** exponent stays below float32's maximum (llama.cpp clamps the
# same way, with FLOAT_MAX_LOG = log(FLT_MAX) ~ 88.7).
_FLOAT32_MAX_LOG = 88.0


@dataclass(frozen=True)
class Penalties:
    """One row's penalty settings (from :meth:`from_config`; ``None`` there when all are off).

    ``dry_breakers``: the token ids that end a DRY match (every token whose text contains one
    of ``GenerationConfig.dry_sequence_breakers``).
    """

    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_breakers: frozenset[int] = frozenset()
    bias: tuple[tuple[int, float], ...] = ()

    @functools.cached_property
    def bias_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``bias`` as (token ids, float64 values), built once per row: a token ban of a
        phrase list biases thousands of tokens, and building these every step cost the batch
        milliseconds per row."""
        ids = torch.tensor([t for t, _ in self.bias], dtype=torch.long)
        return ids, torch.tensor([b for _, b in self.bias], dtype=torch.float64)

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any = None) -> Penalties | None:
        """The penalties ``config`` (a ``GenerationConfig``) asks for, or ``None`` when none
        is on. ``tokenizer`` finds the DRY sequence breakers' tokens (needed only for DRY)."""
        bias = tuple(sorted(config.logit_bias.items()))
        neutral = (
            config.presence_penalty == 0.0
            and config.frequency_penalty == 0.0
            and config.repetition_penalty == 1.0
            and config.dry_multiplier == 0.0
            and not bias
        )
        if neutral:
            return None
        if tokenizer is not None and bias and bias[-1][0] >= len(tokenizer):
            raise ValueError(
                f"logit_bias names token {bias[-1][0]}, outside the vocabulary "
                f"(size {len(tokenizer)})"
            )
        breakers: frozenset[int] = frozenset()
        if config.dry_multiplier > 0 and config.dry_sequence_breakers:
            if tokenizer is None:
                raise ValueError("DRY's sequence breakers need the tokenizer")
            breakers = breaker_ids(tokenizer, tuple(config.dry_sequence_breakers))
        return cls(
            presence=float(config.presence_penalty),
            frequency=float(config.frequency_penalty),
            repetition=float(config.repetition_penalty),
            dry_multiplier=float(config.dry_multiplier),
            dry_base=float(config.dry_base),
            dry_allowed_length=int(config.dry_allowed_length),
            dry_breakers=breakers,
            bias=bias,
        )


@functools.lru_cache(maxsize=8)
def breaker_ids(tokenizer: Any, breakers: tuple[str, ...]) -> frozenset[int]:
    """Ids of the tokens whose text contains a sequence breaker (decoded once per tokenizer).

    A breaker string is matched inside a token's text, so ``"\\n\\n"`` or ``":\\n"`` tokens
    break a match at ``"\\n"`` too (llama.cpp tokenizes each breaker instead, which misses
    such merged tokens)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, text in enumerate(texts) if any(b in text for b in breakers))


def dry_penalties(
    context: Sequence[int],
    multiplier: float,
    base: float,
    allowed_length: int,
    breakers: frozenset[int] = frozenset(),
) -> dict[int, float]:
    """DRY: ``{token: penalty}`` for each token that would extend a repeat of the context's end.

    For every earlier position ``i``, ``L`` is how many tokens ending at ``i`` equal the
    context's last ``L`` tokens (no breaker among them); if ``L >= allowed_length``, the
    token that followed ``i`` would repeat ``L + 1`` tokens and is penalised by
    ``multiplier * base ** (L - allowed_length)`` (the largest such penalty per token).

    >>> dry_penalties([1, 2, 3, 9, 1, 2, 3], 1.0, 2.0, 2)    # "1 2 3" again: 9 would follow
    {9: 2.0}
    >>> dry_penalties([1, 2, 3, 9, 1, 2, 3], 1.0, 2.0, 2, breakers=frozenset({2}))
    {}
    """
    n = len(context)
    # The context's trailing run without a breaker bounds every match.
    run = 0
    while run < n and context[n - 1 - run] not in breakers:
        run += 1
    if run < allowed_length or n < 2:
        return {}
    rev = list(reversed(context))
    z = _z_function(rev)
    max_exponent = _FLOAT32_MAX_LOG / math.log(base) if base > 1 else math.inf
    out: dict[int, float] = {}
    # rev[k:] starts at context position n - 1 - k; z[k]: its match length with the end.
    for k in range(1, n):
        length = min(z[k], run)
        if length >= allowed_length:
            token = context[n - k]  # what followed position n - 1 - k
            penalty = multiplier * base ** min(length - allowed_length, max_exponent)
            if penalty > out.get(token, 0.0):
                out[token] = penalty
    return out


def _z_function(s: Sequence[int]) -> list[int]:
    """``z[k]``: the length of the longest common prefix of ``s`` and ``s[k:]`` (z[0] = 0)."""
    n = len(s)
    z = [0] * n
    left = right = 0
    for k in range(1, n):
        if k < right:
            z[k] = min(right - k, z[k - left])
        while k + z[k] < n and s[z[k]] == s[k + z[k]]:
            z[k] += 1
        if k + z[k] > right:
            left, right = k, k + z[k]
    return z


def apply_penalties(
    logits: torch.Tensor,
    penalties: Sequence[Penalties | None],
    histories: Sequence[tuple[Sequence[int], Sequence[int]] | None],
) -> torch.Tensor:
    """The penalised logits of a batch ``[B, V]``; ``logits`` itself when no row has any.

    Row ``r`` uses ``penalties[r]`` and ``histories[r] = (prompt ids, completion ids)``, its
    surviving tokens. Bias, repetition, presence and frequency run for all penalised rows at
    once; DRY's few penalised tokens are found row by row.
    """
    rows = [r for r, p in enumerate(penalties) if p is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    device = logits.device
    # Every touched entry (a token seen, or biased) is addressed by its flat index
    # row * V + token; only those entries are computed, as a dense pass over [B, V] would
    # compute them (x + 0, x - 0 * 0 elsewhere leave every other logit bit for bit), which
    # keeps a step at ~0.1 ms per row instead of milliseconds (benchmarks/bench_penalties.py).
    seen_keys, out_keys, bias_keys, bias_values, contexts = [], [], [], [], {}
    for r in rows:
        p = penalties[r]
        prompt, output = histories[r] or ((), ())
        context = [*prompt, *output]
        contexts[r] = context
        offset = r * vocab
        seen_keys.append(torch.tensor(context, dtype=torch.long) + offset)
        out_keys.append(torch.tensor(list(output), dtype=torch.long) + offset)
        ids, values = p.bias_tensors
        bias_keys.append(ids + offset)
        bias_values.append(values.to(logits.dtype))  # rounded once, as from the Python floats
    seen = torch.cat(seen_keys).to(device)
    biased = torch.cat(bias_keys).to(device)
    keys = torch.unique(torch.cat([seen, biased]))  # sorted
    out_unique, out_counts = torch.unique(torch.cat(out_keys).to(device), return_counts=True)
    count = torch.zeros(keys.shape, dtype=logits.dtype, device=device)
    count[torch.searchsorted(keys, out_unique)] = out_counts.to(logits.dtype)
    bias = torch.zeros(keys.shape, dtype=logits.dtype, device=device)
    bias[torch.searchsorted(keys, biased)] = torch.cat(bias_values).to(device)
    was_seen = torch.zeros(keys.shape, dtype=torch.bool, device=device)
    was_seen[torch.searchsorted(keys, seen)] = True
    row_of = keys // vocab

    def per_entry(field: str, neutral: float) -> torch.Tensor:
        """A per-row setting at every touched entry."""
        values = [getattr(p, field) if p is not None else neutral for p in penalties]
        return torch.tensor(values, dtype=logits.dtype, device=device)[row_of]

    flat = logits.reshape(-1)
    x = flat[keys] + bias
    repetition = per_entry("repetition", 1.0)
    x = torch.where(was_seen, torch.where(x > 0, x / repetition, x * repetition), x)
    x = x - per_entry("frequency", 0.0) * count
    x = x - per_entry("presence", 0.0) * (count > 0).to(logits.dtype)
    out = logits.clone(memory_format=torch.contiguous_format)
    out.view(-1)[keys] = x
    for r in rows:
        p = penalties[r]
        if p.dry_multiplier > 0:
            found = dry_penalties(
                contexts[r], p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_breakers
            )
            if found:
                ids = torch.tensor(list(found), device=device)
                amounts = torch.tensor(list(found.values()), dtype=logits.dtype, device=device)
                out[r, ids] -= amounts
    return out

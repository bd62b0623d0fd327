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
worth its bookkeeping: recomputing costs about 0.1 ms per step for 2,000 context tokens on a
152k vocabulary (``benchmarks/bench_penalties.py``), against tens of milliseconds for the forward
pass. DRY's scan (a Z-function over the reversed context) is linear in the context as well.

With every setting neutral (``presence = frequency = 0``, ``repetition = 1``,
``dry_multiplier = 0``, no bias) a row has no :class:`Penalties` and its logits are not touched
at all; a row whose penalties are on with neutral values goes through the arithmetic, which
then leaves every logit bit for bit as it was (``x - 0.0 * n``, ``x / 1.0``, ``x + 0.0``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
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
    surviving tokens. Bias, repetition, presence and frequency run for all
    penalised rows at once; DRY's few penalised tokens are found row by row.
    """
    rows = [r for r, p in enumerate(penalties) if p is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    device = logits.device
    chosen = [penalties[r] for r in rows]
    prompts = [list(histories[r][0]) if histories[r] else [] for r in rows]
    outputs = [list(histories[r][1]) if histories[r] else [] for r in rows]
    # Padded id tensors: padding points at an extra column V, cut off afterwards.
    width = max(1, max(len(p) + len(o) for p, o in zip(prompts, outputs, strict=True)))
    seen_ids = torch.full((len(rows), width), vocab, dtype=torch.long)
    out_ids = torch.full((len(rows), width), vocab, dtype=torch.long)
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        if p or o:
            seen_ids[i, : len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        if o:
            out_ids[i, : len(o)] = torch.tensor(o, dtype=torch.long)
    seen_ids, out_ids = seen_ids.to(device), out_ids.to(device)
    counts = torch.zeros((len(rows), vocab + 1), dtype=logits.dtype, device=device)
    counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=logits.dtype))
    counts = counts[:, :vocab]
    seen = torch.zeros((len(rows), vocab + 1), dtype=torch.bool, device=device)
    seen.scatter_(1, seen_ids, True)
    seen = seen[:, :vocab]

    index = torch.tensor(rows, device=device)
    sub = logits.index_select(0, index)
    bias = torch.zeros_like(sub)
    touched = seen.clone()
    for i, p in enumerate(chosen):
        if p.bias:
            ids = torch.tensor([t for t, _ in p.bias], device=device)
            bias[i, ids] = torch.tensor([b for _, b in p.bias], dtype=logits.dtype, device=device)
            touched[i, ids] = True

    def column(values: list[float]) -> torch.Tensor:
        """A per-row setting at every touched entry."""
        per_row = torch.tensor(values, dtype=logits.dtype, device=device)[:, None]
        return per_row.expand_as(sub)[touched]

    # Only the touched entries (seen or biased) change, so only they are computed: each of
    # them goes through the same operations as a dense pass would, and every other logit
    # is left as it is (a dense pass would leave it bit for bit the same: x + 0, x - 0 * 0).
    # Dense, the arithmetic cost ~10 ms per step over a 152k vocabulary on this machine.
    x = sub[touched] + bias[touched]
    count, was_seen = counts[touched], seen[touched]
    repetition = column([p.repetition for p in chosen])
    x = torch.where(was_seen, torch.where(x > 0, x / repetition, x * repetition), x)
    x = x - column([p.frequency for p in chosen]) * count
    x = x - column([p.presence for p in chosen]) * (count > 0).to(logits.dtype)
    sub[touched] = x
    for i, p in enumerate(chosen):
        if p.dry_multiplier > 0:
            found = dry_penalties(
                prompts[i] + outputs[i],
                p.dry_multiplier,
                p.dry_base,
                p.dry_allowed_length,
                p.dry_breakers,
            )
            if found:
                ids = torch.tensor(list(found), device=device)
                amounts = torch.tensor(list(found.values()), dtype=logits.dtype, device=device)
                sub[i, ids] -= amounts
    out = logits.clone()
    out[index] = sub
    return out


def parse_logit_bias(value: Mapping[Any, Any]) -> dict[int, float]:
    """``{token id: bias}`` from a mapping whose keys may be strings (JSON, the CLI)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"logit_bias must map token ids to biases, got {value!r}")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        if token < 0:
            raise ValueError(f"logit_bias token ids must be >= 0, got {token}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"logit_bias[{token}] must be a finite number, got {bias!r}")
        if not -100.0 <= bias <= 100.0:
            raise ValueError(f"logit_bias[{token}] must be in [-100, 100], got {bias}")
        out[token] = float(bias)
    return out

"""Turning raw logits into drawn tokens, for one row or a whole batch in one call.

We reuse transformers' own logits warpers, in the order ``generate`` applies them
(temperature, top-k, top-p, min-p), and draw exactly as ``torch.multinomial(probs, 1)`` does:
for one sample it divides the probabilities by exponential noise from the generator and takes
the argmax (``q = Exp(1)``, ``argmax(p / q)``, the PyTorch fast path for a single draw). So
with the same seed our tokens are identical to ``model.generate``'s.

:func:`draw` serves the single-sequence engine (one row) and the batch decoder (every active
row) alike: the warpers run once per group of rows with equal settings, each row draws its
noise from its own generator (so each row stays reproducible from its seed, whatever the
batch), and the statistics operators read (log-probability, rank, entropy, top-2) are
computed for all rows at once.

A row's bans may also be a request from its operator (:mod:`backtrack.engine.forcing`):
:class:`Only` (draw this token) or :class:`Greedy` (take the most likely token left, whatever
the row's settings, without using its random stream); and they may carry soft-ban weights
(:class:`Weighted`, :mod:`backtrack.engine.banning`): after the warpers, each weighted token's
probability is multiplied by its weight and the distribution renormalised (its log-weight is
added to its warped score), so the draw, greedy or sampled, is from ``p * w / sum(p * w)``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from backtrack.engine.draw_requests import Greedy, Only, Weighted
from backtrack.engine.penalties import Penalties, apply_penalties
from backtrack.engine.settings import GenerationConfig


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
    """One row's sampling settings and random stream.

    ``generator``: the random stream to draw from; ``None`` draws from torch's global RNG.
    A ``torch.Generator`` seeded with ``S`` gives the same draws as ``torch.manual_seed(S)``
    followed by ``model.generate``, without touching (or being touched by) the global stream.
    ``match_generate=False`` (the llama.cpp backend) lets a top-k row draw over its k
    candidates only: the same distribution, a different use of the random stream, and about
    9 ms less per token on a 152k vocabulary (the full-vocabulary noise ``generate`` draws).

    ``history``: the row's ``(prompt ids, completion ids)``, the live lists its session
    keeps (rollbacks shorten them in place), from which the penalties are recomputed at every
    draw; ``tokenizer`` finds DRY's sequence breakers. Both are needed only with penalties
    (:mod:`backtrack.engine.penalties`).
    """

    def __init__(
        self,
        config: GenerationConfig,
        generator: torch.Generator | None = None,
        match_generate: bool = True,
        history: tuple[Sequence[int], Sequence[int]] | None = None,
        tokenizer: object = None,
    ) -> None:
        self.penalties = Penalties.from_config(config, tokenizer)
        self.history = history
        self.greedy = config.greedy
        self.generator = generator
        self.warpers = build_warpers(config)
        # Rows with the same key are warped together in one call.
        self.top_k = None if config.greedy else config.top_k
        self.key = (config.greedy, config.temperature, config.top_k, config.top_p, config.min_p)
        # False: draw over the top-k support only (see draw()); the tokens then no longer
        # replay model.generate's random stream, which only a transformers model has anyway.
        self.support_only = not match_generate and not config.greedy and bool(config.top_k)
        self.top_logprobs = config.top_logprobs  # alternatives to report per token


@dataclass(frozen=True)
class Draws:
    """What :func:`draw` drew for ``B`` rows: per-row tensors ``[B]`` and the distributions.

    ``logits [B, V]`` are the raw logits drawn from; ``probs [B, V]`` is the distribution each
    row was drawn from (after warpers and bans); ``logprob`` and ``logit`` are the raw model's
    for the drawn token, ``rank`` its 0-based rank among the raw logits, ``entropy`` (nats) and
    ``top1``/``top2`` describe ``probs``. ``top_logprobs``/``top_ids`` ``[B, n]``: the ``n``
    largest raw log-probabilities of each row and their tokens (``n``: the most any row's
    sampler asked for; ``None`` when none did).
    """

    logits: torch.Tensor
    tokens: torch.Tensor
    probs: torch.Tensor
    logprob: torch.Tensor
    logit: torch.Tensor
    rank: torch.Tensor
    entropy: torch.Tensor
    top1: torch.Tensor
    top2: torch.Tensor
    top_logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None


def _warp(values: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """Each group of rows with equal settings warped in one call (``values``: ``[B, n]``)."""
    no_ids = values.new_zeros((values.shape[0], 0), dtype=torch.long)
    groups: dict[tuple, list[int]] = {}
    for row, sampler in enumerate(samplers):
        groups.setdefault(sampler.key, []).append(row)
    if len(groups) == 1:
        return samplers[0].warpers(no_ids, values)
    scores = torch.empty_like(values)
    for rows in groups.values():
        index = torch.tensor(rows, device=values.device)
        warpers = samplers[rows[0]].warpers
        scores[index] = warpers(no_ids[index], values.index_select(0, index))
    return scores


def _weights_of(banned: Collection[int]) -> Mapping[int, float]:
    return getattr(banned, "weights", None) or {}


def _reweigh(
    scores: torch.Tensor, banned: Sequence[Collection[int]], index: torch.Tensor | None = None
) -> torch.Tensor:
    """``scores`` with each row's log soft-ban weights added (``index``: the vocabulary ids of
    the columns, when the scores cover a row's top-k support only)."""
    rows = [(row, _weights_of(b)) for row, b in enumerate(banned) if _weights_of(b)]
    for row, weights in rows:
        if index is None:
            ids = torch.tensor(list(weights), device=scores.device)
            logw = torch.tensor([math.log(w) for w in weights.values()], device=scores.device)
            scores[row, ids] += logw.to(scores.dtype)
        else:
            for column, token in enumerate(index[row].tolist()):
                if token in weights:
                    scores[row, column] += math.log(weights[token])
    return scores


def _greedy_rows(samplers: Sequence[Sampler], banned: Sequence[Collection[int]]) -> list[bool]:
    return [s.greedy or isinstance(b, Greedy) for s, b in zip(samplers, banned, strict=True)]


def _mask_bans(logits: torch.Tensor, banned: Sequence[Collection[int]]) -> torch.Tensor:
    if not any(banned):
        return logits
    masked = logits.clone()
    for row, ids in enumerate(banned):
        if isinstance(ids, (Greedy, Weighted)):
            ids = ids.bans
        if isinstance(ids, Only):
            kept = masked[row, ids.token].clone()
            masked[row] = -float("inf")
            masked[row, ids.token] = kept
        elif ids:
            masked[row, list(ids)] = -float("inf")
    return masked


def _scores(
    logits: torch.Tensor, samplers: Sequence[Sampler], banned: Sequence[Collection[int]]
) -> torch.Tensor:
    """Warped scores ``[B, V]``: each group of rows with equal settings in one warper call.

    A ban that would exclude every candidate of a row is ignored for that row: a ban may
    redirect decoding, never make it impossible.
    """
    masked = _mask_bans(logits, banned)
    scores = _reweigh(_warp(masked, samplers), banned)
    if masked is not logits:
        # Rows whose bans left nothing to draw from are warped again without them.
        no_ids = logits.new_zeros((1, 0), dtype=torch.long)
        for row in range(len(samplers)):
            if banned[row] and not torch.isfinite(scores[row]).any():
                scores[row] = samplers[row].warpers(no_ids, logits[row : row + 1])[0]
                _reweigh(scores[row : row + 1], banned[row : row + 1])
    return scores


def _exponential(
    shape_like: torch.Tensor, samplers: Sequence[Sampler], greedy: Sequence[bool]
) -> torch.Tensor:
    """``Exp(1)`` noise, row ``r`` from ``samplers[r]``'s generator (1.0 for greedy rows)."""
    noise = torch.empty_like(shape_like)
    for row, sampler in enumerate(samplers):
        if greedy[row]:
            noise[row] = 1.0  # unused; keeps the division finite
        else:
            noise[row].exponential_(generator=sampler.generator)
    return noise


def _draws(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    probs: torch.Tensor,
    entropy: torch.Tensor,
    top: torch.Tensor,
) -> Draws:
    """The :class:`Draws` of ``tokens``; ``top``: each row's largest probabilities, sorted."""
    logit = logits.gather(1, tokens[:, None])[:, 0]
    return Draws(
        logits=logits,
        tokens=tokens,
        probs=probs,
        logprob=logit - torch.logsumexp(logits, dim=-1),
        logit=logit,
        rank=(logits > logit[:, None]).sum(dim=-1),
        entropy=entropy,
        top1=top[:, 0],
        top2=top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0]),
    )


def _draw_support(
    logits: torch.Tensor,
    samplers: Sequence[Sampler],
    banned: Sequence[Collection[int]],
    shaped: torch.Tensor,
) -> Draws:
    """:func:`draw` for rows that all sample under top-k with ``support_only``: the warpers,
    the softmax and the noise run over the k largest (unbanned) logits instead of the whole
    vocabulary. Top-k keeps nothing else, so the distribution is the same (top-p and min-p
    act on what top-k kept, as in ``generate``; ties at the k-th logit are cut at k).
    ``shaped``: the penalised logits (or ``logits``) the support is chosen from."""
    k = min(max(s.top_k or 0 for s in samplers), logits.shape[-1])
    masked = _mask_bans(shaped, banned)
    values, index = torch.topk(masked, k, dim=-1)
    scores = _reweigh(_warp(values, samplers), banned, index)
    for row in range(len(samplers)):
        if banned[row] and not torch.isfinite(scores[row]).any():
            # The bans left nothing: drawn without them, as in the full path.
            values[row], index[row] = torch.topk(shaped[row], k)
            scores[row] = _warp(values[row : row + 1], samplers[row : row + 1])[0]
            _reweigh(scores[row : row + 1], banned[row : row + 1], index[row : row + 1])
    support = torch.nn.functional.softmax(scores, dim=-1)
    # A greedy row's noise is 1: its choice is the largest probability of the support.
    noise = _exponential(support, samplers, _greedy_rows(samplers, banned))
    choice = torch.div(support, noise).argmax(dim=-1, keepdim=True)
    tokens = index.gather(1, choice)[:, 0]
    probs = logits.new_zeros(logits.shape).scatter_(1, index, support)
    entropy = -torch.special.xlogy(support, support).sum(dim=-1)
    return _draws(logits, tokens, probs, entropy, support.topk(min(2, k), dim=-1).values)


def draw(
    logits: torch.Tensor, samplers: Sequence[Sampler], banned: Sequence[Collection[int]]
) -> Draws:
    """Draw one token for each row of raw ``logits [B, V]`` (float32).

    Row ``r`` uses ``samplers[r]`` (its warpers and generator) and excludes ``banned[r]``,
    and draws exactly what it would draw alone, whatever the other rows are: rows are drawn
    in groups that take the same path (over the top-k support or the whole vocabulary, and
    the same k), since the path decides how much of a row's random stream a draw uses.

    Penalties (each row's own, from its surviving tokens) shape the logits first, before
    the bans and the warpers; the statistics (``logprob``, ``logit``, ``rank``) stay the raw
    model's.
    """
    drawn = _draw_rows(logits, samplers, banned)
    n = min(max((s.top_logprobs for s in samplers), default=0), logits.shape[-1])
    if not n:
        return drawn
    # The raw model's alternatives, by the same formula as ``logprob`` (logit - logsumexp), so
    # the drawn token's entry equals its ``logprob`` exactly when it is among them.
    top = torch.topk(logits, n, dim=-1)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    return replace(drawn, top_logprobs=top.values - lse, top_ids=top.indices)


def _draw_rows(
    logits: torch.Tensor, samplers: Sequence[Sampler], banned: Sequence[Collection[int]]
) -> Draws:
    """:func:`draw` without the reported alternatives."""
    shaped = apply_penalties(logits, [s.penalties for s in samplers], [s.history for s in samplers])
    groups: dict[tuple[bool, int | None], list[int]] = {}
    for row, sampler in enumerate(samplers):
        groups.setdefault((sampler.support_only, sampler.top_k), []).append(row)
    if len(groups) <= 1:
        return _draw_group(logits, samplers, banned, shaped)
    parts = []
    for rows in groups.values():
        index = torch.tensor(rows, device=logits.device)
        part = _draw_group(
            logits[index],
            [samplers[r] for r in rows],
            [banned[r] for r in rows],
            shaped[index] if shaped is not logits else None,
        )
        parts.append((index, part))
    return Draws(
        **{
            name: _stitch(logits, [(index, getattr(part, name)) for index, part in parts])
            for name in Draws.__dataclass_fields__
            if name not in ("logits", "top_logprobs", "top_ids")
        },
        logits=logits,
    )


def _stitch(logits: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-row values of several groups of rows, put back in the rows' order."""
    first = parts[0][1]
    out = first.new_empty((logits.shape[0], *first.shape[1:]))
    for index, values in parts:
        out[index] = values
    return out


def _draw_group(
    logits: torch.Tensor,
    samplers: Sequence[Sampler],
    banned: Sequence[Collection[int]],
    shaped: torch.Tensor | None = None,
) -> Draws:
    """:func:`draw` for rows that take one path; ``shaped``: the penalised logits drawn from
    (``None``: the raw ``logits`` themselves)."""
    shaped = logits if shaped is None else shaped
    if samplers and all(s.support_only for s in samplers):
        return _draw_support(logits, samplers, banned, shaped)
    scores = _scores(shaped, samplers, banned)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    # torch.multinomial(p, 1) is argmax(p / q) for q ~ Exp(1) drawn over the whole row from
    # the generator; drawing q row by row keeps every row's stream its own.
    greedy_rows = _greedy_rows(samplers, banned)
    noise = _exponential(probs, samplers, greedy_rows)
    sampled = torch.div(probs, noise, out=noise).argmax(dim=-1)
    greedy = torch.tensor(greedy_rows, device=logits.device)
    tokens = torch.where(greedy, scores.argmax(dim=-1), sampled) if greedy.any() else sampled
    # Entropy and top-2 over the support. Under top-k the support is a few dozen entries, so
    # when every row's support fits in the largest k (ties at the k-th value, or a row without
    # top-k, can make it wider: checked by the (k+1)-th largest being 0) the k largest
    # probabilities hold all of it and a pass over the whole vocabulary is saved.
    widest = min(max((s.top_k or 0 for s in samplers), default=0), probs.shape[-1] - 1)
    top = torch.topk(probs, widest + 1, dim=-1).values if widest else None
    if top is not None and not bool(top[:, widest].any()):
        top = top[:, :widest]
        entropy = -torch.special.xlogy(top, top).sum(dim=-1)
    else:
        entropy = -torch.special.xlogy(probs, probs).sum(dim=-1)
        top = torch.topk(probs, min(2, probs.shape[-1]), dim=-1).values
    return _draws(logits, tokens, probs, entropy, top)

"""Plain data objects of the engine: configuration, step records, events and results."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from backtrack.engine.banned import BannedStrings
from backtrack.engine.penalties import parse_logit_bias


@dataclass(frozen=True)
class Budget:
    """Bounds on the extra work backtracking may cause in one generation.

    ``None`` means "derive from ``max_new_tokens``": at most ``max_new_tokens`` discarded tokens
    and ``2 * max_new_tokens`` forward passes, so the worst case costs at most twice the forward
    passes of plain decoding. Once any bound is reached, decoding continues without backtracking.

    Attributes:
        max_backtracks: rollbacks allowed per generation (``None``: no limit of their own).
        max_discarded_tokens: tokens that rollbacks may delete in total.
        max_forward_passes: hard cap on forward passes (the prefill counts as one); decoding
            stops with ``finish_reason="budget"`` if it is reached before another stop.
    """

    max_backtracks: int | None = None
    max_discarded_tokens: int | None = None
    max_forward_passes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_backtracks", "max_discarded_tokens", "max_forward_passes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Budget.{name} must be >= 0 or None, got {value}")

    def resolve(self, max_new_tokens: int) -> Budget:
        """Concrete limits for a generation of at most ``max_new_tokens`` tokens."""
        discarded = (
            max_new_tokens if self.max_discarded_tokens is None else self.max_discarded_tokens
        )
        forward = 2 * max_new_tokens if self.max_forward_passes is None else self.max_forward_passes
        backtracks = discarded if self.max_backtracks is None else self.max_backtracks
        return Budget(backtracks, discarded, max(forward, 1))


BanPolicy = Literal["accumulate", "next", "none"]


# The most alternatives a call may ask for per token (OpenAI's chat limit).
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode one sequence.

    Sampling follows transformers' order: temperature, top-k, top-p, min-p. ``temperature=0``
    means greedy decoding.

    The defaults below are the project's sampling protocol, the paper's (a lowered temperature
    with a top-k filter), which ``generate``, ``eval`` and training decode with unless told
    otherwise; like a server's generation defaults, they apply wherever a setting is left out.
    Plain sampling of the whole vocabulary is ``temperature=1.0, top_k=None``. Every other
    layer (the CLI, :class:`~backtrack.evaluation.settings.EvalSettings`, training configs)
    takes its defaults from here.

    Attributes:
        max_new_tokens: length limit of the final completion (rolled-back tokens do not count).
        temperature, top_k, top_p, min_p: the sampling distribution (``None``/0 disables a filter).
        stop: stop strings, matched across token boundaries in the completion text.
        eos_token_ids: token ids that end decoding; ``None`` takes the model's generation config
            (and the tokenizer's EOS token).
        seed: if set, sampling draws from a ``torch.Generator`` seeded with it: the same draws
            as ``torch.manual_seed(seed)`` right before ``model.generate``.
        period: the operator is consulted every ``period`` tokens (the paper's kappa).
        ban: what happens to a token deleted by a rollback at the position where decoding
            resumes. ``"accumulate"`` (default) bans every token rejected at that position
            until the prefix before it changes, so the same token cannot simply come back (at
            temperature 0 it otherwise always would) and rejections cannot ping-pong between
            two tokens; ``"next"`` bans only the last rejected token for the next draw there;
            ``"none"`` bans nothing. A ban never empties the distribution: if every candidate
            is banned, the ban is ignored for that draw.
        max_retries_per_position: once decoding has resumed this many times at one position
            (under the same prefix), the token sampled there is kept without consulting the
            operator. A flat distribution where even the best token looks "too unlikely" would
            otherwise make a probability-based operator reject token after token at the same
            place until the whole budget is gone (a loop without this cap and without bans
            livelocked like this on 9 of 20 HumanEval problems). ``None`` disables the cap.
        rollback_window: the deepest a rollback may reach, in tokens behind the furthest
            position decoding has reached (``None``: unbounded). Everything older is final,
            so it can be streamed: :meth:`Decoder.stream_text` and the server commit text
            that falls out of the window. A rollback that would reach further is shortened
            to the window. An operator that deletes only the token just sampled (``k=1``, the
            default of most heuristics) never reaches more than one token back, so any window
            leaves its output unchanged; ``GenerationResult.counts.deepest_rollback`` says
            how deep a generation's rollbacks went.
        banned_strings: phrases the completion must never contain (see
            :mod:`backtrack.engine.banned`): when one appears, decoding rolls back to the token
            where it begins and bans that token there. Enforced after every token, whatever
            the operator, ``period``, retry cap or budget (a spent forward-pass budget ends
            decoding early instead), and held back from streaming while it could still grow
            into a match. Matched in the completion text, across token boundaries.
        banned_regex: regular expressions banned the same way (``regex`` module syntax).
        banned_ignore_case: match banned strings and regexes case-insensitively.
        presence_penalty, frequency_penalty: OpenAI's penalties, in [-2, 2]: subtract
            ``presence * [count > 0] + frequency * count`` from the logit of each token the
            completion already holds (the surviving tokens; the prompt does not count).
        repetition_penalty: transformers' and vLLM's, > 0 (1 is off): the logit of a token
            seen in the prompt or the completion is divided by it if positive, multiplied if
            negative (vLLM counts the prompt too).
        dry_multiplier, dry_base, dry_allowed_length, dry_sequence_breakers: DRY as in
            llama.cpp and KoboldCpp (``dry_multiplier`` 0 is off): a token that would extend a
            repeat of the context's last ``L >= dry_allowed_length`` tokens loses
            ``dry_multiplier * dry_base ** (L - dry_allowed_length)``; a token whose text
            contains a sequence breaker ends a match. Over the prompt and the completion.
        logit_bias: ``{token id: bias}`` added to the raw logits (OpenAI's, in [-100, 100]).
            All penalties act on the raw logits before temperature and the warpers
            (:mod:`backtrack.engine.penalties`), are recomputed from the surviving tokens at
            every draw (so rollbacks leave nothing behind), and are off by default.
        budget: bounds on backtracking work, see :class:`Budget`.
        top_logprobs: also record, for every final token, the ``top_logprobs`` most likely
            tokens of the raw model distribution and their log-probabilities
            (``GenerationResult.top_logprobs``; 0: none, at no extra cost). A report asked for
            by one call (the server's ``logprobs``), not a decoding setting: it changes
            nothing that is drawn, so it is not part of the flat settings.
    """

    # 512, `eval`'s length before there was one default (`generate` had 128, the library 256):
    # HumanEval and MBPP solutions fit with room, and decoding ends sooner at EOS or a stop
    # string, so the limit only costs on a completion that runs on.
    max_new_tokens: int = 512
    temperature: float = 0.5
    top_k: int | None = 50
    top_p: float | None = None
    min_p: float | None = None
    stop: Sequence[str] = ()
    eos_token_ids: Sequence[int] | None = None
    seed: int | None = None
    period: int = 1
    ban: BanPolicy = "accumulate"
    max_retries_per_position: int | None = 3
    rollback_window: int | None = None
    banned_strings: Sequence[str] = ()
    banned_regex: Sequence[str] = ()
    banned_ignore_case: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    # llama.cpp's default breakers.
    dry_sequence_breakers: Sequence[str] = ("\n", ":", '"', "*")
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.period < 1:
            raise ValueError(f"period must be >= 1, got {self.period}")
        if self.ban not in ("accumulate", "next", "none"):
            raise ValueError(f"ban must be 'accumulate', 'next' or 'none', got {self.ban!r}")
        if self.max_retries_per_position is not None and self.max_retries_per_position < 0:
            raise ValueError(
                "max_retries_per_position must be >= 0 or None, "
                f"got {self.max_retries_per_position}"
            )
        if self.rollback_window is not None and self.rollback_window < 0:
            raise ValueError(f"rollback_window must be >= 0 or None, got {self.rollback_window}")
        # One spelling of the stop strings (a tuple), so equal settings compare equal.
        object.__setattr__(
            self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        )
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        for name in ("banned_strings", "banned_regex"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.banned_strings or self.banned_regex:
            self.bans()  # validates: empty strings, bad or empty-matching patterns
        self._check_penalties()

    def _check_penalties(self) -> None:
        """Validate the penalty settings and give them one spelling (one-line errors)."""
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and -2.0 <= value <= 2.0):
                raise ValueError(f"{name} must be in [-2, 2], got {value!r}")
        finite = {
            name: getattr(self, name)
            for name in ("repetition_penalty", "dry_multiplier", "dry_base")
        }
        for name, value in finite.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.dry_multiplier < 0:
            raise ValueError(f"dry_multiplier must be >= 0, got {self.dry_multiplier}")
        if self.dry_base <= 1:
            raise ValueError(f"dry_base must be > 1, got {self.dry_base}")
        if isinstance(self.dry_allowed_length, bool) or not isinstance(
            self.dry_allowed_length, int
        ):
            raise ValueError(
                f"dry_allowed_length must be an integer, got {self.dry_allowed_length!r}"
            )
        if self.dry_allowed_length < 1:
            raise ValueError(f"dry_allowed_length must be >= 1, got {self.dry_allowed_length}")
        breakers = self.dry_sequence_breakers
        object.__setattr__(
            self,
            "dry_sequence_breakers",
            (breakers,) if isinstance(breakers, str) else tuple(breakers),
        )
        if any(not isinstance(b, str) or not b for b in self.dry_sequence_breakers):
            raise ValueError("dry_sequence_breakers must be non-empty strings")
        # One spelling (int keys, float biases), read-only in effect: a frozen config's bias.
        object.__setattr__(self, "logit_bias", _FrozenBias(parse_logit_bias(self.logit_bias or {})))

    def bans(self) -> BannedStrings | None:
        """The banned strings and regexes compiled, or ``None`` when nothing is banned."""
        if not (self.banned_strings or self.banned_regex):
            return None
        return BannedStrings(self.banned_strings, self.banned_regex, self.banned_ignore_case)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    # ---------------------------------------------------------------- flat form
    # Settings files (training YAML, a policy's metadata, an evaluation's meta.json) and the
    # CLI flags spell a GenerationConfig as one flat mapping: the fields below, with the
    # budget's three bounds at top level. ``seed`` and ``eos_token_ids`` belong to one call
    # (a seed per evaluation cell, EOS from the model), so they are not part of it.

    def to_flat(self) -> dict[str, Any]:
        """The settings as one flat, JSON-ready mapping (keys: :data:`GENERATION_KEYS`)."""
        flat = {
            name: getattr(self, name)
            for name in GENERATION_KEYS
            if name not in BUDGET_KEYS and name not in _LIST_KEYS
        }
        flat.update({name: list(getattr(self, name)) for name in _LIST_KEYS})
        # JSON's spelling: string keys (from_flat turns them back into ids).
        flat["logit_bias"] = {str(k): v for k, v in self.logit_bias.items()}
        flat.update({name: getattr(self.budget, name) for name in BUDGET_KEYS})
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], **base: Any) -> GenerationConfig:
        """Build from a flat mapping (:meth:`to_flat`'s keys; others are an error).

        ``base``: defaults for keys the mapping leaves out (flat keys too).
        """
        merged = {**base, **dict(flat)}
        unknown = sorted(set(merged) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(
                f"unknown generation settings: {', '.join(unknown)}; "
                f"allowed: {', '.join(GENERATION_KEYS)}"
            )
        budget = Budget(**{k: merged.pop(k) for k in BUDGET_KEYS if k in merged})
        for name in _LIST_KEYS:
            if name in merged:
                merged[name] = tuple(merged[name] or ())
        return cls(budget=budget, **merged)

    def updated(self, flat: Mapping[str, Any]) -> GenerationConfig:
        """This config with the settings ``flat`` gives (flat keys) replaced."""
        return GenerationConfig.from_flat(flat, **self.to_flat())

    def differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (other's value, ours)}`` for every flat key of ``other`` we disagree on."""
        ours = self.to_flat()
        return {
            key: (value, ours[key])
            for key, value in other.items()
            if key in ours and _normalized(value) != _normalized(ours[key])
        }


BUDGET_KEYS = tuple(f.name for f in fields(Budget))
# A seed per call (an evaluation cell, an episode), EOS ids from the model and what a call
# asks to be reported (top_logprobs): not settings.
PER_CALL_KEYS = ("seed", "eos_token_ids", "top_logprobs")
# The flat form's keys: GenerationConfig's fields, minus the per-call ones, with the budget's
# bounds in place of ``budget``.
GENERATION_KEYS = (
    *(f.name for f in fields(GenerationConfig) if f.name not in (*PER_CALL_KEYS, "budget")),
    *BUDGET_KEYS,
)
# The sequence-valued settings (their default is a tuple, empty or not): lists in the flat
# form. ``logit_bias`` (a mapping) is a dict with string keys there.
_LIST_KEYS = tuple(
    f.name
    for f in fields(GenerationConfig)
    if f.name in GENERATION_KEYS and isinstance(f.default, tuple)
)


class _FrozenBias(dict):
    """``logit_bias`` as stored on a frozen config: a dict that hashes by its items, so the
    config stays hashable."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def _normalized(value: Any) -> Any:
    """Lists and tuples compare alike (JSON turns tuples into lists), and so do a mapping's
    integer and string keys (JSON's keys are strings)."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return list(value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True, eq=False)
class Step:
    """What an operator sees after one token was sampled.

    Attributes:
        position: index of the token in the completion (0 = first generated token).
        token_id: the sampled token.
        text: the text this token adds to the completion (may be ``""`` while a multi-byte
            character is incomplete).
        prob: probability of the token under the distribution it was sampled from.
        logprob: raw model log-probability of the token (before temperature and filtering).
        logit: raw model logit of the token.
        rank: 0-based rank of the token among the raw logits (0 = the model's top choice).
        entropy: entropy in nats of the distribution sampled from.
        top1_prob, top2_prob: the two largest probabilities of that distribution.
        logits: raw logits over the vocabulary (float32, do not modify).
        probs: the distribution actually sampled from (float32, do not modify).
        generated: the completion's token ids so far, this token included. A read-only view,
            valid during the call only: copy what you keep.
        completion: the completion's text so far, this token's ``text`` included.
    """

    position: int
    token_id: int
    text: str
    prob: float
    logprob: float
    logit: float
    rank: int
    entropy: float
    top1_prob: float
    top2_prob: float
    logits: torch.Tensor
    probs: torch.Tensor
    generated: Sequence[int]
    completion: str = ""


@dataclass(frozen=True)
class TokenEvent:
    """A token was sampled and appended at ``position`` of the completion."""

    position: int
    token_id: int
    text: str
    prob: float
    kind: str = "token"


@dataclass(frozen=True)
class RollbackEvent:
    """``k`` tokens were deleted; decoding resumes at ``position`` (the new completion length)."""

    position: int
    k: int
    removed_text: str
    removed_token_ids: tuple[int, ...]
    operator: str
    kind: str = "rollback"


Event = TokenEvent | RollbackEvent


@dataclass
class Counts:
    """Work done by one generation."""

    forward_passes: int = 0
    tokens_sampled: int = 0
    tokens_discarded: int = 0
    backtracks: int = 0
    # Rollbacks that removed a banned string (included in ``backtracks``).
    ban_rollbacks: int = 0
    # The deepest any rollback reached, in tokens behind the furthest position reached then:
    # the smallest ``rollback_window`` that would have left this generation unchanged.
    deepest_rollback: int = 0
    # Checks of a finished completion by a verifying operator (e.g. the visible examples run),
    # and the seconds the sequence waited for their verdicts (sandbox time, not decoding).
    checks: int = 0
    check_wait_s: float = 0.0
    wall_time_s: float = 0.0
    prefill_time_s: float = 0.0


FinishReason = Literal["eos", "stop_string", "max_new_tokens", "budget"]


@dataclass
class GenerationResult:
    """The outcome of one generation.

    ``text`` is the completion decoded without special tokens, cut before the first stop
    string (the stop string itself is excluded, as in the OpenAI API); ``token_ids`` holds every
    final completion token, the EOS or the tokens of the stop string included, and ``logprobs``
    their raw model log-probabilities.
    """

    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason
    stop_string: str | None
    trace: list[Event]
    counts: Counts
    # Per final token, the most likely tokens and their raw log-probabilities, best first
    # (``GenerationConfig.top_logprobs`` of them; empty when none were asked for).
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_token_ids": self.prompt_token_ids,
            "token_ids": self.token_ids,
            "logprobs": self.logprobs,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "stop_string": self.stop_string,
            "trace": [asdict(e) for e in self.trace],
            "counts": asdict(self.counts),
        }

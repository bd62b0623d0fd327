"""What decoding produces: the step an operator sees, the trace's events, the work counts
and the result of one generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch


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
    """``k`` tokens were deleted; decoding resumes at ``position`` (the new completion length).

    ``operator`` says who decided (``"banned-string"`` for a ban); a ban's rollback also says
    which text it removed (``banned``: the matched phrase as written), from which list
    (``ban_list``: ``"inline"`` for ``banned_strings``/``banned_regex``, else the list file's
    name) and how (``ban_weight``: 0 for a hard ban, else the soft ban's multiplier).
    """

    position: int
    k: int
    removed_text: str
    removed_token_ids: tuple[int, ...]
    operator: str
    kind: str = "rollback"
    banned: str | None = None
    ban_list: str | None = None
    ban_weight: float | None = None


Event = TokenEvent | RollbackEvent


@dataclass
class Counts:
    """Work done by one generation."""

    forward_passes: int = 0
    tokens_sampled: int = 0
    tokens_discarded: int = 0
    backtracks: int = 0
    # Rollbacks that removed a banned phrase (included in ``backtracks``), and of those the
    # soft bans (the phrase's first token down-weighted, not banned).
    ban_rollbacks: int = 0
    soft_ban_rollbacks: int = 0
    # The deepest any rollback reached, in tokens behind the furthest position reached then:
    # the smallest ``rollback_window`` that would have left this generation unchanged.
    deepest_rollback: int = 0
    # Checks of a finished completion by a verifying operator (e.g. the visible examples run),
    # and the seconds the sequence waited for their verdicts (sandbox time, not decoding).
    checks: int = 0
    check_wait_s: float = 0.0
    wall_time_s: float = 0.0
    prefill_time_s: float = 0.0


# "server_shutdown": a server ended the row before any other reason (its drain timed out).
FinishReason = Literal["eos", "stop_string", "max_new_tokens", "budget", "server_shutdown"]


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

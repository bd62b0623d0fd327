"""The local judge: :class:`LocalJudge` reads a Hugging Face teacher's rating-digit probabilities.

One forward pass over the rating prompt, no generation, so it is cheap and deterministic, and
it gives a graded score (the expected rating) rather than a sampled one. torch is imported
only when a score is computed, so importing this module stays light.
"""

from __future__ import annotations

import inspect
from typing import Any

from backtrack.rl.judges.base import (
    DEFAULT_CACHE_SIZE,
    Judge,
    JudgeConfigError,
    JudgeError,
    LRUCache,
)
from backtrack.rl.judges.prompts import (
    DIGIT_INSTRUCTION,
    OMITTED,
    SYSTEM_PROMPT,
    chat_messages,
    user_prompt,
)

_DIGITS = "0123456789"


class LocalJudge(Judge):
    """A judge reading a local Hugging Face causal LM's probabilities of the rating digits.

    The prompt (the tokenizer's chat template when it has one, else plain text ending in
    ``Rating (0-9):``) ends exactly where the rating digit comes. One forward pass gives the
    next-token distribution; it is restricted to the tokens for ``0``..``9`` (with and without a
    leading space, since tokenizers differ on which one follows a colon or an assistant header),
    renormalized, and the expected rating divided by 9 is the score. No sampling, so the score is
    deterministic and graded even from a small teacher.

    ``max_prompt_tokens`` (default: the model's ``max_position_embeddings``) bounds the prompt;
    longer partial code loses its beginning, since the most recent code says most about whether
    the current step is on track and the problem statement keeps the signature.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        use_chat_template: bool | None = None,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise JudgeConfigError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if max_prompt_tokens is None:
            config = getattr(model, "config", None)
            max_prompt_tokens = getattr(config, "max_position_embeddings", None)
        self.max_prompt_tokens = max_prompt_tokens
        self._cache = LRUCache(cache_size)
        self.digit_token_ids = _digit_token_ids(tokenizer)
        # Flattened candidate ids and, for each, which digit it stands for.
        self._candidate_ids: list[int] = []
        self._candidate_digit: list[int] = []
        for digit, ids in enumerate(self.digit_token_ids):
            self._candidate_ids.extend(ids)
            self._candidate_digit.extend([digit] * len(ids))
        self._forward_kwargs: dict[str, Any] = {}
        params = inspect.signature(model.forward).parameters
        if "logits_to_keep" in params:
            # Only the last position is needed; skipping the rest saves a vocab-sized matmul
            # per prompt token.
            self._forward_kwargs["logits_to_keep"] = 1
        if "use_cache" in params:
            self._forward_kwargs["use_cache"] = False
        #: Total probability the model put on digit tokens at the last scored call, before
        #: renormalizing: a low value means the teacher ignores the answer format.
        self.last_digit_mass: float | None = None

    @property
    def cache_hits(self) -> int:
        """How many scores were answered from the cache without a forward pass."""
        return self._cache.hits

    def __repr__(self) -> str:
        name = (
            getattr(getattr(self.model, "config", None), "_name_or_path", "")
            or type(self.model).__name__
        )
        return f"LocalJudge(model={name!r}, chat_template={self.use_chat_template})"

    def build_prompt(self, problem_prompt: str, partial_code: str) -> str:
        """The text fed to the model; it ends where the rating digit is to be generated."""
        if self.use_chat_template:
            messages = chat_messages(problem_prompt, partial_code, DIGIT_INSTRUCTION)
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        user = user_prompt(problem_prompt, partial_code, DIGIT_INSTRUCTION)
        # No trailing space: a space-prefixed digit token is then as natural as a bare digit,
        # and both variants are counted.
        return f"{SYSTEM_PROMPT}\n\n{user}\n\nRating (0-9):"

    def rating_distribution(self, problem_prompt: str, partial_code: str) -> list[float]:
        """Probabilities of ratings 0..9 (renormalized over digit tokens); cached, one forward."""
        key = (problem_prompt, partial_code)
        cached = self._cache.get(key)
        if cached is not None:
            return list(cached)
        import torch

        input_ids = self._encode(problem_prompt, partial_code)
        device = _model_device(self.model)
        input_ids = torch.tensor([input_ids], dtype=torch.long, device=device)
        attention_mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, **self._forward_kwargs
            )
        logits = out.logits[0, -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        cand = log_probs[torch.tensor(self._candidate_ids, device=logits.device)]
        self.last_digit_mass = float(cand.exp().sum())
        cand_probs = torch.softmax(cand, dim=-1).cpu()
        digit_index = torch.tensor(self._candidate_digit)
        per_digit = torch.zeros(10, dtype=torch.float32).index_add_(0, digit_index, cand_probs)
        probs = tuple(float(p) for p in per_digit)
        self._cache.put(key, probs)
        return list(probs)

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Expected rating / 9, from one forward pass (or the cache)."""
        probs = self.rating_distribution(problem_prompt, partial_code)
        expected = sum(d * p for d, p in enumerate(probs)) / 9.0
        return min(1.0, max(0.0, expected))

    def close(self) -> None:
        """Drop the cache. The model is the caller's (it may be shared), so it is kept."""
        self._cache.clear()

    def _encode(self, problem_prompt: str, partial_code: str) -> list[int]:
        ids = self._tokenize(self.build_prompt(problem_prompt, partial_code))
        limit = self.max_prompt_tokens
        if limit is None or len(ids) <= limit:
            return ids
        code = partial_code
        drop = len(ids) - limit
        while code and len(ids) > limit:
            # A token spans at least one character, so dropping `drop` characters (the token
            # excess) is never too much; doubling keeps the number of re-tokenizations
            # logarithmic.
            code = code[drop:]
            ids = self._tokenize(self.build_prompt(problem_prompt, OMITTED + code))
            drop *= 2
        if len(ids) > limit:
            raise JudgeError(
                f"the judge prompt needs {len(ids)} tokens even without the partial code, more "
                f"than max_prompt_tokens={limit}; shorten the problem prompt or raise the limit"
            )
        return ids

    def _tokenize(self, text: str) -> list[int]:
        # The chat template already holds any special tokens; plain prompts get the tokenizer's
        # usual ones (e.g. BOS) as in ordinary use.
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
        return list(ids)


def _model_device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def _digit_token_ids(tokenizer: Any) -> list[list[int]]:
    """For each digit 0..9, the single tokens that decode to it, with or without a leading space.

    Byte-level BPEs spell the space-prefixed variant ``Ġ5``, SentencePiece ``▁5``; some vocabs
    have it, some do not (the tiny test tokenizer has ``Ġ1`` but not ``Ġ0``). Every candidate is
    checked by decoding it, and a token claimed by two digits is dropped.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    found: list[list[int]] = []
    seen: set[int] = set()
    for digit in _DIGITS:
        candidates: list[int] = []
        for text in (digit, " " + digit):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1:
                candidates.append(int(ids[0]))
        for piece in (digit, "Ġ" + digit, "▁" + digit):
            tid = tokenizer.convert_tokens_to_ids(piece)
            if isinstance(tid, int) and tid != unk and tid >= 0:
                candidates.append(tid)
        ids_for_digit: list[int] = []
        for tid in candidates:
            if tid in seen or tid in ids_for_digit:
                continue
            if tokenizer.decode([tid]).strip() == digit:
                ids_for_digit.append(tid)
        if not ids_for_digit:
            raise JudgeError(
                f"tokenizer has no single token for the digit {digit!r}; LocalJudge needs one "
                "token per rating digit (use an OpenAI-compatible judge for this model)"
            )
        seen.update(ids_for_digit)
        found.append(ids_for_digit)
    return found

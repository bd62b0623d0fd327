"""The local judge: :class:`LocalJudge` reads a teacher's rating-digit probabilities.

One forward pass over the rating prompt, no generation, so it is cheap and deterministic, and
it gives a graded score (the expected rating) rather than a sampled one. The teacher runs on any
backend (transformers or llama.cpp, through :mod:`backtrack.backends`), and it keeps the cache
of its last prompt: consecutive judgements of one episode share everything up to the newest
code, so only the new lines and the closing instruction are run, as the engine crops rather
than recomputes. torch is imported only when a judge is built, so importing this module stays
light.
"""

from __future__ import annotations

import time
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
    """A judge reading a local causal LM's probabilities of the rating digits.

    The prompt (the tokenizer's chat template when it has one, else plain text ending in
    ``Rating (0-9):``) ends exactly where the rating digit comes. One forward pass gives the
    next-token distribution; it is restricted to the tokens for ``0``..``9`` (with and without a
    leading space, since tokenizers differ on which one follows a colon or an assistant header),
    renormalized, and the expected rating divided by 9 is the score. No sampling, so the score is
    graded even from a small teacher.

    >>> model, tokenizer = load_model("qwen2.5-coder-1.5b-instruct", backend="llama.cpp")
    >>> judge = LocalJudge(model, tokenizer)            # doctest: +SKIP
    >>> judge.score("def add(a, b):", "    return a + b")   # doctest: +SKIP
    0.87

    Args:
        model: a transformers causal LM or a backend (:class:`LlamaCppModel`). On llama.cpp
            give the judge a model of its own: one ``LlamaCppModel`` holds one single-sequence
            session at a time, and sharing it with a decoding session is refused loudly.
        tokenizer: the model's Hugging Face tokenizer.
        cache_size: scores kept per ``(problem, code)``; 0 disables the score cache.
        use_chat_template: default: when the tokenizer has one.
        max_prompt_tokens: bound on the prompt (default: the model's context); longer partial
            code loses its beginning, since the most recent code says most about whether the
            current step is on track and the problem statement keeps the signature.
        reuse_prefix: keep the teacher's cache of the previous prompt and run only the tokens
            after the longest shared prefix. A score then depends on the previous prompt by
            float rounding only (a different split of the same arithmetic; see the tests for
            the measured size); ``False`` runs every prompt from scratch.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        use_chat_template: bool | None = None,
        max_prompt_tokens: int | None = None,
        reuse_prefix: bool = True,
    ) -> None:
        from backtrack.backends import as_backend

        self.model = model
        self.backend = as_backend(model)
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise JudgeConfigError("use_chat_template=True but the tokenizer has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        if max_prompt_tokens is None:
            config = getattr(model, "config", None)
            max_prompt_tokens = getattr(config, "max_position_embeddings", None) or getattr(
                model, "n_ctx", None
            )
        self.max_prompt_tokens = max_prompt_tokens
        self.reuse_prefix = reuse_prefix
        self._prompt_cache: Any = None  # the backend cache holding _cached_ids
        self._cached_ids: list[int] = []
        self._cache = LRUCache(cache_size)
        self.digit_token_ids = _digit_token_ids(tokenizer)
        # Flattened candidate ids and, for each, which digit it stands for.
        self._candidate_ids: list[int] = []
        self._candidate_digit: list[int] = []
        for digit, ids in enumerate(self.digit_token_ids):
            self._candidate_ids.extend(ids)
            self._candidate_digit.extend([digit] * len(ids))
        #: Total probability the model put on digit tokens at the last scored call, before
        #: renormalizing: a low value means the teacher ignores the answer format.
        self.last_digit_mass: float | None = None

    @property
    def cache_hits(self) -> int:
        """How many scores were answered from the cache without a forward pass."""
        return self.stats.cache_hits

    def __repr__(self) -> str:
        name = (
            getattr(getattr(self.model, "config", None), "_name_or_path", "")
            or str(getattr(self.model, "path", ""))
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
        cached = self._lookup(self._cache, key)
        if cached is not None:
            return list(cached)
        import torch

        started = time.perf_counter()
        logits = self._last_logits(self._encode(problem_prompt, partial_code))
        log_probs = torch.log_softmax(logits, dim=-1)
        cand = log_probs[torch.tensor(self._candidate_ids, device=logits.device)]
        self.last_digit_mass = float(cand.exp().sum())
        cand_probs = torch.softmax(cand, dim=-1).cpu()
        digit_index = torch.tensor(self._candidate_digit)
        per_digit = torch.zeros(10, dtype=torch.float32).index_add_(0, digit_index, cand_probs)
        probs = tuple(float(p) for p in per_digit)
        self.stats.seconds += time.perf_counter() - started
        self._cache.put(key, probs)
        return list(probs)

    def score(self, problem_prompt: str, partial_code: str) -> float:
        """Expected rating / 9, from one forward pass (or the cache)."""
        probs = self.rating_distribution(problem_prompt, partial_code)
        expected = sum(d * p for d, p in enumerate(probs)) / 9.0
        return min(1.0, max(0.0, expected))

    def close(self) -> None:
        """Drop the caches. The model is the caller's (it may be shared), so it is kept."""
        self._cache.clear()
        self._prompt_cache, self._cached_ids = None, []

    def _last_logits(self, ids: list[int]) -> Any:
        """The logits after ``ids`` (float32 ``[V]``), running only what the cache lacks."""
        keep = 0
        if self.reuse_prefix and self._prompt_cache is not None:
            limit = min(len(self._cached_ids), len(ids) - 1)  # feed at least one token
            while keep < limit and self._cached_ids[keep] == ids[keep]:
                keep += 1
        if keep == 0:
            self._prompt_cache, self._cached_ids = self.backend.new_cache(), []
        elif keep < len(self._cached_ids):
            self._prompt_cache.crop(keep - len(self._cached_ids))  # negative: drop the rest
        fresh = ids[keep:]
        try:
            logits = self.backend.forward(self._prompt_cache, fresh)
        except BaseException:
            self._prompt_cache, self._cached_ids = None, []  # what it holds is unknown now
            raise
        if self.reuse_prefix:
            self._cached_ids = list(ids)
        else:
            self._prompt_cache = None
        self.stats.prompt_tokens += len(fresh)
        return logits[0].float()

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

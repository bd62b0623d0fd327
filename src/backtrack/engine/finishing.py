"""The end of a decoding session: when it finishes (EOS, a stop string, the length limit, the
forward-pass budget) and the :class:`~backtrack.engine.results.GenerationResult` it returns.

A mixin of :class:`~backtrack.engine.session.DecodingSession`, whose attributes it uses (one
class in three files; see :mod:`backtrack.engine.session`).
"""

from __future__ import annotations

import time
from typing import Any

from backtrack.engine.results import FinishReason, GenerationResult
from backtrack.engine.text import find_stop
from backtrack.engine.verification import restore_best


class Finishing:
    """Stop conditions and the result of a :class:`~backtrack.engine.session.DecodingSession`."""

    # Set by DecodingSession (declared here for readers and type checkers).
    completion: list[int]
    prompt_ids: list[int]
    eos_ids: frozenset[int]
    config: Any
    text: str
    tokenizer: Any
    finish_reason: FinishReason | None
    stop_string: str | None
    _undo: Any
    _start: float

    def stop_reason(self) -> tuple[FinishReason, str | None] | None:
        """After a kept token: ``(reason, stop string)`` if it ends decoding (EOS, a stop
        string or the length limit), else ``None``."""
        if self.completion and self.completion[-1] in self.eos_ids:
            return "eos", None
        if self.config.stop and (
            hit := find_stop(self.text, self._undo.last().text_len, self.config.stop)
        ):
            return "stop_string", hit[1]
        if len(self.completion) >= self.config.max_new_tokens:
            return "max_new_tokens", None
        return None

    def _finish(self, reason: FinishReason) -> None:
        if reason == "budget":  # out of forward passes, perhaps mid-repair
            restore_best(self)
        self.finish_reason = reason
        self.counts.wall_time_s = time.perf_counter() - self._start

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def final_text(self) -> str:
        """The completion decoded in one go, cut before the stop string."""
        text = self.tokenizer.decode(
            self.completion, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if self.stop_string is not None:
            hit = find_stop(text, 0, [self.stop_string])
            if hit is not None:
                text = text[: hit[0]]
        return text

    def result(self) -> GenerationResult:
        assert self.finish_reason is not None, "generation has not finished"
        return GenerationResult(
            prompt_token_ids=list(self.prompt_ids),
            token_ids=list(self.completion),
            logprobs=list(self.logprobs),
            text=self.final_text(),
            finish_reason=self.finish_reason,
            stop_string=self.stop_string,
            trace=self.trace,
            counts=self.counts,
            top_logprobs=[list(top) for top in self.top_logprobs],
        )

"""The public entry points (:class:`Decoder`, :func:`generate`): generate, stream events,
stream committed text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from backtrack.engine.results import Event, GenerationResult
from backtrack.engine.session import DecodingSession
from backtrack.engine.settings import INTERACTIVE_ROLLBACK_WINDOW, GenerationConfig
from backtrack.engine.streaming import CommittedText


class Decoder:
    """A model and tokenizer ready to decode with backtracking.

    >>> decoder = Decoder(model, tokenizer)                       # doctest: +SKIP
    >>> result = decoder.generate("def add(a, b):", operator=ProbabilityTrend(),
    ...                           config=GenerationConfig(temperature=0.5, top_k=50))
    """

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def session(
        self,
        prompt: str | Sequence[int],
        operator: Any = None,
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> DecodingSession:
        config = replace(config or GenerationConfig(), **overrides)
        return DecodingSession.for_prompt(self.model, self.tokenizer, prompt, operator, config)

    def stream(
        self,
        prompt: str | Sequence[int],
        operator: Any = None,
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> Iterator[Event | GenerationResult]:
        """Yield every token and rollback event, then the :class:`GenerationResult`."""
        session = self.session(prompt, operator, config, **overrides)
        yield from session.run()
        yield session.result()

    def generate(
        self,
        prompt: str | Sequence[int],
        operator: Any = None,
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> GenerationResult:
        """Decode one completion and return the full result."""
        session = self.session(prompt, operator, config, **overrides)
        for _ in session.run():
            pass
        return session.result()

    def stream_text(
        self,
        prompt: str | Sequence[int],
        operator: Any = None,
        config: GenerationConfig | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """Yield completion text as soon as it can no longer be rolled back.

        A token is final once it lies deeper than any rollback can still reach: behind the
        rollback window (``GenerationConfig.rollback_window``), or beyond what the budget
        still allows. Without a window nothing would be final before the budget is spent
        (usually the end), so a config without one streams with
        :data:`INTERACTIVE_ROLLBACK_WINDOW` tokens; pass ``rollback_window`` to choose
        another. Text that could still turn out to be the start of a stop string is held back
        too, so the pieces always concatenate to exactly ``result.text``.
        """
        config = config or GenerationConfig()
        if config.rollback_window is None and "rollback_window" not in overrides:
            overrides["rollback_window"] = INTERACTIVE_ROLLBACK_WINDOW
        session = self.session(prompt, operator, config, **overrides)
        stream = CommittedText(session)
        for _ in session.run():
            if piece := stream.new():
                yield piece
        if piece := stream.rest():
            yield piece


def generate(
    model,
    tokenizer,
    prompt: str | Sequence[int],
    operator: Any = None,
    config: GenerationConfig | None = None,
    **overrides: Any,
) -> GenerationResult:
    """Decode one completion of ``prompt`` with ``operator`` (None: plain decoding)."""
    return Decoder(model, tokenizer).generate(prompt, operator, config, **overrides)

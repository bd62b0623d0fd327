"""Log-probabilities in OpenAI's shapes: the completions API's ``logprobs`` object and the chat
API's ``logprobs.content`` list, for the final tokens (and, with ``echo``, the prompt's).

The values are the engine's record (``GenerationResult.logprobs`` and ``top_logprobs``: the raw
model's log-probabilities), never recomputed here. A token's text is the piece the engine's
incremental detokenizer gives it, so the tokens of a choice concatenate to its text (a token
that ends inside a multi-byte character has the text ``""`` and the character goes with the token
that completes it) and ``text_offset`` is where each piece starts. An alternative is named by its
own decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backtrack.backends.base import prompt_logprobs
from backtrack.engine.results import Counts, GenerationResult
from backtrack.engine.text import DetokState, IncrementalDetokenizer

# (token id, its log-probability or None for a prompt's first token, its alternatives or None)
Entry = tuple[int, float | None, Sequence[tuple[int, float]] | None]


@dataclass
class Piece:
    """A streamed piece of a choice: new final text and, when asked for, its tokens' entries."""

    text: str
    entries: list[Entry] | None = None


def session_entries(session: Any, start: int, stop: int) -> list[Entry]:
    """The entries of completion positions ``start..stop-1`` of a session (or result)."""
    tops = session.top_logprobs
    return [
        (session.completion[i], session.logprobs[i], tops[i] if tops else ())
        for i in range(start, stop)
    ]


def prompt_entries(backend: Any, ids: Sequence[int], alternatives: int) -> list[Entry]:
    """The entries of a prompt's tokens (``echo``): the first has no log-probability (nothing
    comes before it), as in OpenAI's and vLLM's echo; the others come from one pass over the
    prompt (:func:`~backtrack.backends.base.prompt_logprobs`)."""
    scored = prompt_logprobs(backend, ids, alternatives)
    return [(ids[0], None, None)] + [
        (token, lp, top) for token, (lp, top) in zip(ids[1:], scored, strict=True)
    ]


def prompt_only(ids: Sequence[int]) -> GenerationResult:
    """The result of a request that decodes nothing (``echo`` with ``max_tokens: 0``)."""
    return GenerationResult(list(ids), [], [], "", "max_new_tokens", None, [], Counts())


def result_entries(result: Any) -> list[Entry]:
    """The entries of every final token of a :class:`~backtrack.engine.GenerationResult`."""
    tops = result.top_logprobs or [()] * len(result.token_ids)
    return list(zip(result.token_ids, result.logprobs, tops, strict=True))


class TokenTexts:
    """The text of each token of one choice, fed in order (across a stream's chunks)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._detok = IncrementalDetokenizer(tokenizer)
        self._ids: list[int] = []
        self._state = DetokState()
        self.offset = 0  # characters so far

    def feed(self, token: int) -> tuple[str, int]:
        """The next token's text and where it starts."""
        self._ids.append(token)
        piece, self._state = self._detok.next_piece(self._ids, self._state)
        start = self.offset
        self.offset += len(piece)
        return piece, start

    def name(self, token: int) -> str:
        """An alternative's text: the token decoded alone."""
        return self.tokenizer.decode([token])


class Logprobs:
    """Builds one choice's ``logprobs`` objects (whole, or one per streamed chunk).

    ``alternatives``: how many alternatives the request asked for (completions: ``logprobs``,
    its alternatives plus the chosen token; chat: ``top_logprobs``).
    """

    def __init__(self, tokenizer: Any, chat: bool, alternatives: int) -> None:
        self.texts = TokenTexts(tokenizer)
        self.chat, self.alternatives = chat, alternatives

    def prime(self, ids: Sequence[int]) -> None:
        """Feed tokens whose entries are not reported (context for the detokenizer)."""
        for token in ids:
            self.texts.feed(token)

    def build(self, entries: Sequence[Entry]) -> dict:
        """The ``logprobs`` object of these tokens (the next ones of the choice)."""
        return self._chat(entries) if self.chat else self._completion(entries)

    def _completion(self, entries: Sequence[Entry]) -> dict:
        tokens, values, tops, offsets = [], [], [], []
        for token, logprob, top in entries:
            text, start = self.texts.feed(token)
            tokens.append(text)
            values.append(logprob)
            offsets.append(start)
            if logprob is None:
                tops.append(None)
                continue
            named = {text: logprob}  # the chosen token, always, under its own text
            for alt, value in (top or ())[: self.alternatives]:
                named.setdefault(text if alt == token else self.texts.name(alt), value)
            tops.append(named)
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def _chat(self, entries: Sequence[Entry]) -> dict:
        content = []
        for token, logprob, top in entries:
            text, _ = self.texts.feed(token)
            alternatives = []
            for alt, value in (top or ())[: self.alternatives]:
                name = text if alt == token else self.texts.name(alt)
                alternatives.append(_chat_entry(name, value))
            content.append({**_chat_entry(text, logprob), "top_logprobs": alternatives})
        return {"content": content}


def _chat_entry(text: str, logprob: float | None) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

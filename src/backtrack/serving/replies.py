"""The server's response objects: OpenAI's completion and chat shapes, whole or as
server-sent events, each choice with the non-standard ``backtrack`` object."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from backtrack.engine.results import Event, GenerationResult
from backtrack.serving.logprobs import Logprobs, Piece, result_entries
from backtrack.serving.protocol import finish_reason
from backtrack.serving.scheduler import result_usage


class Reply:
    """Builds the response objects of one request (completion or chat, whole or chunks)."""

    def __init__(
        self,
        reply_id: str,
        model: str,
        chat: bool,
        trace: bool,
        *,
        tokenizer: Any = None,
        alternatives: int | None = None,
    ) -> None:
        self.id, self.model, self.chat, self.trace = reply_id, model, chat, trace
        self.created = int(time.time())
        # Log-probabilities: alternatives per token (None: not asked for), one builder per
        # streamed choice (its token texts continue across chunks).
        self.tokenizer, self.alternatives = tokenizer, alternatives
        self._streams: dict[int, Logprobs] = {}

    def _logprobs(self) -> Logprobs:
        assert self.alternatives is not None
        return Logprobs(self.tokenizer, self.chat, self.alternatives)

    def _backtrack(self, result: GenerationResult) -> dict:
        c = result.counts
        info: dict[str, Any] = {
            "rollbacks": c.backtracks,
            "ban_rollbacks": c.ban_rollbacks,
            "tokens_discarded": c.tokens_discarded,
            "forward_passes": c.forward_passes,
            "deepest_rollback": c.deepest_rollback,
            "finish_reason": result.finish_reason,
        }
        if self.trace:
            info["trace"] = [asdict(e) for e in result.trace]
        return info

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def complete(self, results: list[GenerationResult], echoes: list[Piece] | None = None) -> dict:
        """The whole response of a request that does not stream; ``echoes``: each choice's
        prompt, put before its text (and its tokens' entries before the completion's)."""
        choices = []
        for i, result in enumerate(results):
            reason = finish_reason(result.finish_reason)
            choice: dict[str, Any] = {"index": i, "finish_reason": reason}
            echo = echoes[i] if echoes else Piece("", [])
            logprobs = None
            if self.alternatives is not None:
                entries = [*(echo.entries or ()), *result_entries(result)]
                logprobs = self._logprobs().build(entries)
            if self.chat:
                choice["message"] = {"role": "assistant", "content": result.text}
                choice["logprobs"] = logprobs
            else:
                choice.update(text=echo.text + result.text, logprobs=logprobs)
            choice["backtrack"] = self._backtrack(result)
            choices.append(choice)
        return {
            **self._head("chat.completion" if self.chat else "text_completion"),
            "choices": choices,
            "usage": total_usage(results),
        }

    def chunk(
        self,
        choice: int,
        piece: Piece | None = None,
        delta: dict | None = None,
        result: GenerationResult | None = None,
    ) -> str:
        """One server-sent event of choice ``choice``: a new piece (text, and the entries of
        its tokens when log-probabilities were asked for), a chat delta, or its end."""
        entry: dict[str, Any] = {"index": choice, "finish_reason": None}
        text, logprobs = (piece.text, None) if piece is not None else ("", None)
        if result is not None:
            entry["finish_reason"] = finish_reason(result.finish_reason)
            entry["backtrack"] = self._backtrack(result)
        if piece is not None and piece.entries is not None and self.alternatives is not None:
            builder = self._streams.setdefault(choice, self._logprobs())
            logprobs = builder.build(piece.entries)
        if self.chat:
            entry["delta"] = delta if delta is not None else ({"content": text} if text else {})
            if logprobs is not None:
                entry["logprobs"] = logprobs
        else:
            entry.update(text=text, logprobs=logprobs)
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self._head(obj), "choices": [entry]})

    def events_chunk(self, choice: int, events: list[Event]) -> str:
        """One server-sent event of choice ``choice`` carrying its new token and rollback
        events (``backtrack.trace_stream``); its text (or chat delta) is empty, so a client
        that concatenates text is unaffected."""
        entry: dict[str, Any] = {"index": choice, "finish_reason": None}
        if self.chat:
            entry["delta"] = {}
        else:
            entry.update(text="", logprobs=None)
        entry["backtrack"] = {"events": [asdict(e) for e in events]}
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self._head(obj), "choices": [entry]})

    def usage_chunk(self, results: list[GenerationResult]) -> str:
        """The last event when the client asked for usage (``stream_options``)."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return sse({**self._head(obj), "choices": [], "usage": total_usage(results)})


def sse(payload: dict) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload)}\n\n"


def total_usage(results: list[GenerationResult]) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for result in results:
        for key, value in result_usage(result).items():
            total[key] += value
    return total


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "backtrack"}

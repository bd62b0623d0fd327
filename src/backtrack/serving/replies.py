"""The server's response objects: OpenAI's completion and chat shapes, whole or as
server-sent events, each choice with the non-standard ``backtrack`` object."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from backtrack.engine.types import Event, GenerationResult
from backtrack.serving.protocol import finish_reason
from backtrack.serving.scheduler import result_usage


class Reply:
    """Builds the response objects of one request (completion or chat, whole or chunks)."""

    def __init__(self, reply_id: str, model: str, chat: bool, trace: bool) -> None:
        self.id, self.model, self.chat, self.trace = reply_id, model, chat, trace
        self.created = int(time.time())

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

    def complete(self, results: list[GenerationResult]) -> dict:
        """The whole response of a request that does not stream."""
        choices = []
        for i, result in enumerate(results):
            reason = finish_reason(result.finish_reason)
            choice: dict[str, Any] = {"index": i, "finish_reason": reason}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": result.text}
            else:
                choice.update(text=result.text, logprobs=None)
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
        text: str | None = None,
        delta: dict | None = None,
        result: GenerationResult | None = None,
    ) -> str:
        """One server-sent event of choice ``choice``: new text, a chat delta, or its end."""
        entry: dict[str, Any] = {"index": choice, "finish_reason": None}
        if result is not None:
            entry["finish_reason"] = finish_reason(result.finish_reason)
            entry["backtrack"] = self._backtrack(result)
            text = ""
        if self.chat:
            entry["delta"] = delta if delta is not None else ({"content": text} if text else {})
        else:
            entry.update(text=text or "", logprobs=None)
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

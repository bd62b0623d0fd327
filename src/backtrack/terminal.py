"""What ``backtrack generate`` shows on a terminal: at every moment, exactly the current text.

A rollback rewrites the tail of the screen: the deleted text disappears from the completion and
is shown once, struck out in red, right where it was, until the next token replaces it. Text
from a stop string on is never shown (it is not part of the result). When decoding ends, the
screen holds exactly ``result.text``.

:class:`LiveCompletion` is the screen's model (plain state, testable without a terminal);
:func:`show_live` draws it with ``rich.live.Live``, which repaints the changed display in place.
Model output goes through :func:`printable` first: C0 control characters (other than newline
and tab) and DEL are shown as their Unicode control pictures (``\x1b`` as ``␛``), so no
completion can move the cursor, clear the screen or inject an escape sequence.

Limitation: a terminal cannot repaint lines that have scrolled off its top, so a completion
taller than the window leaves earlier states of those lines in the scrollback; the visible
window is still current. The final screen equals ``printable(result.text)``: the result text
itself for anything a code model writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.live import Live
from rich.text import Text

from backtrack.engine.results import Event, GenerationResult, RollbackEvent, TokenEvent
from backtrack.engine.text import find_stop

_CONTROL_PICTURES = {c: 0x2400 + c for c in range(32) if chr(c) not in "\n\t"} | {0x7F: 0x2421}


def printable(text: str) -> str:
    """``text`` safe to print: control characters become visible control pictures."""
    return text.translate(_CONTROL_PICTURES)


class LiveCompletion:
    """The completion as the screen should show it after each event.

    Args:
        stop: the generation's stop strings; the text from the first one on is hidden.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = tuple(stop)
        self.text = ""  # the session's current completion text
        self.struck = ""  # what the last rollback deleted, until the next token

    def apply(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self.text += event.text
            self.struck = ""
        elif isinstance(event, RollbackEvent):
            kept = len(self.text) - len(event.removed_text)
            self.text, self.struck = self.text[:kept], event.removed_text

    @property
    def visible(self) -> str:
        """The current text, cut before the first stop string."""
        hit = find_stop(self.text, 0, self.stop) if self.stop else None
        return self.text if hit is None else self.text[: hit[0]]

    def renderable(self) -> Text:
        shown = Text(printable(self.visible))
        if self.struck:
            shown.append(printable(self.struck), style="strike red")
        return shown


def show_live(
    console: Console,
    events: Iterable[Event | GenerationResult],
    stop: Sequence[str] = (),
    min_interval_s: float = 0.05,
) -> GenerationResult:
    """Draw ``events`` (a ``Decoder.stream``) live on ``console``; return the final result.

    Repaints at most every ``min_interval_s`` (a repaint redraws the whole completion), always
    after a rollback, and at the end, where the screen shows exactly ``result.text``.
    """
    view = LiveCompletion(stop)
    result: GenerationResult | None = None
    last = 0.0
    with Live(
        view.renderable(),
        console=console,
        auto_refresh=False,
        vertical_overflow="visible",
    ) as live:
        for event in events:
            if isinstance(event, GenerationResult):
                result = event
                live.update(Text(printable(result.text)), refresh=True)
                continue
            view.apply(event)
            now = time.monotonic()
            if isinstance(event, RollbackEvent) or now - last >= min_interval_s:
                live.update(view.renderable(), refresh=True)
                last = now
    if result is None:
        raise RuntimeError("the event stream ended without a result")
    return result

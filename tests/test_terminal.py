"""The terminal view of `backtrack generate`: recorded event traces are replayed through the
renderer into a terminal emulator (pyte), and the screen must show exactly the current text."""

from __future__ import annotations

import io
import unicodedata

import pyte
import pytest
from rich.console import Console

from backtrack.engine import Decoder, GenerationConfig, GenerationResult
from backtrack.engine.results import Counts, RollbackEvent, TokenEvent
from backtrack.operators import Chaos
from backtrack.terminal import LiveCompletion, printable, show_live

WIDTH, HEIGHT = 400, 120  # wide enough that nothing wraps, tall enough that nothing scrolls


def screen_after(events, stop=()) -> tuple[list[str], GenerationResult]:
    """Replay ``events`` through show_live on an emulated terminal; the screen's lines."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=WIDTH, height=HEIGHT)
    result = show_live(console, iter(events), stop, min_interval_s=0.0)
    screen = pyte.Screen(WIDTH, HEIGHT)
    screen.set_mode(pyte.modes.LNM)  # a tty turns "\n" into "\r\n" (onlcr); so does LNM
    pyte.Stream(screen).feed(out.getvalue())
    return [unicodedata.normalize("NFC", line.rstrip()) for line in screen.display], result


def as_lines(text: str) -> list[str]:
    """What a terminal shows for ``text``: control characters as pictures, tabs expanded."""
    # NFC: the emulator composes a letter and its combining accent into one cell, as a
    # terminal does; the tiny model's random text has such pairs.
    text = unicodedata.normalize("NFC", printable(text).expandtabs(8))
    lines = [line.rstrip() for line in text.split("\n")]
    return lines + [""] * (HEIGHT - len(lines))


def token(position: int, text: str) -> TokenEvent:
    return TokenEvent(position, 0, text, 0.5)


def result_for(text: str) -> GenerationResult:
    return GenerationResult([1], [], [], text, "stop_string", "\ndef ", [], Counts())


# A hand-written trace: rollbacks inside a line and across a line break, then a stop string
# that arrives inside a token, with text after it.
TRACE = [
    token(0, "def add(a, b):"),
    token(1, "\n    retur"),
    token(2, "n a - b"),
    RollbackEvent(2, 1, "n a - b", (0,), "chaos"),
    token(2, "n a + b"),
    token(3, "\n\nprint"),
    RollbackEvent(3, 1, "\n\nprint", (0,), "chaos"),
    token(3, "\n\ndef main"),
]


def test_final_screen_is_exactly_the_result_text() -> None:
    expected = "def add(a, b):\n    return a + b"
    lines, result = screen_after([*TRACE, result_for(expected)], stop=["\ndef "])
    assert result.text == expected
    assert lines == as_lines(expected)


def test_every_intermediate_screen_is_the_current_text_plus_what_was_just_deleted() -> None:
    view = LiveCompletion(stop=["\ndef "])
    shown = []
    for event in TRACE:
        view.apply(event)
        shown.append((view.visible, view.struck))
    assert shown[3] == ("def add(a, b):\n    retur", "n a - b")  # struck out once, in place
    assert shown[4] == ("def add(a, b):\n    return a + b", "")  # gone with the next token
    assert shown[6] == ("def add(a, b):\n    return a + b", "\n\nprint")
    assert shown[7] == ("def add(a, b):\n    return a + b\n", "")  # the stop string is hidden
    # On the emulated screen, right after the first rollback: the kept text, then the
    # deleted text once, struck out (not a second copy after the first).
    view = LiveCompletion(stop=["\ndef "])
    for event in TRACE[:4]:
        view.apply(event)
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=WIDTH).print(view.renderable())
    screen = pyte.Screen(WIDTH, HEIGHT)
    screen.set_mode(pyte.modes.LNM)
    pyte.Stream(screen).feed(out.getvalue())
    assert [line.rstrip() for line in screen.display[:3]] == [
        "def add(a, b):",
        "    return a - b",  # "    retur" kept, "n a - b" struck out
        "",
    ]
    assert screen.buffer[1][9].strikethrough and not screen.buffer[1][8].strikethrough


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recorded_engine_traces_end_on_the_result_text(tiny, seed: int) -> None:
    """Real traces from the engine (random rollbacks, a stop string that does occur)."""
    model, tok = tiny
    decoder = Decoder(model, tok)
    config = GenerationConfig(max_new_tokens=48, temperature=0.9, seed=seed)
    plain = decoder.generate("def f(x):\n", None, config)
    stop = plain.text[len(plain.text) // 2 : len(plain.text) // 2 + 2]
    config = GenerationConfig(max_new_tokens=48, temperature=0.9, seed=seed, stop=[stop])
    events = list(decoder.stream("def f(x):\n", Chaos(p=0.3, max=4, seed=seed), config))
    assert any(isinstance(e, RollbackEvent) for e in events)
    lines, result = screen_after(events, stop=[stop])
    assert lines == as_lines(result.text)


def test_control_characters_from_the_model_never_reach_the_terminal() -> None:
    text = "ok\x1b[2J\x07\x0b\x7f\tend"
    assert printable(text) == "ok\u241b[2J\u2407\u240b\u2421\tend"
    lines, _ = screen_after([token(0, text), result_for(text)])
    assert lines[0] == "ok\u241b[2J\u2407\u240b\u2421       end"

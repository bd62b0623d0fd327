"""Model output -> program text: stop strings, fenced code in chat replies, imports.

:mod:`backtrack.evaluation.prompts` builds benchmark programs from these; the ``examples``
operator (:mod:`backtrack.execution.examples`) builds the same program from a prompt's text
and a completion, without knowing the benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_IMPORT_LINE = re.compile(r"^(?:import\s+\S|from\s+\S+\s+import\s)")
_DEF = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def truncate_at_stop(completion: str, stop: Sequence[str]) -> str:
    """Cut ``completion`` at the earliest stop string; only the completion is searched."""
    cut = len(completion)
    for token in stop:
        index = completion.find(token)
        if 0 <= index < cut:
            cut = index
    return completion[:cut]


def extract_code(reply: str) -> str:
    """The first fenced python block of a chat reply (an unclosed one runs to the end)."""
    match = _FENCE.search(reply)
    return match.group(1) if match else reply


def fenced_code(text: str) -> str | None:
    """The first fenced python block of ``text``, or None when it has none."""
    match = _FENCE.search(text)
    return match.group(1) if match else None


def defines_function(code: str, name: str) -> bool:
    """True when ``code`` has a top-level ``def name(`` (possibly ``async``)."""
    pattern = rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\("
    return re.search(pattern, code, re.MULTILINE) is not None


def defined_functions(code: str) -> list[str]:
    """Names of the top-level functions ``code`` defines, in order."""
    return _DEF.findall(code)


def prompt_imports(prompt: str) -> str:
    """Top-level import lines of the prompt (what a re-stated function may rely on)."""
    lines = [line for line in prompt.splitlines() if _IMPORT_LINE.match(line)]
    return "\n".join(lines) + "\n" if lines else ""


def solution_program(prompt_code: str, completion: str, chat: bool, entry_point: str | None) -> str:
    """The solution's source (no tests) from the prompt's code and a completion.

    ``chat``: the completion is a chat reply, whose first fenced block is the code; if that
    code defines ``entry_point`` it is a whole solution (the prompt's imports go first, so
    helpers the prompt imported stay available), otherwise it is a body appended to the
    prompt's code. Without ``chat`` the completion continues the prompt's code.
    """
    if not chat:
        return prompt_code + completion
    code = extract_code(completion)
    if entry_point is not None and defines_function(code, entry_point):
        return prompt_imports(prompt_code) + "\n" + code
    return prompt_code + code

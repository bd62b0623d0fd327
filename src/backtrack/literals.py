"""Reading Python-literal text: where its brackets nest, outside its string literals.

The configuration language splits ``KEY=VALUE,...`` at the commas outside any literal
(:func:`backtrack.configurations.split_top_level`), and the visible-examples reader finds
where a call in a docstring ends (:mod:`backtrack.execution.examples`); both walk the text
with :func:`bracket_depths`.
"""

from __future__ import annotations

from collections.abc import Iterator


def bracket_depths(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """``(index, character, depth)`` for each character of ``text`` from ``start`` that stands
    outside a string literal; ``depth`` counts the brackets (``()``, ``[]``, ``{}``) open after
    it. Quotes and what they enclose are passed over (a backslash escapes the next character).

    >>> [(i, c) for i, c, depth in bracket_depths("a=[1, ','],b={2: 3}") if depth == 0]
    [(0, 'a'), (1, '='), (9, ']'), (10, ','), (11, 'b'), (12, '='), (18, '}')]
    """
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "'\"":
            quote = char
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        yield i, char, depth

"""Ban lists as files: read, checked, compiled once and shared.

A ban list is a file of phrases (``--ban-file PATH``, ``backtrack serve --ban-list
NAME=PATH``), in one of two formats, told apart by the first character that is not blank:

- text: one phrase per line, every phrase banned outright (a final newline is fine; ``\\r\\n``
  line ends too);
- JSON, the antislop sampler's format: ``[[phrase, factor], ...]`` with each factor in
  [0, 1]: a phrase of factor ``f`` multiplies the probability of the token that began it by
  ``f ** strength`` where it began (0: banned outright; see :mod:`backtrack.engine.banning`).

Every problem is a one-line ``ValueError`` naming the file and the line or row: an empty
phrase, a line that is not UTF-8, a row that is not ``[phrase, factor]``, a factor outside
[0, 1], more than :data:`MAX_PHRASES` phrases. Nothing is half loaded: a list either compiles
whole or not at all.

Compiling is cached by the file's path, size and modification time and by the case folding,
so a list is read and compiled once per process and the one :class:`PhraseSet` serves every
generation, batch row and request that names it (measured: the 50,046-phrase antislop list
reads and compiles in about 0.2 s; ``benchmarks/bench_bans.py``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from backtrack.engine.banned import INLINE, Bans, PhraseSet, compile_regexes

# The most phrases one list may hold. A million compiles in about 7 s on one core of the
# development machine and holds about 120 MB; past a few million a list is a mistake (every
# word of a dictionary several times over), and the build would run for minutes.
MAX_PHRASES = 2_000_000
# A list's name in ``NAME=PATH`` (letters, digits, ``_ . -``; no path separator).
LIST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def read_ban_file(path: str | os.PathLike[str]) -> dict[str, float]:
    """``{phrase: factor}`` from a ban-list file (text or antislop JSON; see the module)."""
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read ban list {where}: {exc.strerror or exc}") from None
    if data.lstrip()[:1] == b"[":
        return _read_json(data, where)
    return _read_text(data, where)


def _read_text(data: bytes, where: str) -> dict[str, float]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline
    if len(lines) > MAX_PHRASES:
        raise ValueError(f"ban list {where} has {len(lines)} phrases; the limit is {MAX_PHRASES}")
    factors: dict[str, float] = {}
    for number, raw in enumerate(lines, 1):
        try:
            phrase = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"ban list {where}: line {number} is not valid UTF-8") from None
        if not phrase:
            raise ValueError(f"ban list {where}: line {number} is empty (an empty phrase)")
        factors[phrase] = 0.0
    if not factors:
        raise ValueError(f"ban list {where} holds no phrases")
    return factors


def _read_json(data: bytes, where: str) -> dict[str, float]:
    try:
        rows = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"ban list {where} is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"ban list {where} is not valid JSON: {exc}") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"ban list {where} must be a non-empty JSON list of [phrase, factor]")
    if len(rows) > MAX_PHRASES:
        raise ValueError(f"ban list {where} has {len(rows)} phrases; the limit is {MAX_PHRASES}")
    factors: dict[str, float] = {}
    for number, row in enumerate(rows, 1):
        ok = isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
        factor = row[1] if ok else None
        if not ok or isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ValueError(f"ban list {where}: row {number} is not [phrase, factor]: {row!r}")
        if not row[0]:
            raise ValueError(f"ban list {where}: row {number} has an empty phrase")
        if not 0.0 <= factor <= 1.0:
            raise ValueError(
                f"ban list {where}: row {number} ({row[0]!r}) has factor {factor}; "
                "factors are in [0, 1]"
            )
        factors[row[0]] = min(float(factor), factors.get(row[0], 1.0))
    return factors


def split_entry(entry: str) -> tuple[str, str]:
    """A ban-file entry, ``PATH`` or ``NAME=PATH``, as ``(name, path)``; the name is what
    reports and metrics call the list (default: the file's name without its suffix)."""
    name, sep, path = str(entry).partition("=")
    if sep and name and LIST_NAME.fullmatch(name):
        return name, path
    return Path(entry).stem, str(entry)


def ban_list(entry: str | os.PathLike[str], ignore_case: bool = False) -> PhraseSet:
    """The compiled list of ``entry`` (``PATH`` or ``NAME=PATH``): read and compiled once per
    file version, name and folding."""
    name, path = split_entry(str(entry))
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise ValueError(f"cannot read ban list {path}: {exc.strerror or exc}") from None
    if not resolved.is_file():
        raise ValueError(f"ban list {path} is not a file")
    return _compiled(name, str(resolved), stat.st_size, stat.st_mtime_ns, ignore_case)


@functools.lru_cache(maxsize=32)
def _compiled(name: str, path: str, size: int, mtime_ns: int, ignore_case: bool) -> PhraseSet:
    del size, mtime_ns  # part of the key: a changed file is read again
    return PhraseSet(name, read_ban_file(path), ignore_case)


@functools.lru_cache(maxsize=256)
def inline_phrases(strings: tuple[str, ...], ignore_case: bool) -> PhraseSet:
    """Phrases given inline (``banned_strings``), banned outright, compiled once per set."""
    return PhraseSet(INLINE, dict.fromkeys(strings, 0.0), ignore_case)


@functools.lru_cache(maxsize=256)
def _regexes(patterns: tuple[str, ...], ignore_case: bool):
    return compile_regexes(patterns, ignore_case)


def build_bans(
    strings: Sequence[str] = (),
    regexes: Sequence[str] = (),
    files: Sequence[str] = (),
    *,
    ignore_case: bool = False,
    whole_words: bool = False,
    strength: float = 1.0,
    hard: bool = False,
) -> Bans | None:
    """Everything a generation must not produce, from cached parts; ``None`` if nothing."""
    if any(isinstance(given, str) for given in (strings, regexes, files)):
        raise TypeError("banned strings, regexes and files are lists of strings, not one string")
    if not (strings or regexes or files):
        return None
    sets = [ban_list(path, ignore_case) for path in files]
    if strings:
        if any(not isinstance(s, str) or not s for s in strings):
            raise ValueError("banned strings must be non-empty")
        sets.append(inline_phrases(tuple(strings), ignore_case))
    return Bans(
        sets,
        regexes,
        whole_words=whole_words,
        strength=strength,
        hard=hard,
        ignore_case=ignore_case,
        compiled=_regexes(tuple(regexes), ignore_case) if regexes else None,
    )

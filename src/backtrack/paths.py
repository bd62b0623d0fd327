"""Checking where outputs go before any expensive work (a model load, a long evaluation)."""

from __future__ import annotations

import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """An output cannot be written where it was asked to go (the message is one line)."""


def ensure_writable_directory(directory: Path, label: str) -> None:
    """Create ``directory`` (and its parents) if needed, then write a temporary file there.

    A real write, because permission bits say nothing for root or on a read-only mount.
    ``label`` names the directory in the error, e.g. ``"the result directory runs/x"``.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create {label}: {exc.strerror}") from exc
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write in {label}: {exc.strerror}") from exc

"""Settings fields that a command takes as flags, declared once: the field's one default, its
help text and its spelling, side by side.

:class:`~backtrack.evaluation.settings.EvalSettings` (``backtrack eval``) and
:class:`~backtrack.serving.settings.ServeSettings` (``backtrack serve``) declare their flag
fields with :func:`option`; the command line builds each flag from the declaration
(``cli.options``), so no flag restates a default or a help text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import Any


def option(default: Any, help: str, flag: str | Sequence[str] | None = None) -> Any:
    """A dataclass field that a command takes as a flag: its ``default``, its ``help`` and its
    spelling (``flag``: one or several, e.g. ``("--operator", "-o")``; default
    ``--field-name``)."""
    return field(default=default, metadata={"help": help, "flag": flag})


def spellings(name: str, declared: str | Sequence[str] | None) -> tuple[str, ...]:
    """The spellings of the flag of field ``name`` declared with ``flag=declared``."""
    if declared is None:
        return ("--" + name.replace("_", "-"),)
    return (declared,) if isinstance(declared, str) else tuple(declared)

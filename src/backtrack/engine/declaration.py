"""The declaration of a decoding setting: the metadata every field of
:class:`~backtrack.engine.settings.GenerationConfig` carries (bounds, "off" value, help,
command-line flag, request field), from which the CLI, the server and the config's own checks
are built (see :mod:`backtrack.engine.settings`), and the check of a value bounds cannot say
(:func:`parse_logit_bias`)."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# Where a request carries a setting: at top level (as OpenAI's, vLLM's and llama.cpp's
# servers spell sampling settings), in the ``backtrack`` extension object, or in a field the
# OpenAI protocol defines with rules of its own (``max_tokens``, ``stop``).
RequestPlace = Literal["top", "backtrack", "protocol"]
# "No value declared" (``Setting.off``, ``Setting.request_default``).
UNSET: Any = object()


@dataclass(frozen=True)
class Setting:
    """The declaration of one decoding setting (a field's metadata).

    Attributes:
        help: one line, for ``--help`` and the server's schema.
        ge, gt, le, lt: bounds of a number (``None``: no bound on that side).
        off: the value a protocol spells "this filter is off" with (vLLM's ``top_k=0``,
            OpenAI's ``top_p=1``); the config stores it as ``None``, so both spellings compare
            equal.
        flag: the command-line flag (default ``--field-name``); for a bool, ``--x/--no-x``.
        request: where an HTTP request carries it (``None``: not a request field).
        request_name: its name there, when it differs from the field's.
        request_default: the server's default when a request leaves it out, where the
            protocol defines one (``UNSET``: the config's own default).
    """

    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    off: Any = UNSET
    flag: str | None = None
    request: RequestPlace | None = "backtrack"
    request_name: str | None = None
    request_default: Any = UNSET

    def check(self, name: str, value: Any) -> None:
        """Raise a one-line ``ValueError`` if the number ``value`` breaks a bound."""
        if value is None or not any(b is not None for b in (self.ge, self.gt, self.le, self.lt)):
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        high_ok = (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
        if not (low_ok and high_ok):
            raise ValueError(f"{name} must be {self.bounds_text()}, got {value!r}")

    def bounds_text(self) -> str:
        """The bounds in words: ``>= 0``, ``in (0, 1]``..."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
        high = ("]", self.le) if self.le is not None else (")", self.lt)
        if low[1] is None:
            return f"<= {high[1]:g}" if high[0] == "]" else f"< {high[1]:g}"
        if high[1] is None:
            return f">= {low[1]:g}" if low[0] == "[" else f"> {low[1]:g}"
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"


def setting(default: Any, help: str, **declaration: Any) -> Any:
    """A dataclass field with its :class:`Setting` declaration (``default``: a value, or a
    tuple for list-valued settings, or a dict for mappings)."""
    meta = {"setting": Setting(help, **declaration)}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    """One flat setting and its declaration: ``name`` (a :data:`GENERATION_KEYS` key),
    ``setting``, its ``type`` (the field's annotation) and ``default`` (the config's)."""

    name: str
    setting: Setting
    type: Any
    default: Any

    @property
    def flag(self) -> str:
        return self.setting.flag or "--" + self.name.replace("_", "-")

    @property
    def request_name(self) -> str:
        return self.setting.request_name or self.name

    @property
    def integral(self) -> bool:
        """Whether it is an integer setting (``int`` or ``int | None``)."""
        return self.type is int or set(typing.get_args(self.type)) == {int, type(None)}


def parse_logit_bias(value: Mapping[Any, Any]) -> dict[int, float]:
    """``{token id: bias}`` from a mapping whose keys may be strings (JSON, the CLI)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"logit_bias must map token ids to biases, got {value!r}")
    out: dict[int, float] = {}
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        if token < 0:
            raise ValueError(f"logit_bias token ids must be >= 0, got {token}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
            raise ValueError(f"logit_bias[{token}] must be a finite number, got {bias!r}")
        if not -100.0 <= bias <= 100.0:
            raise ValueError(f"logit_bias[{token}] must be in [-100, 100], got {bias}")
        out[token] = float(bias)
    return out

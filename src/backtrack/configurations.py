"""The configuration language: one string for an operator and the settings it decodes with.

``backtrack generate --operator``, ``backtrack eval --operator``, the tuning search's recipes,
shipped recipes and result records all spell a decoding configuration the same way::

    configuration := "recipe:" NAME | spec ["@" settings]
    spec          := operator ("+" operator)*          # operators combined (AnyOf)
    operator      := NAME [":" params]
    params        := KEY "=" VALUE ("," KEY "=" VALUE)*
    settings      := KEY "=" VALUE ("," KEY "=" VALUE)*   # GenerationConfig's flat keys

A value is a Python literal (``16``, ``0.5``, ``None``, ``['a', 'b']``, ``{1: -100}``,
``'x,y'``), ``true`` or ``false``, or else the text itself (``ban=next``); commas inside
brackets, braces or quotes do not split. ``recipe:NAME`` stands for a shipped recipe
(:mod:`backtrack.recipes`). This module parses and formats that grammar;
:func:`format_configuration` writes what :func:`parse_configuration` reads back to the same
value.

>>> parsed = parse_configuration("probability-trend:drop=0.4+repetition@temperature=0,period=2")
>>> parsed.operators
(('probability-trend', (('drop', 0.4),)), ('repetition', ()))
>>> parsed.settings
(('temperature', 0), ('period', 2))
>>> str(parsed)
'probability-trend:drop=0.4+repetition@temperature=0,period=2'
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backtrack.literals import bracket_depths
from backtrack.recipes import expand

Params = tuple[tuple[str, Any], ...]
# Characters that end a bare word in the grammar: a text value holding one is quoted.
_SEPARATORS = set(",=@+:[](){}'\"")


class ConfigurationError(ValueError):
    """A configuration string that does not follow the grammar (a one-line message)."""


@dataclass(frozen=True)
class Configuration:
    """A parsed configuration: ``operators`` as ``(name, params)`` pairs and the generation
    ``settings`` it changes, both in the order written."""

    operators: tuple[tuple[str, Params], ...]
    settings: Params = ()

    @property
    def spec(self) -> str:
        """The operator part (``never`` when there is none)."""
        return format_spec(self.operators)

    def __str__(self) -> str:
        return format_configuration(self.operators, self.settings)


def parse_value(text: str) -> Any:
    """One value: a Python literal, ``true``/``false``, or else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at every ``separator`` outside brackets and quotes (a value may be any
    Python literal: a list, a mapping, a string holding the separator)."""
    parts, start = [], 0
    for i, char, depth in bracket_depths(text):
        if char == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_params(text: str, where: str) -> dict[str, Any]:
    """``"KEY=VALUE,..."`` as a dict of parsed values (``where``: the whole string, for the
    message of a :class:`ConfigurationError`)."""
    params: dict[str, Any] = {}
    if not text.strip():
        return params
    for item in split_top_level(text, ","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"bad parameter {item!r} in {where!r}; expected KEY=VALUE")
        if key.strip() in params:
            raise ConfigurationError(f"{key.strip()!r} is given twice in {where!r}")
        params[key.strip()] = parse_value(value.strip())
    return params


def parse_configuration(text: str) -> Configuration:
    """Parse a configuration (``recipe:NAME`` expanded first); raises ConfigurationError.

    The operator names and parameter names are not checked here (the operators' own
    constructors do, :func:`backtrack.operators.parse_operator`), nor the settings' values
    (:meth:`~backtrack.engine.settings.GenerationConfig.updated` does).
    """
    try:
        whole = expand(text)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    spec, at, settings_text = whole.partition("@")
    if at and not settings_text.strip():
        raise ConfigurationError(f"nothing after '@' in {whole!r}; expected KEY=VALUE,...")
    operators = []
    for part in split_top_level(spec, "+") if spec.strip() else []:
        name, _, params_text = part.strip().partition(":")
        if not name.strip():
            raise ConfigurationError(f"an operator without a name in {whole!r}")
        operators.append((name.strip(), tuple(parse_params(params_text, whole).items())))
    settings = tuple(parse_params(settings_text, whole).items())
    return Configuration(tuple(operators), settings)


def format_value(value: Any) -> str:
    """A value as the grammar writes it: floats to 4 significant digits (as recipes and
    records have always been named), a plain word bare, anything else as a literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        bare = value and not (_SEPARATORS & set(value)) and value == value.strip()
        return value if bare and parse_value(value) == value else repr(value)
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def format_params(params: Sequence[tuple[str, Any]] | Mapping[str, Any]) -> str:
    items = params.items() if isinstance(params, Mapping) else params
    return ",".join(f"{key}={format_value(value)}" for key, value in items)


def format_spec(operators: Sequence[tuple[str, Sequence[tuple[str, Any]]]]) -> str:
    """The operator part: ``a:x=1+b:y=2`` (``never`` for none)."""
    parts = [f"{name}:{format_params(p)}" if p else name for name, p in operators]
    return "+".join(parts) or "never"


def format_configuration(
    operators: Sequence[tuple[str, Sequence[tuple[str, Any]]]],
    settings: Sequence[tuple[str, Any]] | Mapping[str, Any] = (),
) -> str:
    """The configuration string of ``operators`` and ``settings`` (the inverse of
    :func:`parse_configuration`)."""
    spec = format_spec(operators)
    return f"{spec}@{format_params(settings)}" if settings else spec


def split_configuration(text: str) -> tuple[str, Params]:
    """``"SPEC@KEY=VALUE,..."`` -> ``(SPEC, ((KEY, VALUE), ...))``, with every setting checked
    against :class:`~backtrack.engine.settings.GenerationConfig` (a ConfigurationError
    otherwise). The spec is returned as written, for the operators' parser.

    >>> split_configuration("probability-trend@rollback_window=16")
    ('probability-trend', (('rollback_window', 16),))
    """
    from backtrack.engine.settings import GenerationConfig

    parsed = parse_configuration(text)
    spec = expand(text).partition("@")[0].strip()
    if parsed.settings:
        try:
            GenerationConfig().updated(dict(parsed.settings))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"bad settings after '@' in {text!r}: {exc}") from None
    return spec, parsed.settings

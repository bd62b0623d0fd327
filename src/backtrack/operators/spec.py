"""Operator spec strings, as used on the command line and in configs.

Grammar: ``NAME[:KEY=VALUE,...]``, several joined with ``+`` for :class:`AnyOf` (the operator
part of the configuration language, :mod:`backtrack.configurations`)::

    probability-trend
    probability-trend:window=10,drop=0.5
    chaos:p=0.3,max=4,seed=1
    probability-trend:drop=0.4+repetition:max_repetitions=4
    rl:path=policy.zip
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from backtrack import configurations
from backtrack.operators.bad_words import BadWords
from backtrack.operators.base import AnyOf, Never, Operator
from backtrack.operators.chaos import Chaos
from backtrack.operators.code import LineRestart, SyntaxCheck
from backtrack.operators.examples import Examples
from backtrack.operators.heuristics import HEURISTICS
from backtrack.operators.lookahead import Lookahead

OPERATORS: dict[str, type[Operator] | str] = {
    cls.name: cls
    for cls in (
        Never,
        *HEURISTICS,
        LineRestart,
        SyntaxCheck,
        Chaos,
        Examples,
        Lookahead,
        BadWords,
    )
}
# Loaded on first use: it needs the optional RL dependencies.
OPERATORS["rl"] = "backtrack.operators.learned:LearnedOperator"
# Short aliases.
ALIASES = {"none": "never", "base": "never", "trend": "probability-trend"}


class OperatorSpecError(ValueError):
    """An operator spec string could not be parsed."""


def register_operator(name: str, factory: type[Operator]) -> None:
    """Make ``factory`` available to spec strings under ``name``."""
    OPERATORS[name] = factory


def _resolve(name: str) -> Callable[..., Operator]:
    key = ALIASES.get(name, name)
    if key not in OPERATORS:
        known = ", ".join(sorted(OPERATORS))
        raise OperatorSpecError(f"unknown operator {name!r}; known operators: {known}")
    target = OPERATORS[key]
    if isinstance(target, str):
        module, attr = target.split(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise OperatorSpecError(
                f"operator {name!r} needs optional dependencies: "
                f"pip install 'backtrack-decoding[rl]' ({exc})"
            ) from exc
    return target


def parse_params(text: str, spec: str) -> dict[str, Any]:
    """``"KEY=VALUE,..."`` (from ``spec``, for the error message) as a dict of parsed values,
    by the configuration language's rules (:mod:`backtrack.configurations`)."""
    try:
        return configurations.parse_params(text, spec)
    except configurations.ConfigurationError as exc:
        raise OperatorSpecError(str(exc)) from None


def parse_one(spec: str) -> Operator:
    name, _, params_text = spec.strip().partition(":")
    factory = _resolve(name.strip())
    kwargs = parse_params(params_text, spec)
    params = inspect.signature(factory).parameters
    for key in kwargs:
        if key not in params:
            allowed = ", ".join(p for p in params if p != "self") or "none"
            raise OperatorSpecError(
                f"operator {name!r} has no parameter {key!r}; its parameters: {allowed}"
            )
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise OperatorSpecError(f"invalid operator spec {spec!r}: {exc}") from exc


def parse_operator(spec: str | Operator | None) -> Operator:
    """Build an operator from a spec string (an Operator passes through; None means never).

    Examples:
        >>> parse_operator("trend")
        ProbabilityTrend(window=10, drop=0.5, k=1)
        >>> parse_operator("probability-trend:drop=0.4+repetition:max_repetitions=4").name
        'probability-trend+repetition'
        >>> parse_operator("probability-trend:windw=3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        backtrack.operators.spec.OperatorSpecError: operator ... has no parameter 'windw'...
    """
    if spec is None:
        return Never()
    if isinstance(spec, Operator):
        return spec
    parts = [p for p in configurations.split_top_level(spec, "+") if p.strip()]
    if not parts:
        raise OperatorSpecError("empty operator spec")
    operators = [parse_one(p) for p in parts]
    if len(operators) == 1:
        return operators[0]
    try:
        return AnyOf(operators)
    except ValueError as exc:  # an operator that must run alone (it drives the session)
        raise OperatorSpecError(f"invalid operator spec {spec!r}: {exc}") from exc


def operator_help() -> str:
    """One line per operator: its name and parameters with defaults."""
    lines = []
    for name, target in sorted(OPERATORS.items()):
        if isinstance(target, str):
            lines.append(f"{name}: path=POLICY.zip (learned policy; needs backtrack-decoding[rl])")
            continue
        params = [
            f"{p.name}={p.default!r}"
            for p in inspect.signature(target).parameters.values()
            if p.default is not inspect.Parameter.empty
        ]
        # First docstring line, without the reST literal markup (``x`` -> x) meant for Sphinx.
        doc = (target.__doc__ or "").strip().splitlines()[0].replace("``", "")
        lines.append(f"{name}: {', '.join(params) or '-'}  {doc}")
    return "\n".join(lines)

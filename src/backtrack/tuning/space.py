"""The search space of ``backtrack tune``: a full decoding recipe per trial.

A recipe is one operator (or an :class:`~backtrack.operators.AnyOf` of two) with its
parameters, plus the generation settings that change what the operator does: ``temperature``
(0, 0.2 or 0.5), ``period`` and the ban mode. It is spelled as an evaluation configuration,
``SPEC@temperature=T,period=P,ban=B``, so the evaluation runner decodes it next to ``base``
on the same seeds, and the same string can be passed to ``backtrack eval --operator``.

Parameter names are prefixed by the slot (``op1.``, ``op2.``) and the operator, so Optuna's
TPE sees one distribution per name. Float ranges are stepped (not continuous) so recipes stay
readable and near-identical trials share their records.

``lookahead`` forces tokens through the session, so it runs alone and at ``period=1``: its
recipes have no second operator and no period to search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backtrack.configurations import (
    ConfigurationError,
    format_configuration,
    format_spec,
    parse_configuration,
)
from backtrack.engine.settings import GenerationConfig

# The settings a recipe leaves at their defaults when it has nothing to set them for.
_DEFAULTS = GenerationConfig()

#: Per operator, its parameters: ``(kind, low, high[, step])``, or ``("cat", choices)``.
OPERATOR_SPACE: dict[str, dict[str, tuple]] = {
    "never": {},
    "probability-threshold": {"min_prob": ("float", 0.01, 0.3, 0.01), "k": ("int", 1, 4)},
    "entropy-threshold": {"max_entropy": ("float", 0.5, 4.0, 0.1), "k": ("int", 1, 4)},
    "probability-margin": {"min_margin": ("float", 0.01, 0.3, 0.01), "k": ("int", 1, 4)},
    "probability-drop": {"max_drop": ("float", 0.5, 0.98, 0.02), "k": ("int", 1, 4)},
    "probability-trend": {
        "window": ("int", 4, 20),
        "drop": ("float", 0.1, 0.8, 0.05),
        "k": ("int", 1, 4),
    },
    "repetition": {"max_repetitions": ("int", 2, 8)},
    "ngram-overlap": {"n": ("int", 3, 8), "k": ("int", 1, 4)},
    "logit-threshold": {"min_logit": ("float", -30.0, -5.0, 1.0), "k": ("int", 1, 4)},
    "line-restart": {
        "min_prob": ("float", 0.01, 0.3, 0.01),
        "min_mean": ("float", 0.0, 0.6, 0.05),
        "max_k": ("int", 8, 48),
    },
    "syntax-check": {"max_k": ("int", 16, 96)},
    # AdaDec-style lookahead: entropy gate, candidates, tokens each is scored on. It forces
    # tokens through the session, so it is never combined and always runs at period 1.
    "lookahead": {
        "threshold": ("float", 0.3, 3.0, 0.1),
        "m": ("int", 2, 4),
        "length": ("int", 2, 8),
    },
    # Test-guided repair with the prompt's visible examples: repairs before keeping the best
    # attempt, and where a repair resumes (the least-confident token or line).
    "examples": {"max_repairs": ("int", 1, 6), "target": ("cat", ("token", "line"))},
}
#: Operators that run alone (no second operator) at ``period=1``.
ALONE = ("lookahead",)
TEMPERATURES = (0.0, 0.2, 0.5)
PERIODS = (1, 2, 4)
BANS = ("accumulate", "next", "none")
NO_SECOND = "none"
#: The generation settings a recipe chooses (the rest are fixed for a whole search).
SEARCHED = ("temperature", "period", "ban")


@dataclass(frozen=True)
class Recipe:
    """One trial's decoding recipe."""

    operators: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]
    temperature: float
    period: int
    ban: str

    @property
    def spec(self) -> str:
        """The operator spec string (``a:x=1+b:y=2``; ``never`` for plain decoding)."""
        return format_spec(self.operators)

    @property
    def name(self) -> str:
        """The evaluation configuration: ``SPEC@temperature=...,period=...,ban=...``."""
        settings = (("temperature", self.temperature), ("period", self.period), ("ban", self.ban))
        return format_configuration(self.operators, settings)


def _suggest(trial, name: str, spec: tuple) -> Any:
    if spec[0] == "cat":
        return trial.suggest_categorical(name, spec[1])
    kind, low, high, *rest = spec
    if kind == "int":
        return trial.suggest_int(name, low, high)
    value = trial.suggest_float(name, low, high, step=rest[0])
    return round(value, 4)


def suggest_recipe(trial, operators: tuple[str, ...] | None = None) -> Recipe:
    """Draw a recipe from ``trial`` (an ``optuna.Trial``).

    ``operators``: the operator names to choose from (default: all of :data:`OPERATOR_SPACE`).
    """
    names = tuple(operators or OPERATOR_SPACE)
    unknown = [n for n in names if n not in OPERATOR_SPACE]
    if unknown:
        known = ", ".join(OPERATOR_SPACE)
        raise ValueError(f"no search space for {', '.join(unknown)}; known: {known}")
    first = trial.suggest_categorical("op1", names)
    chosen = [(first, _params(trial, "op1", first))]
    if first != "never" and first not in ALONE:
        # Optuna needs one fixed set of choices per name: the same operator twice means one.
        seconds = [n for n in names if n != "never" and n not in ALONE]
        second = trial.suggest_categorical("op2", (NO_SECOND, *seconds))
        if second not in (NO_SECOND, first):
            chosen.append((second, _params(trial, "op2", second)))
    temperature = trial.suggest_categorical("temperature", TEMPERATURES)
    if first == "never":
        period, ban = _DEFAULTS.period, _DEFAULTS.ban  # nothing to consult or ban
    elif first in ALONE:
        period, ban = _DEFAULTS.period, str(trial.suggest_categorical("ban", BANS))
    else:
        period = trial.suggest_categorical("period", PERIODS)
        ban = trial.suggest_categorical("ban", BANS)
    return Recipe(tuple(chosen), float(temperature), int(period), str(ban))


def _params(trial, slot: str, operator: str) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (param, _suggest(trial, f"{slot}.{operator}.{param}", spec))
        for param, spec in OPERATOR_SPACE[operator].items()
    )


def recipe_params(name: str) -> dict[str, Any]:
    """The trial parameters that :func:`suggest_recipe` would turn into the recipe ``name``
    (``SPEC@temperature=T,period=P,ban=B``, as :attr:`Recipe.name` spells it), for
    ``study.enqueue_trial``: a search can start from known recipes (plain greedy, the paper's
    defaults) instead of only random ones.

    >>> recipe_params("never@temperature=0")
    {'op1': 'never', 'temperature': 0.0}
    """
    try:
        parsed = parse_configuration(name)
    except ConfigurationError as exc:
        raise ValueError(f"{name!r}: {exc}") from None
    settings = dict(parsed.settings)
    unknown = sorted(set(settings) - set(SEARCHED))
    if unknown:
        raise ValueError(f"{name!r}: expected temperature=, period=, ban= after @, got {unknown}")
    parts = parsed.operators
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"{name!r}: a recipe has one operator or two joined by +")
    params: dict[str, Any] = {}
    for slot, (operator, args) in zip(("op1", "op2"), parts, strict=False):
        if operator not in OPERATOR_SPACE or (slot == "op2" and operator == "never"):
            raise ValueError(f"{name!r}: {operator!r} is not in the search space")
        if operator in ALONE and len(parts) > 1:
            raise ValueError(f"{name!r}: {operator} is never combined with another operator")
        given = dict(args)
        space = OPERATOR_SPACE[operator]
        if set(given) != set(space):
            raise ValueError(f"{name!r}: {operator} needs exactly {', '.join(space) or 'nothing'}")
        params[slot] = operator
        for param, param_space in space.items():
            if param_space[0] == "cat":
                if given[param] not in param_space[1]:
                    raise ValueError(
                        f"{name!r}: {operator}.{param} must be one of {param_space[1]}"
                    )
                params[f"{slot}.{operator}.{param}"] = given[param]
                continue
            kind, low, high, *rest = param_space
            value: Any = int(given[param]) if kind == "int" else float(given[param])
            on_grid = (
                kind == "int"
                or abs((value - low) / rest[0] - round((value - low) / rest[0])) < 1e-6
            )
            if not (low <= value <= high and on_grid):
                raise ValueError(
                    f"{name!r}: {operator}.{param}={value} is outside the searched grid"
                )
            params[f"{slot}.{operator}.{param}"] = value
    if parts[0][0] not in ("never", *ALONE) and len(parts) == 1:
        params["op2"] = NO_SECOND
    temperature = float(settings.get("temperature", "nan"))
    if temperature not in TEMPERATURES:
        raise ValueError(f"{name!r}: temperature must be one of {TEMPERATURES}")
    params["temperature"] = temperature
    if params["op1"] == "never":
        period, ban = settings.get("period", _DEFAULTS.period), settings.get("ban", _DEFAULTS.ban)
        if (period, ban) != (_DEFAULTS.period, _DEFAULTS.ban):
            raise ValueError(f"{name!r}: plain decoding has no period or ban to set")
    else:
        period = int(settings.get("period", _DEFAULTS.period))
        ban = settings.get("ban", _DEFAULTS.ban)
        if period not in PERIODS or ban not in BANS:
            raise ValueError(f"{name!r}: period must be in {PERIODS} and ban in {BANS}")
        if params["op1"] in ALONE:
            if period != _DEFAULTS.period:
                raise ValueError(f"{name!r}: {params['op1']} runs at period=1 only")
            params.update(ban=ban)
        else:
            params.update(period=period, ban=ban)
    return params

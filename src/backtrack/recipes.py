"""Named decoding recipes found by ``backtrack tune``, shipped with the studies that found them.

A recipe is a whole evaluation configuration, ``SPEC@temperature=T,period=P,ban=B``: an
operator with its parameters plus the settings that change what it does. ``recipe:NAME`` stands
in for it wherever a configuration is taken::

    backtrack generate --operator recipe:qwen2.5-coder-0.5b-instruct --prompt "def f(x):"
    backtrack eval humaneval --operator recipe:qwen2.5-coder-0.5b-instruct

An evaluation names its records by the expanded configuration, so a result directory says
exactly what was decoded even if a later release tunes the recipe again. Each entry carries
where its study lives in the repository and what the study measured, so a recipe is never
just a string without its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "recipe:"


@dataclass(frozen=True)
class TunedRecipe:
    """One shipped recipe and its provenance.

    Args:
        model: the model it was tuned for (a name of ``backtrack models``).
        configuration: the recipe, spelled as ``backtrack eval --operator`` takes it.
        study: the study folder in this repository (summary, plots, Optuna storage).
        found: what the search and the selection measured, in words, with their CIs.
    """

    model: str
    configuration: str
    study: str
    found: str


RECIPES: dict[str, TunedRecipe] = {
    "qwen2.5-coder-0.5b-instruct": TunedRecipe(
        model="qwen2.5-coder-0.5b-instruct",
        configuration=(
            "line-restart:min_prob=0.09,min_mean=0.15,max_k=26+ngram-overlap:n=7,k=2"
            "@temperature=0,period=4,ban=next"
        ),
        study="studies/qwen2.5-coder-0.5b-instruct",
        found=(
            "Best of a pilot search (8 trials, llama.cpp). MBPP train, 374 problems: +7.2 "
            "points over sampling at T=0.5, 1.05 forward passes per token. MBPP validation, 90 "
            "problems: +3.3 [-4.4, +11.1] over sampling, but -2.2 [-5.6, +0.0] against plain "
            "greedy decoding: its gain is the temperature's, not the operator's."
        ),
    ),
}


def expand(text: str) -> str:
    """``recipe:NAME`` -> its configuration; anything else is returned unchanged.

    >>> expand("probability-trend")
    'probability-trend'
    """
    text = text.strip()
    if not text.startswith(PREFIX):
        return text
    name = text[len(PREFIX) :]
    if name not in RECIPES:
        known = ", ".join(PREFIX + n for n in RECIPES) or "none"
        raise ValueError(f"unknown recipe {text!r}; shipped recipes: {known}")
    return RECIPES[name].configuration


def describe() -> str:
    """The shipped recipes, one paragraph each (for ``backtrack operators``)."""
    if not RECIPES:
        return "No tuned recipes are shipped."
    parts = []
    for name, recipe in RECIPES.items():
        parts.append(
            f"{PREFIX}{name}\n    {recipe.configuration}\n    model: {recipe.model}; "
            f"study: {recipe.study}\n    {recipe.found}"
        )
    return "Tuned recipes (`--operator recipe:NAME`):\n" + "\n".join(parts)

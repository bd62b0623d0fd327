"""The configuration language (``SPEC@KEY=VALUE``, ``recipe:NAME``): one grammar, parsed and
formatted in one module, round-trip tested; the tuning search and the CLI use it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtrack.configurations import (
    Configuration,
    ConfigurationError,
    format_configuration,
    parse_configuration,
    split_configuration,
)
from backtrack.operators import parse_operator
from backtrack.recipes import RECIPES
from backtrack.tuning.space import Recipe, recipe_params

NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True)
KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
VALUES = st.one_of(
    st.integers(-1000, 1000),
    # Floats are written to 4 significant digits (as records have always been named), so the
    # round trip is exact for the values such strings hold.
    st.integers(-9999, 9999).map(lambda n: n / 100),
    st.booleans(),
    st.none(),
    TEXT,
    st.lists(TEXT, max_size=3),
    # A mapping (logit_bias): its commas and colons stand inside braces.
    st.dictionaries(TEXT, st.integers(-100, 100), max_size=3),
)
PARAMS = st.lists(st.tuples(KEYS, VALUES), max_size=3, unique_by=lambda kv: kv[0]).map(tuple)


@given(st.lists(st.tuples(NAMES, PARAMS), min_size=1, max_size=3).map(tuple), PARAMS)
def test_format_then_parse_gives_back_the_configuration(operators, settings):
    text = format_configuration(operators, settings)
    parsed = parse_configuration(text)
    assert parsed == Configuration(operators, settings)
    assert str(parsed) == text  # and the text is canonical


def test_the_grammar_reads_what_records_and_recipes_have_always_written():
    parsed = parse_configuration("line-restart:min_prob=0.09,max_k=26+ngram-overlap:n=7,k=2"
                                 "@temperature=0,period=4,ban=next")  # fmt: skip
    assert parsed.operators == (
        ("line-restart", (("min_prob", 0.09), ("max_k", 26))),
        ("ngram-overlap", (("n", 7), ("k", 2))),
    )
    assert parsed.settings == (("temperature", 0), ("period", 4), ("ban", "next"))
    # A recipe name expands to its configuration, which then parses like any other.
    for name, recipe in RECIPES.items():
        assert str(parse_configuration(f"recipe:{name}")) == recipe.configuration
    # Commas inside a literal do not split: a list-valued setting.
    assert parse_configuration("never@banned_strings=['a,b', 'c']").settings == (
        ("banned_strings", ["a,b", "c"]),
    )
    # ... and a mapping, or a string ending in an escaped backslash, neither.
    assert parse_configuration("never@logit_bias={'1': 2.0, '3': -1.0},top_k=5").settings == (
        ("logit_bias", {"1": 2.0, "3": -1.0}),
        ("top_k", 5),
    )
    assert parse_configuration("never@stop=['a\\\\', ','],top_k=5").settings == (
        ("stop", ["a\\", ","]),
        ("top_k", 5),
    )


def test_tuning_recipes_are_spelled_and_read_by_the_same_grammar():
    recipe = Recipe(
        (("probability-trend", (("window", 10), ("drop", 0.45), ("k", 2))),),
        temperature=0.2,
        period=2,
        ban="next",
    )
    assert (
        recipe.name == "probability-trend:window=10,drop=0.45,k=2@temperature=0.2,period=2,ban=next"
    )
    assert str(parse_configuration(recipe.name)) == recipe.name
    params = recipe_params(recipe.name)
    assert params["op1.probability-trend.drop"] == 0.45 and params["ban"] == "next"


@pytest.mark.parametrize(
    "text, message",
    [
        ("trend@", "nothing after '@'"),
        ("trend@temperature", "expected KEY=VALUE"),
        ("trend@temperature=0,temperature=1", "given twice"),
        ("+trend", "without a name"),
        ("recipe:nope", "unknown recipe"),
    ],
)
def test_bad_configurations_are_one_line_errors(text, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_configuration(text)


def test_settings_are_checked_and_operators_parse_the_same_values():
    with pytest.raises(ConfigurationError, match="temperature must be in"):
        split_configuration("trend@temperature=-1")
    assert split_configuration("trend:drop=0.4@period=2") == ("trend:drop=0.4", (("period", 2),))
    assert parse_operator("probability-trend:drop=0.4,window=8").window == 8

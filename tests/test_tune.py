"""``backtrack tune`` on the tiny model and real MBPP problems: the search space, a resumed
study, pruning bookkeeping, the constraint, selection on validation, the summary."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import optuna
import pytest

from backtrack.evaluation.settings import EvalError, build_configurations, split_configuration
from backtrack.evaluation.store import ResultStore
from backtrack.operators.spec import OPERATORS, parse_operator
from backtrack.tuning.report import write_summary
from backtrack.tuning.settings import TuneSettings
from backtrack.tuning.space import OPERATOR_SPACE, recipe_params, suggest_recipe
from backtrack.tuning.study import (
    _SET_CONSTRAINT,
    canonical_recipe,
    plain_recipe,
    run_search,
    select_winners,
    validate_every_trial,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_searched_parameter_exists_and_both_ends_are_valid():
    for name, params in OPERATOR_SPACE.items():
        factory = OPERATORS[name]
        signature = inspect.signature(factory).parameters

        def valid(spec):  # one value of a parameter's space
            return spec[1][0] if spec[0] == "cat" else spec[1]

        for param, spec in params.items():
            assert param in signature, f"{name} has no parameter {param}"
            # a categorical parameter: every choice; a range: both ends
            values = spec[1] if spec[0] == "cat" else spec[1:3]
            for value in values:
                others = {p: valid(other) for p, other in params.items() if p != param}
                kwargs = {**others, param: value}
                factory(**kwargs)  # raises if the range leaves the operator's domain


def test_a_recipe_is_an_evaluation_configuration():
    trial = optuna.trial.FixedTrial(
        {
            "op1": "probability-trend",
            "op1.probability-trend.window": 8,
            "op1.probability-trend.drop": 0.35,
            "op1.probability-trend.k": 2,
            "op2": "syntax-check",
            "op2.syntax-check.max_k": 40,
            "temperature": 0.2,
            "period": 1,
            "ban": "next",
        }
    )
    recipe = suggest_recipe(trial)
    assert recipe.name == (
        "probability-trend:window=8,drop=0.35,k=2+syntax-check:max_k=40"
        "@temperature=0.2,period=1,ban=next"
    )
    spec, generation = split_configuration(recipe.name)
    assert len(parse_operator(spec).operators) == 2
    assert dict(generation) == {"temperature": 0.2, "period": 1, "ban": "next"}
    assert build_configurations([recipe.name])[1].name == recipe.name
    plain = suggest_recipe(optuna.trial.FixedTrial({"op1": "never", "temperature": 0.0}))
    assert plain.name == "never@temperature=0,period=1,ban=accumulate"


def test_every_sampled_recipe_reads_back_to_its_parameters():
    # A random search over the whole space: each recipe's name parses back to the parameters
    # that made it (what `--enqueue` relies on), and to the same name.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(300):
        trial = study.ask()
        recipe = suggest_recipe(trial)
        fixed = suggest_recipe(optuna.trial.FixedTrial(recipe_params(recipe.name)))
        assert fixed == recipe
        assert canonical_recipe(recipe.name) == recipe.name
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("never@temperature=0.3", "temperature must be one of"),
        ("nope@temperature=0", "not in the search space"),
        ("probability-trend:window=8@temperature=0.5", "needs exactly window, drop, k"),
        ("probability-trend:window=8,drop=0.33,k=2@temperature=0.5", "outside the searched grid"),
        ("never@temperature=0,period=4", "no period or ban"),
        ("never+never@temperature=0", "not in the search space"),
        ("never@temp=0", "expected temperature="),
    ],
)
def test_a_recipe_outside_the_space_is_refused_before_anything_loads(name, message):
    with pytest.raises(ValueError, match=message):
        TuneSettings(out="x", data_path="y", enqueue=(name,))


def test_plain_recipe_is_plain_decoding_at_the_recipes_temperature():
    trend = "probability-trend:window=8,drop=0.35,k=2@temperature={},period=1,ban=next"
    assert plain_recipe(trend.format(0.2)) == "never@temperature=0.2,period=1,ban=accumulate"
    assert plain_recipe(trend.format(0)) == "never@temperature=0,period=1,ban=accumulate"
    assert plain_recipe(trend.format(0.5)) == "base"
    assert plain_recipe("never@temperature=0") is None


def test_bad_settings():
    with pytest.raises(ValueError, match="rungs"):
        TuneSettings(out="x", data_path="y", rungs=(10, 5))


def test_a_study_runs_resumes_and_selects(tiny, shared_data, tmp_path):
    model, tokenizer = tiny
    settings = TuneSettings(
        out=str(tmp_path / "study"),
        data_path=str(shared_data / "mbpp" / "mbpp_release_v1.jsonl"),
        model="tiny-random-qwen2",
        backend="transformers",
        trials=3,
        rungs=(2, 4),
        operators=("probability-trend", "line-restart", "never"),
        batch_size=4,
        max_new_tokens=12,
        max_forward_per_token=3.0,
        enqueue=("never@temperature=0",),
    )
    study = run_search(settings, model, tokenizer, progress=False)
    assert len(study.trials) == 3
    greedy = "never@temperature=0,period=1,ban=accumulate"
    assert study.trials[0].user_attrs["recipe"] == greedy  # the enqueued anchor runs first
    records, _ = ResultStore(tmp_path / "study" / "train").load()
    cells = [(r["config"], r["run"], r["task_id"]) for r in records]
    assert len(cells) == len(set(cells)), "a cell was decoded twice"
    # Resumed: the same storage, two more trials, base never decoded again.
    base_before = sum(1 for c in cells if c[0] == "base")
    settings.trials = 2
    study = run_search(settings, model, tokenizer, progress=False)
    assert len(study.trials) == 5
    # Reseeded on resume: the sampler does not replay its first draws.
    assert study.trials[3].params != study.trials[0].params
    records, _ = ResultStore(tmp_path / "study" / "train").load()
    cells = [(r["config"], r["run"], r["task_id"]) for r in records]
    assert len(cells) == len(set(cells))
    assert sum(1 for c in cells if c[0] == "base") == base_before == 4
    # Queued once per study: resuming with the same --enqueue does not run it again.
    queued = [t for t in study.trials if "fixed_params" in t.system_attrs]
    assert [t.user_attrs["recipe"] for t in queued] == [greedy]
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.user_attrs["problems"] == 4
            assert trial.user_attrs["forward_per_token"] >= 1.0
            if _SET_CONSTRAINT:  # the constraint TPE sees is the one of the largest subset
                stored = trial.system_attrs["constraints:forward_per_token"]
                assert stored == trial.user_attrs["constraint"]
    ranked = select_winners(
        settings, top=2, runs=1, model=model, tokenizer=tokenizer, limit=3, progress=False
    )
    assert ranked and all(c.validation is not None and c.validation.problems == 3 for c in ranked)
    # Each recipe is also compared with plain decoding at its own temperature, decoded too.
    validation, _ = ResultStore(tmp_path / "study" / "validation").load()
    decoded = {r["config"] for r in validation}
    for c in ranked:
        plain = plain_recipe(c.recipe)
        assert (c.over_plain is None) == (plain is None) == c.recipe.startswith("never@")
        if plain is not None:
            assert plain in decoded and c.over_plain.problems == 3
    assert any(c.over_plain is not None for c in ranked)
    summary = (tmp_path / "study" / "summary.md").read_text()
    assert "Validated on MBPP validation" in summary and ranked[0].recipe in summary
    payload = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert len(payload["trials"]) == 5
    assert (tmp_path / "study" / "pareto.png").exists()
    import matplotlib

    # Optuna's plots set its ggplot style process-wide; the summary must not leave it behind.
    assert matplotlib.rcParams["axes.facecolor"] == "white"
    write_summary(settings, study)  # again, without validation: the earlier one is kept
    assert ranked[0].recipe in (tmp_path / "study" / "summary.md").read_text().split("## Search")[0]
    # Every trial's recipe on validation, the selection's cells reused.
    before = len(validation)
    points = validate_every_trial(
        settings, runs=1, model=model, tokenizer=tokenizer, limit=3, progress=False
    )
    recipes = {t.user_attrs["recipe"] for t in study.trials if "recipe" in t.user_attrs}
    assert {p.recipe for p in points} == recipes
    assert sorted(n for p in points for n in p.trials) == [t.number for t in study.trials]
    assert all(p.validation.problems == 3 for p in points)
    validation, _ = ResultStore(tmp_path / "study" / "validation").load()
    decoded = {r["config"] for r in validation}
    assert recipes <= decoded and len(validation) >= before
    assert len({(r["config"], r["task_id"]) for r in validation}) == len(validation)
    assert (tmp_path / "study" / "pareto_validation.png").exists()
    text = (tmp_path / "study" / "summary.md").read_text()
    assert "Every trial on MBPP validation" in text and "Validated on MBPP validation" in text
    write_summary(settings, study)  # kept, as the selection is
    assert "Every trial on MBPP validation" in (tmp_path / "study" / "summary.md").read_text()


def test_shipped_recipes_expand_everywhere_a_configuration_is_taken():
    from backtrack.recipes import PREFIX, RECIPES, describe, expand

    assert RECIPES, "no recipe is shipped"
    for name, recipe in RECIPES.items():
        alias = PREFIX + name
        assert expand(alias) == recipe.configuration
        # It is a point of the search space, and an evaluation names its records by it.
        assert canonical_recipe(recipe.configuration) == recipe.configuration
        assert build_configurations([alias])[1].name == recipe.configuration
        spec, generation = split_configuration(alias)
        parse_operator(spec)
        assert dict(generation)["temperature"] == recipe_params(recipe.configuration)["temperature"]
        assert alias in describe() and recipe.study in describe()
        # Its study ships with it.
        assert (REPO_ROOT / recipe.study / "summary.md").is_file()
    with pytest.raises(EvalError, match="unknown recipe 'recipe:nope'; shipped recipes: recipe:"):
        build_configurations(["recipe:nope"])
    assert expand("probability-trend@temperature=0") == "probability-trend@temperature=0"

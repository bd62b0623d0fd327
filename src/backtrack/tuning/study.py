"""``backtrack tune``: an Optuna search for the best decoding recipe, on MBPP only.

The search (:func:`run_search`):

* each trial is a recipe (:mod:`backtrack.tuning.space`) decoded with the batch decoder
  through the evaluation runner into the study's result directory, next to ``base`` (plain
  sampling at the evaluation's temperature 0.5 and top-k 50) on the same problems and seeds;
* the objective is the **paired pass@1 gain over base** on MBPP *train* (601-974), one sample
  per problem;
* trials grow over problem subsets (``--rungs``, e.g. 40, 120, 374 problems) and report the
  gain at each; Optuna's successive-halving pruner stops the bad ones early;
* the constraint: at most ``--max-forward-per-token`` forward passes per accepted token
  (default 1.15, about what beam search with 2 beams costs in wall time), passed to the TPE
  sampler as a constraint, so infeasible recipes are never chosen as best; a trial over it at
  a rung stops there (pruned) rather than decode the larger rungs;
* the sampler is TPE, seeded; the study lives in SQLite (``--storage``, ``--study``), so an
  interrupted search (Ctrl-C) resumes where it stopped, and every decoded cell is kept in the
  result directory (resumed, never decoded twice).

Selection (:func:`select_winners`) never looks at HumanEval: the best feasible recipes of the
search are decoded on MBPP *validation* (511-600) with several runs, paired against base, and
ranked by that gain with its bootstrap CI. :func:`validate_every_trial` decodes every trial's
recipe there, for the Pareto plot of the whole search on problems it never saw; both decode
and score through :func:`validate`. The settings are :mod:`backtrack.tuning.settings`'s; the
summary and plots (:mod:`backtrack.tuning.report`) are written next to the study.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from backtrack.evaluation.generation.runner import load_problems, run_eval
from backtrack.evaluation.reporting.metrics import compare, forward_passes_per_token
from backtrack.evaluation.settings import BASE
from backtrack.evaluation.store import ResultStore
from backtrack.tuning.report import Candidate, Score, TrialValidation, write_summary
from backtrack.tuning.settings import TuneSettings
from backtrack.tuning.space import recipe_params, suggest_recipe


def score(
    out: Path, config: str, tasks: Sequence[str] | None = None, reference: str = BASE
) -> Score:
    """``config``'s paired comparison with ``reference`` (default base) in the result directory
    ``out``, on the problems ``tasks`` (default: every problem both have), every run."""
    records, _ = ResultStore(out).load()
    if tasks is not None:
        wanted = set(tasks)
        records = [r for r in records if r["task_id"] in wanted]
    records = [r for r in records if r["config"] in (config, reference)]
    comparison = compare(records, config, reference)
    mine = [r for r in records if r["config"] == config]
    return Score(
        gain=100 * comparison.diff.mean,
        low=100 * comparison.diff.low,
        high=100 * comparison.diff.high,
        pass_at_1=100 * comparison.config_mean,
        base_pass_at_1=100 * comparison.baseline_mean,
        forward_per_token=forward_passes_per_token(
            [int(r["forward_passes"]) for r in mine], [max(1, int(r["final_tokens"])) for r in mine]
        ),
        problems=comparison.diff.n_problems,
        runs=comparison.diff.n_runs,
    )


def _has_set_constraint() -> bool:
    try:
        import optuna
    except ImportError:
        return False
    return hasattr(optuna.trial.Trial, "set_constraint")


_SET_CONSTRAINT = _has_set_constraint()


def _set_constraint(trial, excess: float) -> None:
    # Optuna 5 keeps the first value a trial sets and ignores later ones (with a warning), so
    # set it once, when the trial ends, from its largest subset.
    if _SET_CONSTRAINT:
        trial.set_constraint("forward_per_token", excess)


def _constraints(trial) -> list[float]:
    # Optuna: <= 0 means feasible.
    return [float(trial.user_attrs.get("constraint", 1.0))]


def open_study(settings: TuneSettings, sampler_seed: int | None = None):
    """Create or resume the study (TPE with the constraint; successive halving)."""
    import optuna

    Path(settings.out).mkdir(parents=True, exist_ok=True)
    # Optuna marks constraints (and its matplotlib plots) experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Optuna 5 reads constraints that trials set (Trial.set_constraint); 4.x asks a function.
    constraints = {} if _SET_CONSTRAINT else {"constraints_func": _constraints}
    sampler = optuna.samplers.TPESampler(
        seed=settings.seed if sampler_seed is None else sampler_seed,
        n_startup_trials=8,
        **constraints,
    )
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=settings.rungs[0], reduction_factor=3
    )
    study = optuna.create_study(
        study_name=settings.study,
        storage=settings.storage_url,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    if study.trials and sampler_seed is None:
        # A resumed study: reseed past the trials it has, or the sampler would draw the same
        # first points again (TPE's start-up trials are random).
        study.sampler = optuna.samplers.TPESampler(
            seed=settings.seed + len(study.trials), n_startup_trials=8, **constraints
        )
    return study


def run_search(
    settings: TuneSettings,
    model=None,
    tokenizer=None,
    log: Callable[[str], None] = print,
    progress: bool = True,
):
    """Run ``settings.trials`` more trials of the study; return the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(settings)
    # A trial interrupted last time (Ctrl-C) stays RUNNING in the storage: mark it failed so
    # the sampler does not wait on it; its decoded cells are reused by the next trial.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    _enqueue(study, settings.enqueue)
    pool = None
    if settings.ray:
        # One pool for the whole search: each actor loads the model once, and every trial's
        # cells are spread over all actors. (One trial per actor would need one writer per
        # trial, but every trial writes the study's one result directory, next to base.)
        from backtrack.evaluation.generation.distributed import RayPool

        pool = RayPool(settings.eval_settings("train", [], None), settings.ray, settings.ray_actors)
    elif model is None:
        from backtrack.models import load_model

        model, tokenizer = load_model(
            settings.model, dtype=settings.dtype, backend=settings.backend
        )
    train = Path(settings.out) / "train"

    def objective(trial) -> float:
        recipe = suggest_recipe(trial, tuple(settings.operators) if settings.operators else None)
        trial.set_user_attr("recipe", recipe.name)
        for rung in settings.rungs:
            evaluation = settings.eval_settings("train", [recipe.name], rung)
            run_eval(evaluation, model, tokenizer, progress=False, log=log, pool=pool)
            tasks = [p.task_id for p in load_problems(evaluation)[0]]
            result = score(train, recipe.name, tasks)
            excess = result.forward_per_token - settings.max_forward_per_token
            trial.set_user_attr("constraint", excess)
            trial.set_user_attr("forward_per_token", result.forward_per_token)
            trial.set_user_attr("pass_at_1", result.pass_at_1)
            trial.set_user_attr("problems", result.problems)
            trial.report(result.gain, rung)
            if rung != settings.rungs[-1] and (excess > 0 or trial.should_prune()):
                _set_constraint(trial, excess)
                raise optuna.TrialPruned()  # a bad or too costly recipe stops here
        _set_constraint(trial, excess)
        return result.gain

    try:
        study.optimize(
            objective,
            n_trials=settings.trials,
            show_progress_bar=progress,
            catch=(),
        )
    finally:
        if pool is not None:
            pool.close()
    return study


def canonical_recipe(name: str) -> str:
    """``name`` as the search spells it (every setting, rounded values)."""
    import optuna

    return suggest_recipe(optuna.trial.FixedTrial(recipe_params(name))).name


def _enqueue(study, names: Sequence[str]) -> None:
    """Enqueue each recipe the study has not tried, is not trying and has not queued (an
    interrupted, failed one is queued again: its decoded cells are reused)."""
    import optuna

    known = set()
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING:
            fixed = trial.system_attrs.get("fixed_params") or {}
            known.add(suggest_recipe(optuna.trial.FixedTrial(fixed)).name)
        elif trial.state != optuna.trial.TrialState.FAIL and "recipe" in trial.user_attrs:
            known.add(trial.user_attrs["recipe"])
    for name in names:
        wanted = canonical_recipe(name)
        if wanted not in known:
            study.enqueue_trial(recipe_params(name))
            known.add(wanted)


# ---------------------------------------------------------------------- selection and report
def finished_trials(study) -> list[Candidate]:
    """Completed trials, feasible ones first, each group by train gain (best first)."""
    import optuna

    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "recipe" in t.user_attrs
    ]
    done.sort(key=lambda t: (_constraints(t)[0] > 0, -(t.value or 0.0)))
    return [
        Candidate(
            t.number, t.user_attrs["recipe"], float(t.value), t.user_attrs["forward_per_token"]
        )
        for t in done
    ]


def select_winners(
    settings: TuneSettings,
    top: int = 3,
    runs: int = 3,
    model=None,
    tokenizer=None,
    log: Callable[[str], None] = print,
    limit: int | None = None,
    progress: bool = True,
) -> list[Candidate]:
    """Decode the ``top`` best feasible recipes of the search on MBPP validation (``runs``
    runs, paired with base; the first ``limit`` problems, default all 90) and rank them by
    their validation gain; write the summary."""
    study = open_study(settings)
    feasible = [
        c
        for c in finished_trials(study)
        if c.train_forward_per_token <= settings.max_forward_per_token
    ]
    chosen = feasible[:top]
    if not chosen:
        raise ValueError("the study has no completed trial within the forward-pass constraint")
    scores = validate(
        settings, [c.recipe for c in chosen], runs, limit, model, tokenizer, log, progress
    )
    ranked = [
        Candidate(c.number, c.recipe, c.train_gain, c.train_forward_per_token, *scores[c.recipe])
        for c in chosen
    ]
    ranked.sort(key=lambda c: -c.validation.gain if c.validation else 0.0)
    write_summary(settings, study, ranked)
    return ranked


def validate_every_trial(
    settings: TuneSettings,
    runs: int = 1,
    model=None,
    tokenizer=None,
    log: Callable[[str], None] = print,
    limit: int | None = None,
    progress: bool = True,
) -> list[TrialValidation]:
    """Decode the recipe of every trial (complete, pruned or stopped) on MBPP validation, with
    plain decoding at each recipe's temperature, and write the summary and
    ``pareto_validation.png``: the whole search, scored on problems it never saw. Cells
    already decoded (by ``--select``, or an interrupted call) are reused."""
    study = open_study(settings)
    trials = [t for t in study.get_trials(deepcopy=False) if "recipe" in t.user_attrs]
    if not trials:
        raise ValueError("the study has no trial with a recipe yet")
    by_recipe: dict[str, list] = {}
    for t in trials:
        by_recipe.setdefault(t.user_attrs["recipe"], []).append(t)
    scores = validate(settings, list(by_recipe), runs, limit, model, tokenizer, log, progress)
    points = [
        TrialValidation(
            tuple(t.number for t in group),
            tuple(t.state.name.lower() for t in group),
            recipe,
            *scores[recipe],
        )
        for recipe, group in by_recipe.items()
    ]
    points.sort(key=lambda p: -p.validation.gain)
    write_summary(settings, study, every_trial=points)
    return points


def validate(
    settings: TuneSettings,
    recipes: Sequence[str],
    runs: int,
    limit: int | None,
    model=None,
    tokenizer=None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, tuple[Score, Score | None]]:
    """Decode ``recipes`` on MBPP validation (``runs`` runs, the first ``limit`` problems),
    with base and each recipe's plain reference (:func:`plain_recipe`); return each recipe's
    score against base and against its plain reference (None for a plain recipe). Cells the
    validation directory already holds are reused."""
    plain, configs = _with_plain(list(recipes))
    evaluation = settings.eval_settings("validation", configs, limit, runs)
    run_eval(evaluation, model, tokenizer, progress=progress, log=log)
    validation = Path(settings.out) / "validation"
    return {
        recipe: (
            score(validation, recipe),
            score(validation, recipe, reference=plain[recipe]) if plain[recipe] else None,
        )
        for recipe in recipes
    }


def _with_plain(recipes: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """Each recipe's plain reference (:func:`plain_recipe`), and the configurations to decode
    for both: the recipes, then the references not among them (base is always decoded)."""
    plain = {recipe: plain_recipe(recipe) for recipe in recipes}
    extra = {p for p in plain.values() if p not in (None, BASE, *recipes)}
    return plain, [*recipes, *sorted(extra)]


def plain_recipe(recipe: str) -> str | None:
    """Plain decoding at ``recipe``'s temperature, as a configuration (``base`` at the
    evaluation's own 0.5), or None for a recipe that is plain decoding itself."""
    params = recipe_params(recipe)
    if params["op1"] == "never":
        return None
    if params["temperature"] == 0.5:
        return BASE
    return canonical_recipe(f"never@temperature={params['temperature']:g}")


__all__ = [
    "plain_recipe",
    "run_search",
    "score",
    "select_winners",
    "validate",
    "validate_every_trial",
]

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
ranked by that gain with its bootstrap CI. Summary table and Optuna's history, importance and
Pareto plots are written next to the study.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backtrack.evaluation.metrics import compare, forward_passes_per_token
from backtrack.evaluation.runner import load_problems, run_eval
from backtrack.evaluation.settings import BASE, EvalSettings
from backtrack.evaluation.store import ResultStore
from backtrack.tuning.space import recipe_params, suggest_recipe

DEFAULT_RUNGS = (40, 120, 374)
MAX_FORWARD_PER_TOKEN = 1.15


@dataclass
class TuneSettings:
    """What ``backtrack tune`` was asked to do.

    Attributes:
        out: the study's folder: ``study.db`` (unless ``storage`` is given), ``train/`` and
            ``validation/`` result directories, the summary and the plots.
        study: the Optuna study name. storage: an Optuna storage URL (default: SQLite in out).
        model, backend, dtype, batch_size: how to decode (see ``backtrack eval``).
        data_path: MBPP (``mbpp_release_v1.jsonl``).
        trials: trials to run in this invocation (a resumed study adds to what it has).
        rungs: growing numbers of train problems a trial is scored on.
        operators: operator names the search may use (default: all).
        seed: the sampler's seed (TPE) and the evaluation's seed.
        max_forward_per_token: the constraint.
        max_new_tokens: completion length (MBPP solutions are short).
    """

    out: str
    data_path: str
    model: str = "qwen2.5-coder-0.5b-instruct"
    study: str = "backtrack"
    storage: str | None = None
    backend: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    trials: int = 20
    rungs: Sequence[int] = DEFAULT_RUNGS
    operators: Sequence[str] | None = None
    seed: int = 0
    max_forward_per_token: float = MAX_FORWARD_PER_TOKEN
    max_new_tokens: int = 384
    workers: int = 2
    ray: str | None = None  # decode every trial on one Ray pool (see evaluation.distributed)
    ray_actors: int = 2
    # Recipes (``Recipe.name`` spelling) to try first, e.g. plain greedy as an anchor that
    # tells a temperature's gain from an operator's; each is enqueued once per study.
    enqueue: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.rungs or list(self.rungs) != sorted(set(self.rungs)) or self.rungs[0] < 1:
            raise ValueError(f"rungs must be increasing positive counts, got {list(self.rungs)}")
        if self.trials < 0 or self.batch_size < 1:
            raise ValueError("trials must be >= 0 and batch_size >= 1")
        for name in self.enqueue:
            recipe_params(name)  # a bad recipe fails here, before any model loads

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"

    def eval_settings(
        self, split: str, operators: Sequence[str], limit: int | None, runs: int = 1
    ) -> EvalSettings:
        return EvalSettings.from_flat(
            {
                "model": self.model,
                "out": str(Path(self.out) / split),
                "operators": list(operators),
                "dataset": "mbpp",
                "data_path": self.data_path,
                "split": split,
                "runs": runs,
                "limit": limit,
                "seed": self.seed,
                "backend": self.backend,
                "dtype": self.dtype,
                "batch_size": self.batch_size,
                "workers": self.workers,
                "max_new_tokens": self.max_new_tokens,
                "ray": self.ray,
                "ray_actors": self.ray_actors,
            }
        )


@dataclass(frozen=True)
class Score:
    """A recipe's pass@1 and paired gain over base on some cells (points, 95% CI)."""

    gain: float
    low: float
    high: float
    pass_at_1: float
    base_pass_at_1: float
    forward_per_token: float
    problems: int
    runs: int


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
        from backtrack.evaluation.distributed import RayPool

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
@dataclass(frozen=True)
class Candidate:
    """A completed, feasible trial of the search, and its score on validation."""

    number: int
    recipe: str
    train_gain: float
    train_forward_per_token: float
    validation: Score | None = None
    # Against plain decoding at the recipe's own temperature: what the operator adds beyond
    # the temperature (the objective, a gain over T=0.5 sampling, rewards a lower one too).
    over_plain: Score | None = None


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
    plain = {c.recipe: plain_recipe(c.recipe) for c in chosen}
    configs = [c.recipe for c in chosen]
    configs += sorted({p for p in plain.values() if p is not None and p not in configs})
    evaluation = settings.eval_settings("validation", configs, limit, runs)
    run_eval(evaluation, model, tokenizer, progress=progress, log=log)
    validation = Path(settings.out) / "validation"
    ranked = [
        Candidate(c.number, c.recipe, c.train_gain, c.train_forward_per_token,
                  score(validation, c.recipe),
                  score(validation, c.recipe, reference=plain[c.recipe])
                  if plain[c.recipe] else None)
        for c in chosen
    ]  # fmt: skip
    ranked.sort(key=lambda c: -c.validation.gain if c.validation else 0.0)
    write_summary(settings, study, ranked)
    return ranked


def plain_recipe(recipe: str) -> str | None:
    """Plain decoding at ``recipe``'s temperature, as a configuration (``base`` at the
    evaluation's own 0.5), or None for a recipe that is plain decoding itself."""
    params = recipe_params(recipe)
    if params["op1"] == "never":
        return None
    if params["temperature"] == 0.5:
        return BASE
    return canonical_recipe(f"never@temperature={params['temperature']:g}")


def write_summary(settings: TuneSettings, study, validated: Sequence[Candidate] = ()) -> Path:
    """``summary.md`` (every finished trial; the validated ones with their CI), ``summary.json``
    and Optuna's plots (history, importances, train Pareto front) in the study folder.

    Without ``validated``, the validation of an earlier ``--select`` (in summary.json) is kept:
    a search resumed after a selection does not lose it."""
    out = Path(settings.out)
    if not validated:
        validated = _earlier_validation(out / "summary.json")
    lines = [
        f"# Study {settings.study}: {settings.model}, MBPP train {list(settings.rungs)}",
        "",
        "Gain: paired pass@1 over base (temperature 0.5, top-k 50) on the same problems and "
        f"seeds, points. Constraint: at most {settings.max_forward_per_token} forward passes per "
        "accepted token.",
        "",
    ]
    if validated:
        lines += [
            "## Validated on MBPP validation (511-600)",
            "",
            "| trial | recipe | gain [95% CI] | pass@1 | base | vs plain at its temperature "
            "[95% CI] | fwd/token | problems x runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in validated:
            v, p = c.validation, c.over_plain
            assert v is not None
            versus = "-" if p is None else f"{p.gain:+.1f} [{p.low:+.1f}, {p.high:+.1f}]"
            lines.append(
                f"| {c.number} | `{c.recipe}` | {v.gain:+.1f} [{v.low:+.1f}, {v.high:+.1f}] | "
                f"{v.pass_at_1:.1f} | {v.base_pass_at_1:.1f} | {versus} | "
                f"{v.forward_per_token:.2f} | {v.problems} x {v.runs} |"
            )
        lines += [
            "",
            "*vs plain at its temperature*: the same recipe against plain decoding at its own "
            "temperature (greedy for 0): what the operator adds beyond the temperature.",
        ]
        lines.append("")
    lines += [
        "## Search (MBPP train)",
        "",
        "| trial | state | recipe | gain | problems | fwd/token |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "recipe" not in t.user_attrs:
            continue
        last = max(t.intermediate_values.items(), default=(None, None))
        gain = t.value if t.value is not None else last[1]
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "recipe": t.user_attrs["recipe"],
                "gain": gain,
                "problems": t.user_attrs.get("problems"),
                "forward_per_token": t.user_attrs.get("forward_per_token"),
            }
        )
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | `{t.user_attrs['recipe']}` | "
            f"{'-' if gain is None else f'{gain:+.1f}'} | {t.user_attrs.get('problems', '-')} | "
            f"{t.user_attrs.get('forward_per_token', float('nan')):.2f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    payload = {
        "study": settings.study,
        "trials": rows,
        "validated": [
            {
                **c.__dict__,
                "validation": c.validation.__dict__ if c.validation else None,
                "over_plain": c.over_plain.__dict__ if c.over_plain else None,
            }
            for c in validated
        ],
    }
    (out / "summary.json").write_text(json.dumps(payload, indent=1))
    _plots(study, rows, out, settings.max_forward_per_token)
    return out / "summary.md"


def _earlier_validation(path: Path) -> list[Candidate]:
    try:
        entries = json.loads(path.read_text()).get("validated") or []
        return [
            Candidate(
                e["number"], e["recipe"], e["train_gain"], e["train_forward_per_token"],
                Score(**e["validation"]) if e.get("validation") else None,
                Score(**e["over_plain"]) if e.get("over_plain") else None,
            )
            for e in entries
        ]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return []  # none yet, or a summary from an older version: rewritten below


def _plots(study, rows: list[dict], out: Path, max_forward: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as oplt

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        ax = oplt.plot_optimization_history(study)
        ax.figure.savefig(out / "history.png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():  # "few trials per regime" early in a study
                warnings.simplefilter("ignore")
                ax = oplt.plot_param_importances(study)
            ax.figure.savefig(out / "importances.png", dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
        except (RuntimeError, ValueError):  # too few distinct parameter values yet
            pass
    points = [r for r in rows if r["gain"] is not None and r["forward_per_token"] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # Interrupted trials (state fail) still scored their subsets: shown, and marked.
        kinds = (("complete", "o", "complete"), ("pruned", "x", "pruned"), ("fail", "^", "stopped"))
        for state, marker, label in kinds:
            chosen = [r for r in points if r["state"] == state]
            if not chosen:
                continue
            ax.scatter(
                [r["forward_per_token"] for r in chosen],
                [r["gain"] for r in chosen],
                marker=marker,
                label=f"{label} ({len(chosen)})",
            )
            for r in chosen:  # gains on different subsets: say which
                ax.annotate(
                    f"#{r['trial']} ({r['problems']})",
                    (r["forward_per_token"], r["gain"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(max_forward, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("forward passes per accepted token")
        ax.set_ylabel("pass@1 gain over base (points, MBPP train)")
        ax.set_title("every trial: #number (problems scored); dashed: the constraint", fontsize=9)
        ax.legend()
        fig.savefig(out / "pareto.png", dpi=120, bbox_inches="tight")
        plt.close(fig)

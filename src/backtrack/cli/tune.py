"""``backtrack tune``: search decoding recipes on MBPP, then validate the best."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from backtrack.cli.options import (
    DEFAULT_BACKEND,
    DEFAULT_MODEL,
    BackendOpt,
    DtypeOpt,
    ModelOpt,
    err,
    fail,
    generation_options,
    load,
)
from backtrack.paths import OutputPathError, ensure_writable_directory
from backtrack.tuning.settings import TuneSettings


def _print_validation(label: str, validation, over_plain, recipe: str) -> None:
    """One recipe's MBPP validation result, as ``tune --select`` and ``--validate-all`` say it."""
    versus = ""
    if over_plain is not None:
        versus = f"; {over_plain.interval} over plain decoding at its temperature"
    err.print(
        f"{label}: {validation.interval} points on MBPP validation{versus}, "
        f"{validation.forward_per_token:.2f} fwd/token  {recipe}"
    )


def _default(name: str) -> Any:
    """A TuneSettings field's default: the one place tune's options take theirs from."""
    (found,) = [f for f in fields(TuneSettings) if f.name == name]
    return found.default


@generation_options
def tune(
    out: Annotated[Path, typer.Option(help="Study folder (records, study.db, summary, plots).")],
    data_path: Annotated[
        Path, typer.Option(help="MBPP data (mbpp_release_v1.jsonl); tuning never sees HumanEval.")
    ],
    model: ModelOpt = DEFAULT_MODEL,
    study: Annotated[str, typer.Option(help="Optuna study name.")] = _default("study"),
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: sqlite in --out).")
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials to run now (a study resumes).")] = _default(
        "trials"
    ),
    rungs: Annotated[
        str, typer.Option(help="Growing MBPP-train problem counts a trial is scored on.")
    ] = ",".join(map(str, _default("rungs"))),
    operators: Annotated[
        str | None, typer.Option(help="Operators the search may use, comma-separated (all).")
    ] = None,
    enqueue: Annotated[
        list[str] | None,
        typer.Option(
            help="A recipe to try first (repeatable), spelled as the summary does, e.g. "
            "'never@temperature=0' (plain greedy, an anchor); each is queued once per study."
        ),
    ] = None,
    select: Annotated[
        int, typer.Option(help="Then validate the N best feasible recipes on MBPP validation.")
    ] = 0,
    validate_all: Annotated[
        bool,
        typer.Option(
            "--validate-all",
            help="Then decode every trial's recipe on MBPP validation (with plain decoding at "
            "its temperature): pareto_validation.png and a table in the summary.",
        ),
    ] = False,
    validation_runs: Annotated[int, typer.Option(help="Runs per validation problem.")] = 3,
    max_forward_per_token: Annotated[
        float, typer.Option(help="Constraint: forward passes per accepted token.")
    ] = _default("max_forward_per_token"),
    visible_tests: Annotated[
        int | None,
        typer.Option(help="MBPP tests left visible in the prompt (the rest hidden, all scored)."),
    ] = _default("visible_tests"),
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler and of the cells.")] = (
        _default("seed")
    ),
    batch_size: Annotated[int, typer.Option(help="Rows decoded together.")] = _default(
        "batch_size"
    ),
    dtype: DtypeOpt = "auto",
    backend: BackendOpt = DEFAULT_BACKEND,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ray: Annotated[
        str | None, typer.Option(help="Decode on Ray actors: local, auto, or an address.")
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="Ray actors, one model each.")] = _default(
        "ray_actors"
    ),
    generation: dict[str, Any] | None = None,
) -> None:
    """Search decoding recipes (operator, parameters, temperature, period, ban) on MBPP.

    Generation settings given as flags hold for every trial (the searched ones excepted);
    --max-new-tokens defaults to the search's own length."""
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise fail(f"tune needs Optuna ({exc}); pip install 'backtrack[tune]'") from exc
    from backtrack.evaluation.generation.runner import load_problems
    from backtrack.evaluation.settings import EvalError
    from backtrack.tuning.space import OPERATOR_SPACE
    from backtrack.tuning.study import (
        run_search,
        select_winners,
        validate_every_trial,
        write_summary,
    )

    try:
        settings = TuneSettings(
            out=str(out),
            data_path=str(data_path),
            model=model,
            study=study,
            storage=storage,
            backend=backend,
            dtype=dtype,
            batch_size=batch_size,
            trials=trials,
            rungs=tuple(int(r) for r in rungs.split(",")),
            operators=tuple(o.strip() for o in operators.split(",")) if operators else None,
            seed=seed,
            max_forward_per_token=max_forward_per_token,
            generation=dict(generation or {}),
            visible_tests=visible_tests,
            ray=ray,
            ray_actors=ray_actors,
            enqueue=tuple(enqueue or ()),
        )
        unknown = [o for o in settings.operators or () if o not in OPERATOR_SPACE]
        if unknown:
            raise ValueError(
                f"no search space for {', '.join(unknown)}; known: {', '.join(OPERATOR_SPACE)}"
            )
        # Data, splits and the output place are checked before the model loads.
        load_problems(settings.eval_settings("train", [], settings.rungs[-1]))
        ensure_writable_directory(out, "--out")
    except (ValueError, EvalError, OutputPathError) as exc:
        raise fail(str(exc)) from exc
    # On Ray the actors load the model (search and selection alike).
    mdl, tok = (None, None) if ray else load(model, dtype, "auto", None, backend)
    try:
        if trials:
            study_obj = run_search(settings, mdl, tok, progress=progress)
            summary = write_summary(settings, study_obj)
            err.print(f"search summary: {summary}")
        if select:
            for c in select_winners(settings, select, validation_runs, mdl, tok):
                assert c.validation is not None
                _print_validation(f"trial {c.number}", c.validation, c.over_plain, c.recipe)
        if validate_all:
            for e in validate_every_trial(settings, validation_runs, mdl, tok, progress=progress):
                trials = f"trials {', '.join(map(str, e.trials))}"
                _print_validation(trials, e.validation, e.over_plain, e.recipe)
    except (ValueError, EvalError) as exc:
        raise fail(str(exc)) from exc


SERVE_INSTALL_HINT = "pip install 'backtrack[serve]'  (FastAPI and uvicorn)"

"""``backtrack tune``: search decoding recipes on MBPP, then validate the best."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from backtrack.cli.options import (
    DEFAULT_MODEL,
    ModelOpt,
    err,
    fail,
    generation_options,
    load,
    settings_options,
)
from backtrack.paths import OutputPathError, ensure_writable_directory
from backtrack.tuning.settings import DEFAULT_RUNGS, TuneSettings


def _print_validation(label: str, validation, over_plain, recipe: str) -> None:
    """One recipe's MBPP validation result, as ``tune --select`` and ``--validate-all`` say it."""
    versus = ""
    if over_plain is not None:
        versus = f"; {over_plain.interval} over plain decoding at its temperature"
    err.print(
        f"{label}: {validation.interval} points on MBPP validation{versus}, "
        f"{validation.forward_per_token:.2f} fwd/token  {recipe}"
    )


@generation_options
@settings_options(TuneSettings, "search")
def tune(
    out: Annotated[Path, typer.Option(help="Study folder (records, study.db, summary, plots).")],
    data_path: Annotated[
        Path, typer.Option(help="MBPP data (mbpp_release_v1.jsonl); tuning never sees HumanEval.")
    ],
    model: ModelOpt = DEFAULT_MODEL,
    search: dict[str, Any] | None = None,
    rungs: Annotated[
        str, typer.Option(help="Growing MBPP-train problem counts a trial is scored on.")
    ] = ",".join(map(str, DEFAULT_RUNGS)),
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
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    generation: dict[str, Any] | None = None,
) -> None:
    """Search decoding recipes (operator, parameters, temperature, period, ban) on MBPP.

    Generation settings given as flags hold for every trial (the searched ones excepted);
    --max-new-tokens defaults to the search's own length."""
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise fail(f"tune needs Optuna ({exc}); pip install 'backtrack-decoding[tune]'") from exc
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
            rungs=tuple(int(r) for r in rungs.split(",")),
            operators=tuple(o.strip() for o in operators.split(",")) if operators else None,
            generation=dict(generation or {}),
            enqueue=tuple(enqueue or ()),
            **(search or {}),
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
    if settings.ray:
        mdl, tok = None, None
    else:
        mdl, tok = load(model, dtype=settings.dtype, backend=settings.backend)
    try:
        if settings.trials:
            study_obj = run_search(settings, mdl, tok, progress=progress)
            summary = write_summary(settings, study_obj)
            err.print(f"search summary: {summary}")
        if select:
            for c in select_winners(settings, select, validation_runs, mdl, tok):
                assert c.validation is not None
                _print_validation(f"trial {c.number}", c.validation, c.over_plain, c.recipe)
        if validate_all:
            for e in validate_every_trial(settings, validation_runs, mdl, tok, progress=progress):
                label = f"trials {', '.join(map(str, e.trials))}"
                _print_validation(label, e.validation, e.over_plain, e.recipe)
    except (ValueError, EvalError) as exc:
        raise fail(str(exc)) from exc


SERVE_INSTALL_HINT = "pip install 'backtrack-decoding[serve]'  (FastAPI and uvicorn)"

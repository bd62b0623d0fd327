"""``backtrack eval``, ``report``, ``rescore`` and ``check``: benchmark evaluations and
their result directories."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from backtrack.cli.options import (
    DEFAULT_MODEL,
    ModelOpt,
    err,
    eval_default,
    eval_option,
    eval_options,
    fail,
    generation_options,
    writable_output,
)
from backtrack.paths import OutputPathError, ensure_writable_directory


@generation_options
@eval_options
def eval_benchmark(
    dataset: Annotated[
        str, typer.Argument(help="humaneval | humaneval-plus | mbpp | mbpp-plus")
    ] = eval_default("dataset"),
    model: ModelOpt = DEFAULT_MODEL,
    operator: Annotated[
        list[str] | None,
        typer.Option(
            "--operator",
            "-o",
            help="Operator spec to compare with base (repeatable); SPEC@KEY=VALUE,... also "
            "changes generation settings for it, e.g. trend@rollback_window=16.",
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra baseline (repeatable): beam:N (model.generate on transformers, the "
            "engine's beam search on llama.cpp), hf-sample (transformers only), or the "
            "filters by the prompt's visible examples: sample-filter:n=N (up to N samples, "
            "the first passing kept) and beam:N+filter (the best passing beam)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Result directory (resumable).")] = Path("eval-out"),
    preset: Annotated[
        str | None,
        typer.Option(help="paper: the paper's protocol, which is the default (changes nothing)."),
    ] = None,
    evaluation: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar with ETA.")
    ] = True,
) -> None:
    """Evaluate operators against the no-op base on a benchmark; resumable, one JSONL per cell.

    Without --stop, completion mode stops at the EvalPlus stop strings."""
    from backtrack.evaluation.generation.runner import run_eval
    from backtrack.evaluation.settings import PRESETS, EvalError, EvalSettings

    if preset is not None and preset not in PRESETS:
        raise fail(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    given = dict(evaluation or {})
    if given.get("data_path") is not None:
        given["data_path"] = str(given["data_path"])
    try:
        # The defaults (EvalSettings', GenerationConfig's), then the preset, then the flags.
        settings = EvalSettings.from_flat(
            {
                **PRESETS.get(preset or "", {}),
                **given,
                "model": model,
                "out": str(out),
                "operators": list(operator or []),
                "baselines": list(baseline or []),
                "dataset": dataset,
                **(generation or {}),
            }
        )
        # Every usage error comes before the model loads (load_model_for, in run_eval; on Ray
        # the actors load it and the driver only plans and writes).
        summary = run_eval(settings, progress=progress, log=lambda m: err.print(m, markup=False))
    except EvalError as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: finished records are kept; re-run to resume[/]")
        raise typer.Exit(130) from None
    err.print(
        f"{summary.written} records written ({summary.already_done} already done, "
        f"{summary.total} in all) to {summary.out}; see `backtrack report {summary.out}`"
    )


def configuration_names(names: Iterable[str]) -> list[str]:
    """Configuration names as result directories record them: ``recipe:NAME`` is recorded
    under the configuration it stands for. An unknown recipe is a one-line error."""
    from backtrack.recipes import expand

    try:
        return [expand(name) for name in names]
    except ValueError as exc:
        raise fail(str(exc)) from exc


def require_result_directory(path: Path) -> None:
    """Refuse, with a one-line error, a path that is not a result directory of `eval`."""
    from backtrack.evaluation.store import RESULTS_FILE

    if not (path / RESULTS_FILE).is_file():
        raise fail(f"{path}: no {RESULTS_FILE} (not a result directory of `backtrack eval`)")


def report(
    dirs: Annotated[list[Path], typer.Argument(help="Result directories of `backtrack eval`.")],
    markdown: Annotated[Path | None, typer.Option(help="Write the Markdown table here.")] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Write the bar charts (PNG) here; default pass_at_1.png next to --markdown, "
            "else in the result directory (one given) or the current directory."
        ),
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Write no PNG.")] = False,
    rescore: Annotated[
        bool, typer.Option(help="Re-run the sandbox on stored completions first.")
    ] = False,
    timeout: Annotated[float | None, typer.Option(help="Sandbox limit for --rescore.")] = None,
    workers: eval_option("workers") = eval_default("workers"),  # for --rescore
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    against: Annotated[
        str,
        typer.Option(
            help="The configuration differences are paired against (and speed is relative "
            "to), e.g. recipe:NAME or a configuration's full name; default base."
        ),
    ] = "base",
) -> None:
    """Print pass@1 with CIs, paired differences vs base and throughput; optional PNG/Markdown."""
    from backtrack.evaluation.reporting import report as rep
    from backtrack.evaluation.scoring.rescore import rescore as rescore_directory

    (against,) = configuration_names([against])
    for path in dirs:  # before anything is written or created
        require_result_directory(path)
    if plot is None and not no_plot:
        where = markdown.parent if markdown else dirs[0] if len(dirs) == 1 else Path.cwd()
        plot = where / "pass_at_1.png"
    if no_plot:
        plot = None
    for output, what in ((markdown, "--markdown"), (plot, "--plot")):
        if output is not None:
            writable_output(output, what)
    rows = []
    for path in dirs:
        try:
            if rescore:
                n, changed = rescore_directory(path, workers=workers, timeout_s=timeout)
                err.print(f"{path}: rescored {n} records, {changed} verdicts changed")
            result = rep.load_results(path)
            rows += rep.summarize(result, baseline=against, resamples=resamples)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise fail(f"{path}: {exc}") from exc
        for note in result.notes:
            err.print(f"[yellow]warning:[/] {note}", markup=True, highlight=False)
    if not rows:
        raise fail("no complete records to report")
    console = Console()
    if console.is_terminal:  # pipes and files get only the Markdown, which does not wrap
        console.print(rep.rich_table(rows, against))
    table = rep.markdown_table(rows, against)
    typer.echo(table)
    if markdown is not None:
        markdown.write_text(table)
    if plot is not None:
        rep.plot(rows, plot, against)
        err.print(f"wrote {plot}")


def rescore_command(
    source: Annotated[Path, typer.Argument(help="A result directory of `backtrack eval`.")],
    dataset: Annotated[
        str, typer.Option(help="Score against this dataset's tests, e.g. humaneval-plus.")
    ],
    out: Annotated[Path, typer.Option(help="New result directory for the new verdicts.")],
    data_path: eval_option("data_path") = eval_default("data_path"),
    timeout: Annotated[
        float | None, typer.Option(help="Sandbox limit (default: the source's).")
    ] = None,
    workers: eval_option("workers") = eval_default("workers"),
    config: Annotated[
        list[str] | None,
        typer.Option(help="Only this configuration, or recipe:NAME (repeatable; default all)."),
    ] = None,
) -> None:
    """Score stored completions against another dataset's tests (HumanEval runs on HumanEval+),
    into a new result directory that `report` reads like any other; nothing is decoded."""
    from backtrack.evaluation.data import DataError
    from backtrack.evaluation.scoring.rescore import rescore_as

    configs = configuration_names(config or ())
    require_result_directory(source)
    try:
        ensure_writable_directory(out.parent if out.parent != Path() else Path.cwd(), "--out")
        n, changed, differ = rescore_as(
            source, out, dataset, data_path, workers, timeout, tuple(configs)
        )
    except (ValueError, DataError, OutputPathError, OSError) as exc:
        raise fail(str(exc)) from exc
    err.print(f"{out}: {n} records scored on {dataset}, {changed} verdicts differ from {source}")
    if differ:
        err.print(
            f"[yellow]warning:[/] prompts differ between the datasets for {', '.join(differ)}; "
            "their completions were written for the source prompt (listed in meta.json)",
            markup=True,
            highlight=False,
        )


def check(
    problem: Annotated[
        str | None, typer.Option(help="HumanEval task id, e.g. HumanEval/0.")
    ] = None,
    completion_file: Annotated[
        Path | None, typer.Option(help="File holding the completion (the code after the prompt).")
    ] = None,
    canonical: Annotated[bool, typer.Option(help="Run every canonical solution.")] = False,
    workers: eval_option("workers") = eval_default("workers"),
    json_out: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Run a completion against its HumanEval tests in the sandbox (exit 0 pass, 1 fail)."""
    from backtrack.evaluation.scoring.check import check_canonical, check_file

    if canonical:
        if problem or completion_file:
            raise fail("--canonical takes no --problem/--completion-file")
        raise typer.Exit(check_canonical(workers=workers, as_json=json_out))
    if not problem or completion_file is None:
        raise fail("give --problem ID and --completion-file FILE, or --canonical")
    raise typer.Exit(check_file(problem, completion_file, as_json=json_out))

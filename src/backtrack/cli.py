"""The ``backtrack`` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from backtrack.paths import OutputPathError, ensure_writable_directory

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
# The named default model (``backtrack.models.DEFAULT_MODEL``), spelled out so that `--help`
# does not import torch; a test keeps the two equal.
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Built-in name (see `backtrack models`), local dir or hub id."
    ),
]
DtypeOpt = Annotated[str, typer.Option(help="auto|bfloat16|float16|float32")]
DeviceOpt = Annotated[str, typer.Option(help="auto|cpu|cuda")]
QuantizeOpt = Annotated[str | None, typer.Option(help="int8 (CPU: dynamic int8; CUDA: 8-bit)")]
# The backend a command uses unless told: llama.cpp for GGUF models on the CPU when
# llama-cpp-python is installed (several times faster there; see the README), else transformers.
DEFAULT_BACKEND = "auto"
BackendOpt = Annotated[
    str,
    typer.Option(
        help="transformers|llama.cpp|auto (auto: llama.cpp for GGUF models on the CPU, when "
        "installed)."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="llama.cpp: CPU threads (default: every core).")
]
NCtxOpt = Annotated[int | None, typer.Option(help="llama.cpp: tokens per sequence (default 4096).")]


# Generation flags, shared by every command that decodes; `generation_config` turns them into
# the one GenerationConfig the command uses. Unset (None) means "the command's default".
TemperatureOpt = Annotated[float | None, typer.Option(help="0 = greedy.")]
TopKOpt = Annotated[int | None, typer.Option(help="Top-k filter (0: off).")]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus filter.")]
MinPOpt = Annotated[float | None, typer.Option(help="Min-p filter.")]
MaxNewTokensOpt = Annotated[int | None, typer.Option(help="Length of the final completion.")]
StopOpt = Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")]
PeriodOpt = Annotated[int | None, typer.Option(help="Consult the operator every N tokens.")]
MaxBacktracksOpt = Annotated[int | None, typer.Option(help="Budget: rollbacks.")]
MaxDiscardedOpt = Annotated[int | None, typer.Option(help="Budget: deleted tokens.")]
BanOpt = Annotated[str | None, typer.Option(help="accumulate|next|none (default accumulate).")]
MaxRetriesOpt = Annotated[
    int | None, typer.Option(help="Resumes at one position before its token is kept (3).")
]
BanStringOpt = Annotated[
    list[str] | None,
    typer.Option(help="Banned string, never output: rolled back and resampled (repeatable)."),
]
BanRegexOpt = Annotated[
    list[str] | None, typer.Option(help="Banned regular expression (repeatable).")
]
BanIgnoreCaseOpt = Annotated[
    bool, typer.Option(help="Match banned strings and regexes case-insensitively.")
]
RollbackWindowOpt = Annotated[
    int | None,
    typer.Option(
        help="Deepest rollback, in tokens behind the furthest position reached (unbounded)."
    ),
]


def generation_config(base, **flags):
    """The command's GenerationConfig: ``base`` (a GenerationConfig) with every flag that was
    given. ``top_k=0`` switches top-k off; ``max_discarded`` is the budget's
    ``max_discarded_tokens``, ``max_retries`` the ``max_retries_per_position``."""
    renamed = {
        "max_discarded": "max_discarded_tokens",
        "max_retries": "max_retries_per_position",
        "ban_string": "banned_strings",
        "ban_regex": "banned_regex",
        "ban_ignore_case": "banned_ignore_case",
    }
    if flags.get("ban_ignore_case") is False:
        flags["ban_ignore_case"] = None  # an unset switch keeps the base's setting
    given = {renamed.get(k, k): v for k, v in flags.items() if v is not None}
    if given.get("top_k") == 0:
        given["top_k"] = None
    for name in ("stop", "banned_strings", "banned_regex"):
        if name in given:
            given[name] = tuple(given[name])
    try:
        return base.updated(given)
    except ValueError as exc:
        raise fail(str(exc)) from exc


# eval's default batch size, from benchmarks/bench_vs_generate.py on 2 cores (README,
# Benchmarks): B=32 gave 3.9x the tokens/s of B=1 and 1.15x B=16 for the default model, at
# 4.7 MiB of KV cache per row.
EVAL_BATCH_SIZE = 32

GENERATION_FLAGS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "max_new_tokens",
    "stop",
    "period",
    "max_backtracks",
    "max_discarded",
    "ban",
    "max_retries",
    "rollback_window",
    "ban_string",
    "ban_regex",
    "ban_ignore_case",
)


def _generation_flags(params: dict) -> dict:
    """The generation flags among a command's parameters (pass it ``locals()``)."""
    return {name: params[name] for name in GENERATION_FLAGS}


def fail(message: str, code: int = 2) -> typer.Exit:
    # soft_wrap: long lines (a pip command naming 22 packages) are never broken by rich, so
    # what the user copies from the terminal is what we printed.
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def writable_output(path: Path, what: str) -> Path:
    """Check an output file's place before any expensive work: create its parent directory
    if needed; refuse a directory, or a place we cannot write, with a one-line error."""
    if path.is_dir():
        raise fail(f"{what} {path} is a directory; give a file path")
    try:
        ensure_writable_directory(path.parent, f"the directory for {what} {path}")
    except OutputPathError as exc:
        raise fail(str(exc)) from exc
    return path


def _version(value: bool) -> None:
    if value:
        from backtrack import __version__

        typer.echo(f"backtrack {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Local backtracking for LLM decoding: generate, evaluate and train operators."""


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise fail("give either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            text = prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise fail(f"prompt file {prompt_file} is not UTF-8 text ({exc.reason})") from exc
        except OSError as exc:
            raise fail(f"cannot read prompt file {prompt_file}: {exc.strerror}") from exc
    elif prompt is not None:
        text = prompt
    elif sys.stdin.isatty():
        raise fail("no prompt: use --prompt TEXT, --prompt-file FILE, or pipe it on stdin")
    else:
        text = sys.stdin.read()
    if not text:
        raise fail("the prompt is empty")
    return text


def load(
    model: str,
    dtype: str = "auto",
    device: str = "auto",
    quantize: str | None = None,
    backend: str = DEFAULT_BACKEND,
    threads: int | None = None,
    n_ctx: int | None = None,
):
    """Load a model for a command, turning every loading problem into a clear exit."""
    from backtrack.models import ModelLoadError, load_model

    kwargs: dict = {"dtype": dtype, "device": device, "backend": backend}
    if threads is not None or n_ctx is not None:
        kwargs.update(threads=threads, n_ctx=n_ctx)
    if quantize:
        kwargs["quantize"] = quantize
    try:
        return load_model(model, **kwargs)
    except (ModelLoadError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc


@app.command()
def generate(
    model: ModelOpt = DEFAULT_MODEL,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt text.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from a file.")] = None,
    operator: Annotated[
        str,
        typer.Option(
            "--operator",
            "-o",
            help="Operator spec (see `backtrack operators`), or a whole recipe as `eval` and "
            "`tune` spell it, SPEC@KEY=VALUE,... (its settings under the flags given here).",
        ),
    ] = "probability-trend",
    seed: Annotated[int | None, typer.Option(help="Seed of the sampling (reproducible).")] = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    stop: StopOpt = None,
    period: PeriodOpt = None,
    max_backtracks: MaxBacktracksOpt = None,
    max_discarded: MaxDiscardedOpt = None,
    ban: BanOpt = None,
    max_retries: MaxRetriesOpt = None,
    rollback_window: RollbackWindowOpt = None,
    ban_string: BanStringOpt = None,
    ban_regex: BanRegexOpt = None,
    ban_ignore_case: BanIgnoreCaseOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    quantize: QuantizeOpt = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    threads: ThreadsOpt = None,
    n_ctx: NCtxOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full result as JSON here.")
    ] = None,
) -> None:
    """Generate one completion with backtracking, streaming it to the terminal."""
    from dataclasses import replace

    from backtrack.engine import Decoder, GenerationConfig, GenerationResult
    from backtrack.operators import OperatorSpecError, parse_operator

    text = _read_prompt(prompt, prompt_file)
    from backtrack.evaluation.settings import PAPER_SAMPLING, EvalError, split_configuration

    # The evaluation's sampling; no stop strings, 128 tokens; then a recipe's own settings,
    # then the flags given.
    base = GenerationConfig(max_new_tokens=128, **PAPER_SAMPLING)
    try:
        spec, recipe_settings = split_configuration(operator)
        op = parse_operator(spec)
    except (EvalError, OperatorSpecError) as exc:
        raise fail(str(exc)) from exc
    base = base.updated(dict(recipe_settings)) if recipe_settings else base
    config = generation_config(base, **_generation_flags(locals()))
    config = replace(config, seed=seed)
    if json_out is not None:
        writable_output(json_out, "--json")
    mdl, tok = load(model, dtype, device, quantize, backend, threads, n_ctx)
    decoder = Decoder(mdl, tok)
    out = Console(highlight=False)
    result: GenerationResult | None = None
    try:
        if out.is_terminal:
            # The screen always shows the current text; a rollback's deleted text is shown
            # struck out in red until the next token (see backtrack.terminal).
            from backtrack.terminal import show_live

            result = show_live(out, decoder.stream(text, op, config), config.stop)
        else:
            # Pipes get only text that can no longer change, and exactly the final text.
            session = decoder.session(text, op, config)
            for event in session.run():
                del event
            result = session.result()
            sys.stdout.write(result.text)
            sys.stdout.flush()
    except ValueError as exc:
        raise fail(str(exc)) from exc
    assert result is not None
    c = result.counts
    err.print(
        f"[dim]{len(result.token_ids)} tokens, {c.backtracks} backtracks, "
        f"{c.tokens_discarded} discarded, {c.forward_passes} forward passes, "
        f"{c.wall_time_s:.2f}s, finish: {result.finish_reason}[/]"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=1))


def _print_validation(label: str, validation, over_plain, recipe: str) -> None:
    """One recipe's MBPP validation result, as ``tune --select`` and ``--validate-all`` say it."""
    versus = ""
    if over_plain is not None:
        versus = f"; {over_plain.interval} over plain decoding at its temperature"
    err.print(
        f"{label}: {validation.interval} points on MBPP validation{versus}, "
        f"{validation.forward_per_token:.2f} fwd/token  {recipe}"
    )


@app.command()
def tune(
    out: Annotated[Path, typer.Option(help="Study folder (records, study.db, summary, plots).")],
    data_path: Annotated[
        Path, typer.Option(help="MBPP data (mbpp_release_v1.jsonl); tuning never sees HumanEval.")
    ],
    model: ModelOpt = DEFAULT_MODEL,
    study: Annotated[str, typer.Option(help="Optuna study name.")] = "backtrack",
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: sqlite in --out).")
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials to run now (a study resumes).")] = 20,
    rungs: Annotated[
        str, typer.Option(help="Growing MBPP-train problem counts a trial is scored on.")
    ] = "40,120,374",
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
    ] = 1.15,
    max_new_tokens: Annotated[int, typer.Option(help="Completion length.")] = 384,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler and of the cells.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Rows decoded together.")] = 16,
    dtype: DtypeOpt = "auto",
    backend: BackendOpt = DEFAULT_BACKEND,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ray: Annotated[
        str | None, typer.Option(help="Decode on Ray actors: local, auto, or an address.")
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="Ray actors, one model each.")] = 2,
) -> None:
    """Search decoding recipes (operator, parameters, temperature, period, ban) on MBPP."""
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise fail(f"tune needs Optuna ({exc}); pip install 'backtrack[tune]'") from exc
    from backtrack.evaluation.runner import load_problems
    from backtrack.evaluation.settings import EvalError
    from backtrack.tuning.space import OPERATOR_SPACE
    from backtrack.tuning.study import (
        TuneSettings,
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
            max_new_tokens=max_new_tokens,
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


@app.command()
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    operator: Annotated[
        str,
        typer.Option(
            "--operator", "-o", help="Default operator of requests that name none (never)."
        ),
    ] = "never",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together.")] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for a row; more get 503.")
    ] = 256,
    max_tokens_limit: Annotated[
        int, typer.Option(help="Largest max_tokens a request may ask for.")
    ] = 2048,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted.")] = 8192,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 4_000_000,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    quantize: QuantizeOpt = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    threads: ThreadsOpt = None,
    n_ctx: NCtxOpt = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with backtracking per request."""
    import socket

    try:
        import uvicorn

        from backtrack.serving import ServeSettings, create_app
    except ImportError as exc:
        raise fail(f"serve needs FastAPI and uvicorn ({exc}); {SERVE_INSTALL_HINT}") from exc
    from backtrack.operators import OperatorSpecError, parse_operator

    try:
        parse_operator(operator)
    except OperatorSpecError as exc:
        raise fail(str(exc)) from exc
    # The address is checked before the model loads (minutes for a large one).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        settings = ServeSettings(
            _served_names(model),
            operator=operator,
            max_batch=max_batch,
            max_queue=max_queue,
            max_tokens_limit=max_tokens_limit,
            max_prompt_tokens=max_prompt_tokens,
            max_body_bytes=max_body_bytes,
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    mdl, tok = load(model, dtype, device, quantize, backend, threads, n_ctx)
    try:
        server_app = create_app(mdl, tok, settings)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    err.print(f"serving {settings.model_names[0]} on http://{host}:{port}/v1")
    uvicorn.run(server_app, host=host, port=port, log_level="warning")


def _served_names(model: str) -> list[str]:
    """The names requests may use for the model: as given, and its built-in name."""
    from backtrack.models import builtin_spec

    spec = builtin_spec(model)
    names = [model]
    if spec is not None and spec.name != model:
        names.append(spec.name)
    return names


@app.command()
def operators() -> None:
    """List the operators and their parameters, and the shipped tuned recipes."""
    from backtrack.operators import operator_help
    from backtrack.recipes import describe

    typer.echo(operator_help())
    typer.echo("")
    typer.echo(describe())


@app.command()
def models() -> None:
    """List the named models: size, source, licence, and whether they are ready."""
    from backtrack.models import format_models_table

    typer.echo(format_models_table())


@app.command()
def check(
    problem: Annotated[
        str | None, typer.Option(help="HumanEval task id, e.g. HumanEval/0.")
    ] = None,
    completion_file: Annotated[
        Path | None, typer.Option(help="File holding the completion (the code after the prompt).")
    ] = None,
    canonical: Annotated[bool, typer.Option(help="Run every canonical solution.")] = False,
    workers: Annotated[int, typer.Option(help="Programs run in parallel.")] = 2,
    json_out: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Run a completion against its HumanEval tests in the sandbox (exit 0 pass, 1 fail)."""
    from backtrack.evaluation.check import check_canonical, check_file

    if canonical:
        if problem or completion_file:
            raise fail("--canonical takes no --problem/--completion-file")
        raise typer.Exit(check_canonical(workers=workers, as_json=json_out))
    if not problem or completion_file is None:
        raise fail("give --problem ID and --completion-file FILE, or --canonical")
    raise typer.Exit(check_file(problem, completion_file, as_json=json_out))


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="Training config (YAML).")],
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint.")] = False,
) -> None:
    """Train a learned backtracking policy with RecurrentPPO."""
    try:
        from backtrack.rl.train import train_command
    except ImportError as exc:
        raise fail(f"training needs the RL extras: pip install 'backtrack[rl]' ({exc})") from exc
    raise typer.Exit(train_command(config, resume=resume))


@app.command()
def label(
    config: Annotated[Path, typer.Option(help="Training config (YAML): model, decoding, K.")],
    out: Annotated[Path, typer.Option(help="Labels file (JSONL; resumed).")],
    limit: Annotated[int | None, typer.Option(help="First N MBPP train problems.")] = None,
    positions: Annotated[int, typer.Option(help="Candidate steps per failing sample.")] = 4,
    restarts: Annotated[int, typer.Option(help="Resamples per candidate step.")] = 2,
    min_pass_rate: Annotated[
        float, typer.Option(help="Restart pass rate that makes a step a deletion label.")
    ] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Rows decoded together.")] = 16,
    seed: Annotated[int, typer.Option(help="Problem i is sampled with seed + i.")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Counterfactual restart labels on MBPP train: where deleting a token and resampling
    turns a failing sample into a passing one (pretrain_labels of a training config)."""
    try:
        from backtrack.rl.counterfactual import make_labels
        from backtrack.rl.train import TrainConfig, TrainConfigError
    except ImportError as exc:
        raise fail(f"labels need the RL extras: pip install 'backtrack[rl]' ({exc})") from exc
    try:
        TrainConfig.load(config)
        writable_output(out, "--out")
        path = make_labels(config, out, limit, positions, restarts, min_pass_rate, batch_size,
                           seed=seed, progress=progress)  # fmt: skip
    except (TrainConfigError, ValueError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(str(path))


@app.command("eval")
def eval_benchmark(
    dataset: Annotated[
        str, typer.Argument(help="humaneval | humaneval-plus | mbpp | mbpp-plus")
    ] = "humaneval",
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
            "engine's beam search on llama.cpp) or hf-sample (transformers only)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Result directory (resumable).")] = Path("eval-out"),
    runs: Annotated[int, typer.Option(help="Sampling runs (seeds) per problem.")] = 1,
    preset: Annotated[
        str | None, typer.Option(help="paper: temperature 0.5, top-k 50, completion mode.")
    ] = None,
    temperature: TemperatureOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of (run r, problem i) = S + 10000 r + i.")] = 0,
    problems: Annotated[str | None, typer.Option(help="Problem ids, e.g. 0,5-7.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems.")] = None,
    mode: Annotated[str | None, typer.Option(help="completion|chat (default completion).")] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop string (repeatable; default: EvalPlus set).")
    ] = None,
    period: PeriodOpt = None,
    max_backtracks: MaxBacktracksOpt = None,
    max_discarded: MaxDiscardedOpt = None,
    ban: BanOpt = None,
    max_retries: MaxRetriesOpt = None,
    rollback_window: RollbackWindowOpt = None,
    ban_string: BanStringOpt = None,
    ban_regex: BanRegexOpt = None,
    ban_ignore_case: BanIgnoreCaseOpt = False,
    data_path: Annotated[Path | None, typer.Option(help="Data file (all but humaneval).")] = None,
    split: Annotated[
        str | None,
        typer.Option(help="MBPP split: train|validation|test|prompt (default test, 11-510)."),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Sandbox seconds per program.")] = None,
    batch_size: Annotated[
        int, typer.Option(help="Rows decoded together (BatchDecoder); 1: the single engine.")
    ] = EVAL_BATCH_SIZE,
    workers: Annotated[int, typer.Option(help="Programs executed in parallel.")] = 2,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    quantize: QuantizeOpt = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    threads: ThreadsOpt = None,
    n_ctx: NCtxOpt = None,
    force: Annotated[bool, typer.Option(help="Resume even if meta.json differs.")] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar with ETA.")
    ] = True,
    ray: Annotated[
        str | None,
        typer.Option(help="Decode on Ray actors: local (start one here), auto, or an address."),
    ] = None,
    ray_actors: Annotated[int, typer.Option(help="Ray actors, one model each.")] = 2,
) -> None:
    """Evaluate operators against the no-op base on a benchmark; resumable, one JSONL per cell."""
    from backtrack.evaluation.runner import prepare, run_eval
    from backtrack.evaluation.settings import (
        PRESETS,
        EvalError,
        EvalSettings,
        default_generation,
    )

    if preset is not None and preset not in PRESETS:
        raise fail(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    preset_values = dict(PRESETS.get(preset, {}))
    preset_mode = preset_values.pop("mode", "completion")
    mode = mode or preset_mode
    base = generation_config(default_generation(mode), **preset_values)
    generation = generation_config(base, **_generation_flags(locals()))
    try:
        settings = EvalSettings(
            model=model,
            out=str(out),
            operators=list(operator or []),
            baselines=list(baseline or []),
            dataset=dataset,
            data_path=str(data_path) if data_path else None,
            split=split,
            runs=runs,
            generation=generation,
            seed=seed,
            problems=problems,
            limit=limit,
            mode=mode,
            dtype=dtype,
            device=device,
            quantize=quantize,
            backend=backend,
            batch_size=batch_size,
            workers=workers,
            timeout_s=timeout,
            force=force,
            ray=ray,
            ray_actors=ray_actors,
        )
    except EvalError as exc:
        raise fail(str(exc)) from exc
    try:
        prepare(settings)  # every usage error before the model loads
        # On Ray the actors load the model; the driver only plans and writes.
        mdl, tok = (
            (None, None) if ray else load(model, dtype, device, quantize, backend, threads, n_ctx)
        )
        summary = run_eval(
            settings, mdl, tok, progress=progress, log=lambda m: err.print(m, markup=False)
        )
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


@app.command()
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
    workers: Annotated[int, typer.Option(help="Programs run in parallel (--rescore).")] = 2,
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
    from backtrack.evaluation import report as rep

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
                n, changed = rep.rescore(path, workers=workers, timeout_s=timeout)
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


@app.command("rescore")
def rescore_command(
    source: Annotated[Path, typer.Argument(help="A result directory of `backtrack eval`.")],
    dataset: Annotated[
        str, typer.Option(help="Score against this dataset's tests, e.g. humaneval-plus.")
    ],
    out: Annotated[Path, typer.Option(help="New result directory for the new verdicts.")],
    data_path: Annotated[
        str | None, typer.Option(help="The dataset's file (every dataset but HumanEval).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Sandbox limit (default: the source's).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Programs run in parallel.")] = 2,
    config: Annotated[
        list[str] | None,
        typer.Option(help="Only this configuration, or recipe:NAME (repeatable; default all)."),
    ] = None,
) -> None:
    """Score stored completions against another dataset's tests (HumanEval runs on HumanEval+),
    into a new result directory that `report` reads like any other; nothing is decoded."""
    from backtrack.evaluation import report as rep
    from backtrack.evaluation.data import DataError

    configs = configuration_names(config or ())
    require_result_directory(source)
    try:
        ensure_writable_directory(out.parent if out.parent != Path() else Path.cwd(), "--out")
        n, changed, differ = rep.rescore_as(
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

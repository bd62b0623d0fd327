"""The ``backtrack`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Local backtracking for LLM decoding: generate, evaluate and train operators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Built-in name (see `backtrack models`), local dir or hub id."
    ),
]
DtypeOpt = Annotated[str, typer.Option(help="auto|bfloat16|float16|float32")]
DeviceOpt = Annotated[str, typer.Option(help="auto|cpu|cuda")]
QuantizeOpt = Annotated[str | None, typer.Option(help="int8 (CPU: dynamic int8; CUDA: 8-bit)")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise fail("give either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            return prompt_file.read_text()
        except OSError as exc:
            raise fail(f"cannot read prompt file {prompt_file}: {exc}") from exc
    if prompt is not None:
        return prompt
    if sys.stdin.isatty():
        raise fail("no prompt: use --prompt TEXT, --prompt-file FILE, or pipe it on stdin")
    return sys.stdin.read()


def load(model: str, dtype: str = "auto", device: str = "auto", quantize: str | None = None):
    """Load a model for a command, turning every loading problem into a clear exit."""
    from backtrack.models import ModelLoadError, load_model

    kwargs = {"dtype": dtype, "device": device}
    if quantize:
        kwargs["quantize"] = quantize
    try:
        return load_model(model, **kwargs)
    except (ModelLoadError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc


@app.command()
def generate(
    model: ModelOpt = "tiny-random-qwen2",
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt text.")] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the prompt from a file.")] = None,
    operator: Annotated[
        str, typer.Option("--operator", "-o", help="Operator spec; see `backtrack operators`.")
    ] = "probability-trend",
    seed: Annotated[int | None, typer.Option(help="torch.manual_seed before decoding.")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 1.0,
    top_k: Annotated[int | None, typer.Option(help="Top-k filter (0/None: off).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus filter.")] = None,
    min_p: Annotated[float | None, typer.Option(help="Min-p filter.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Length of the final completion.")] = 128,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    period: Annotated[int, typer.Option(help="Consult the operator every N tokens.")] = 1,
    max_backtracks: Annotated[int | None, typer.Option(help="Budget: rollbacks.")] = None,
    max_discarded: Annotated[int | None, typer.Option(help="Budget: deleted tokens.")] = None,
    ban: Annotated[str, typer.Option(help="accumulate|next|none (see docs).")] = "accumulate",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    quantize: QuantizeOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full result as JSON here.")
    ] = None,
) -> None:
    """Generate one completion with backtracking, streaming it to the terminal."""
    from backtrack.engine import Budget, Decoder, GenerationConfig, GenerationResult
    from backtrack.engine.types import RollbackEvent, TokenEvent
    from backtrack.operators import OperatorSpecError, parse_operator

    text = _read_prompt(prompt, prompt_file)
    try:
        op = parse_operator(operator)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            stop=tuple(stop or ()),
            seed=seed,
            period=period,
            ban=ban,  # type: ignore[arg-type]
            budget=Budget(max_backtracks=max_backtracks, max_discarded_tokens=max_discarded),
        )
    except (OperatorSpecError, ValueError) as exc:
        raise fail(str(exc)) from exc
    mdl, tok = load(model, dtype, device, quantize)
    decoder = Decoder(mdl, tok)
    out = Console(highlight=False)
    result: GenerationResult | None = None
    try:
        if out.is_terminal:
            # Show everything as it happens: deleted text struck out in red.
            for event in decoder.stream(text, op, config):
                if isinstance(event, TokenEvent):
                    out.print(event.text, end="", markup=False)
                elif isinstance(event, RollbackEvent):
                    out.print(event.removed_text, style="strike red", end="", markup=False)
                else:
                    result = event
            out.print()
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


@app.command()
def operators() -> None:
    """List the operators and their parameters."""
    from backtrack.operators import operator_help

    typer.echo(operator_help())


@app.command()
def models() -> None:
    """List the named models: size, source, licence, and whether they are ready."""
    from backtrack.models.registry import format_models_table

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

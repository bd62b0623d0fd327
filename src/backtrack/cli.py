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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

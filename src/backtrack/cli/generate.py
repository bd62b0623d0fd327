"""``backtrack generate``: one completion, streamed to the terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from backtrack.cli.options import (
    DEFAULT_MODEL,
    ModelOpt,
    err,
    fail,
    generation_options,
    load,
    loading_options,
    writable_output,
)


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """The prompt from ``--prompt``, ``--prompt-file`` or stdin; a one-line error otherwise."""
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


@generation_options
@loading_options
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
    generation: dict[str, Any] | None = None,
    loading: dict[str, Any] | None = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the full result as JSON here.")
    ] = None,
) -> None:
    """Generate one completion with backtracking, streaming it to the terminal."""
    from dataclasses import replace

    from backtrack.configurations import split_configuration
    from backtrack.engine import Decoder, GenerationConfig, GenerationResult
    from backtrack.operators import OperatorSpecError, parse_operator

    text = read_prompt(prompt, prompt_file)
    try:
        spec, recipe_settings = split_configuration(operator)
        op = parse_operator(spec)
        # GenerationConfig's defaults, then the recipe's own settings, then the flags given.
        config = replace(
            GenerationConfig.from_flat({**dict(recipe_settings), **(generation or {})}), seed=seed
        )
    except (OperatorSpecError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc
    if json_out is not None:
        writable_output(json_out, "--json")
    mdl, tok = load(model, **(loading or {}))
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

"""The ``backtrack`` command line: the typer ``app`` and its commands, one module per group.

:mod:`~.options` holds what the commands share (model and generation options, errors, the
loader); :mod:`~.generate` (generate), :mod:`~.evaluate` (eval, report, rescore, check),
:mod:`~.tune` (tune), :mod:`~.train` (train, label), :mod:`~.serve` (serve) and
:mod:`~.catalogue` (models, operators) hold the commands. Heavy libraries (torch, transformers)
are imported inside the commands, so ``backtrack --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

from backtrack.cli import catalogue, evaluate, generate, serve, train, tune

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


# In the order `backtrack --help` lists them.
app.command()(generate.generate)
app.command()(tune.tune)
app.command()(serve.serve)
app.command()(catalogue.operators)
app.command()(catalogue.models)
app.command()(evaluate.check)
app.command()(train.train)
app.command()(train.label)
app.command("eval")(evaluate.eval_benchmark)
app.command()(evaluate.report)
app.command("rescore")(evaluate.rescore_command)


def main() -> None:
    app()

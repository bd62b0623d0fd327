"""``backtrack models`` and ``backtrack operators``: what there is to choose from."""

from __future__ import annotations

import typer


def operators() -> None:
    """List the operators and their parameters, and the shipped tuned recipes."""
    from backtrack.operators import operator_help
    from backtrack.recipes import describe

    typer.echo(operator_help())
    typer.echo("")
    typer.echo(describe())


def models() -> None:
    """List the named models: size, source, licence, and whether they are ready."""
    from backtrack.models import format_models_table

    typer.echo(format_models_table())

"""``backtrack train`` and ``backtrack label``: a learned operator and its pretraining labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from backtrack.cli.options import fail, writable_output


def train(
    config: Annotated[Path, typer.Option(help="Training config (YAML).")],
    resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint.")] = False,
) -> None:
    """Train a learned backtracking policy with RecurrentPPO."""
    try:
        from backtrack.rl.train import train_command
    except ImportError as exc:
        raise fail(
            f"training needs the RL extras: pip install 'backtrack-decoding[rl]' ({exc})"
        ) from exc
    raise typer.Exit(train_command(config, resume=resume))


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
        from backtrack.rl.config import TrainConfig, TrainConfigError
        from backtrack.rl.counterfactual import make_labels
    except ImportError as exc:
        raise fail(
            f"labels need the RL extras: pip install 'backtrack-decoding[rl]' ({exc})"
        ) from exc
    try:
        env = TrainConfig.load(config).env
        writable_output(out, "--out")
        path = make_labels(env, out, limit, positions, restarts, min_pass_rate, batch_size,
                           seed=seed, progress=progress)  # fmt: skip
    except (TrainConfigError, ValueError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(str(path))

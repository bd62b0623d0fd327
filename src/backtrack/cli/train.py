"""``backtrack train`` and ``backtrack label``: a learned operator and its pretraining labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from backtrack.cli.options import fail, settings_options, writable_output
from backtrack.rl.label_settings import LabelSettings


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


@settings_options(LabelSettings, "labelling")
def label(
    config: Annotated[Path, typer.Option(help="Training config (YAML): model, decoding, K.")],
    out: Annotated[Path, typer.Option(help="Labels file (JSONL; resumed).")],
    limit: Annotated[int | None, typer.Option(help="First N MBPP train problems.")] = None,
    labelling: dict[str, Any] | None = None,
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
        settings = LabelSettings(**(labelling or {}))
        env = TrainConfig.load(config).env
        writable_output(out, "--out")
        path = make_labels(env, out, limit, settings, seed=seed, progress=progress)
    except (TrainConfigError, ValueError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(str(path))

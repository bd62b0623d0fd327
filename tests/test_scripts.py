"""The helper scripts' own arithmetic (scripts/ is not a package: loaded from its path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_wall_time_adds_the_sessions_of_a_resumed_run() -> None:
    """sb3's monitor time starts again from zero when a run is resumed."""
    wall_seconds = _load("summarize_training").wall_seconds
    assert wall_seconds([{"t": 10.0}, {"t": 20.0}]) == (20.0, 1)
    assert wall_seconds([{"t": 10.0}, {"t": 20.0}, {"t": 5.0}, {"t": 15.0}]) == (35.0, 2)

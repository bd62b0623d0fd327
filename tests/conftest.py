"""Shared fixtures (the tiny model built in code, the shared data directory) and the
hypothesis profiles.

Hypothesis profiles
-------------------
* ``ci`` (the default, for everyone): ``derandomize=True`` and no example database, so every
  run on every machine tries the same examples; a failure reproduces anywhere.
* ``--hypothesis-seed=N`` (any profile): examples drawn from seed ``N`` instead, so a developer
  can sweep seeds (``pytest --hypothesis-seed=1``, ``=2``, ...) and still reproduce each run.
* ``HYPOTHESIS_PROFILE=explore``: many more examples, random unless seeded, with the example
  database on, for hunting rare failures before they reach CI.

The suite's header line says which profile and seed a run used.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(2)

# Model-backed examples take ~0.1-0.3 s each, so no per-example deadline; fixtures built once
# per session (the tiny model) are fine to share between examples.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, database=None, max_examples=50, **_COMMON)
settings.register_profile("seeded", derandomize=False, database=None, max_examples=50, **_COMMON)
settings.register_profile("explore", max_examples=400, **_COMMON)
PROFILES = ("ci", "explore")


def pytest_configure(config: pytest.Config) -> None:
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if profile not in PROFILES:
        raise pytest.UsageError(
            f"HYPOTHESIS_PROFILE={profile!r} is not a profile; choose one of {', '.join(PROFILES)}"
        )
    # derandomize would ignore --hypothesis-seed; a seeded run draws from that seed instead.
    if profile == "ci" and config.getoption("hypothesis_seed", None) is not None:
        profile = "seeded"
    settings.load_profile(profile)


def _profile_line(config: pytest.Config) -> str:
    s = settings.default
    seed = config.getoption("hypothesis_seed", None)
    how = "derandomized" if s.derandomize else f"seed {seed}" if seed is not None else "random"
    return (
        f"hypothesis profile: {settings.get_current_profile_name()} "
        f"({how}, max_examples={s.max_examples}, database={'on' if s.database else 'off'})"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return _profile_line(config)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    # The header is hidden under -q (the README's command); say it again at the end.
    if config.get_verbosity() < 0:
        terminalreporter.write_line(_profile_line(config))


@pytest.fixture(scope="session")
def tiny():
    """``(model, tokenizer)`` of tiny-random-qwen2, float32."""
    from backtrack.models.tiny import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: on a busy shared CPU the small LSTM policies are many
    times faster that way (the RL tests use it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mbpp(shared_data: Path) -> str:
    """The MBPP file (HumanEval layout) of the shared data directory."""
    return str(shared_data / "mbpp" / "mbpp_release_v1.jsonl")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA

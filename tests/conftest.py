"""Shared fixtures: the tiny model (built in code) and the shared data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny():
    """``(model, tokenizer)`` of tiny-random-qwen2, float32."""
    from backtrack.models.tiny import build_tiny_model

    return build_tiny_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA

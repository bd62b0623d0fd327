"""backtrack: local backtracking for LLM decoding.

``backtrack.load_model(name) -> (model, tokenizer)`` resolves the same names as ``--model``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import backtrack` (and the CLI's start-up) does not import torch.
    if name == "load_model":
        from backtrack.models import load_model

        return load_model
    raise AttributeError(f"module 'backtrack' has no attribute {name!r}")

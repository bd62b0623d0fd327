"""backtrack: local backtracking for LLM decoding (the ``backtrack-decoding`` distribution).

``backtrack.load_model(name) -> (model, tokenizer)`` resolves the same names as ``--model``;
``backtrack.from_llama(llm) -> (model, tokenizer)`` decodes on a ``llama_cpp.Llama`` you loaded
yourself; ``backtrack.hf.generate`` is transformers' ``model.generate(custom_generate=...)``.
"""

from __future__ import annotations

import importlib
from typing import Any

# The version, stated once: pyproject.toml reads it from here.
__version__ = "0.1.0"
__all__ = ["__version__", "from_llama", "hf", "load_model"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import backtrack` (and the CLI's start-up) does not import torch.
    if name == "load_model":
        from backtrack.models import load_model

        return load_model
    if name == "from_llama":
        from backtrack.models.existing import from_llama

        return from_llama
    if name == "hf":
        return importlib.import_module("backtrack.hf")
    raise AttributeError(f"module 'backtrack' has no attribute {name!r}")

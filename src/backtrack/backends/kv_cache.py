"""The KV cache, and the one operation backtracking needs from it: an exact crop.

Only full-attention ``DynamicLayer`` caches drop their last positions losslessly. A static cache
cannot crop at all, a sliding-window layer has already forgotten positions it would need after a
rollback, and a quantized cache keeps most positions in a quantized store that ``crop`` does not
touch. Those are refused up front rather than silently corrupted.
"""

from __future__ import annotations

from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer


class CacheNotRollbackableError(TypeError):
    """The model's KV cache cannot drop its last positions exactly."""


def check_rollbackable(cache: Cache) -> None:
    """Raise :class:`CacheNotRollbackableError` unless every layer crops exactly."""
    if not isinstance(cache, DynamicCache):
        raise CacheNotRollbackableError(
            f"{type(cache).__name__} cannot be rolled back exactly; backtracking needs a "
            "DynamicCache with full-attention layers (static, quantized and offloaded-static "
            "caches are not supported)"
        )
    for index, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise CacheNotRollbackableError(
                f"cache layer {index} is a {type(layer).__name__}: it cannot be rolled back "
                "exactly (sliding-window layers forget positions a rollback needs; quantized "
                "layers crop only their residual). Use a model with full attention, or disable "
                "sliding windows in its config."
            )


def new_cache(model) -> DynamicCache:
    """A fresh cache for ``model``, checked to be rollbackable."""
    cache = DynamicCache(config=model.config)
    check_rollbackable(cache)
    return cache


def rollback_cache(cache, k: int) -> None:
    """Drop the last ``k`` positions (no recomputation of anything)."""
    if k > 0:
        cache.crop(-k)

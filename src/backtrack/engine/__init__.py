"""The decoding engine: sampling, exact rollback, budget, stopping and streaming.

The names below load on first use, so that ``backtrack.engine.settings`` (the settings'
declarations, which the CLI builds its flags from) can be imported without torch, and
``backtrack --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it.
_EXPORTS = {
    "Bans": "backtrack.engine.banned",
    "PhraseSet": "backtrack.engine.banned",
    "build_bans": "backtrack.engine.banlists",
    "ban_list": "backtrack.engine.banlists",
    "Budget": "backtrack.engine.settings",
    "GenerationConfig": "backtrack.engine.settings",
    "CacheNotRollbackableError": "backtrack.backends.kv_cache",
    "check_rollbackable": "backtrack.backends.kv_cache",
    "new_cache": "backtrack.backends.kv_cache",
    "CommittedText": "backtrack.engine.streaming",
    "Counts": "backtrack.engine.results",
    "Event": "backtrack.engine.results",
    "GenerationResult": "backtrack.engine.results",
    "RollbackEvent": "backtrack.engine.results",
    "Step": "backtrack.engine.results",
    "TokenEvent": "backtrack.engine.results",
    "Decoder": "backtrack.engine.decoder",
    "generate": "backtrack.engine.decoder",
    "DecodingSession": "backtrack.engine.session",
    "encode_prompt": "backtrack.engine.prompt",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'backtrack.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

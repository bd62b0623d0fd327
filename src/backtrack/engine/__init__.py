"""The decoding engine: sampling, exact rollback, budget, stopping and streaming.

The names below load on first use, so that ``backtrack.engine.settings`` (the settings'
declarations, which the CLI builds its flags from) can be imported without torch, and
``backtrack --help`` stays fast.
"""

from __future__ import annotations

from backtrack.lazy import lazy_exports

# Each module -> the public names it defines.
_EXPORTS = {
    "backtrack.engine.banned": ("Bans", "PhraseSet"),
    "backtrack.engine.banlists": ("ban_list", "build_bans"),
    "backtrack.engine.settings": ("Budget", "GenerationConfig"),
    "backtrack.backends.kv_cache": ("CacheNotRollbackableError", "check_rollbackable", "new_cache"),
    "backtrack.engine.streaming": ("CommittedText",),
    "backtrack.engine.results": (
        "Counts",
        "Event",
        "GenerationResult",
        "RollbackEvent",
        "Step",
        "TokenEvent",
    ),
    "backtrack.engine.decoder": ("Decoder", "generate"),
    "backtrack.engine.session": ("DecodingSession",),
    "backtrack.engine.prompt": ("encode_prompt",),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)

"""The decoding engine: sampling, exact rollback, budget, stopping and streaming."""

from backtrack.backends.kv_cache import CacheNotRollbackableError, check_rollbackable, new_cache
from backtrack.engine.decoder import Decoder, generate
from backtrack.engine.session import DecodingSession, encode_prompt
from backtrack.engine.types import (
    Budget,
    Counts,
    Event,
    GenerationConfig,
    GenerationResult,
    RollbackEvent,
    Step,
    TokenEvent,
)

__all__ = [
    "Budget",
    "CacheNotRollbackableError",
    "Counts",
    "Decoder",
    "DecodingSession",
    "Event",
    "GenerationConfig",
    "GenerationResult",
    "RollbackEvent",
    "Step",
    "TokenEvent",
    "check_rollbackable",
    "encode_prompt",
    "generate",
    "new_cache",
]

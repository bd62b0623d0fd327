"""The decoding engine: sampling, exact rollback, budget, stopping and streaming."""

from backtrack.backends.kv_cache import CacheNotRollbackableError, check_rollbackable, new_cache
from backtrack.engine.banned import BannedStrings
from backtrack.engine.decoder import Decoder, generate
from backtrack.engine.prompt import encode_prompt
from backtrack.engine.session import DecodingSession
from backtrack.engine.streaming import CommittedText
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
    "BannedStrings",
    "Budget",
    "CacheNotRollbackableError",
    "CommittedText",
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

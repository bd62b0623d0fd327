"""The server's decoding defaults come from the engine: a request that leaves a setting out
decodes with ``GenerationConfig()``'s value, the same one the CLI and the evaluation use."""

from __future__ import annotations

import pytest

from backtrack.engine import GenerationConfig
from backtrack.engine.decoder import INTERACTIVE_ROLLBACK_WINDOW
from backtrack.serving import ServeSettings
from backtrack.serving.protocol import (
    OPENAI_COMPLETION_MAX_TOKENS,
    BacktrackOptions,
    ChatCompletionRequest,
    CompletionRequest,
    ServeError,
)
from backtrack.serving.requests import request_config

SETTINGS = ServeSettings(["m"], max_tokens_limit=300)


def _completion(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt="x", **fields)


def test_omitted_settings_take_the_engine_defaults():
    config = request_config(_completion(), SETTINGS)
    engine = GenerationConfig()
    for name in (
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "stop",
        "period",
        "ban",
        "max_retries_per_position",
        "banned_strings",
        "banned_regex",
        "banned_ignore_case",
        "budget",
    ):
        assert getattr(config, name) == getattr(engine, name), name


def test_the_protocol_defaults_stay_the_protocols():
    assert BacktrackOptions().rollback_window == INTERACTIVE_ROLLBACK_WINDOW
    completion = request_config(_completion(), SETTINGS)
    assert completion.rollback_window == INTERACTIVE_ROLLBACK_WINDOW
    assert completion.max_new_tokens == OPENAI_COMPLETION_MAX_TOKENS
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert request_config(chat, SETTINGS).max_new_tokens == SETTINGS.max_tokens_limit


def test_given_settings_replace_the_defaults():
    body = _completion(
        temperature=0.0,
        top_k=7,
        top_p=0.9,
        min_p=0.05,
        stop=["\n\n"],
        max_tokens=40,
        seed=3,
        backtrack={
            "rollback_window": None,
            "period": 2,
            "ban": "next",
            "max_retries_per_position": 5,
            "banned_strings": ["TODO"],
            "ban_ignore_case": True,
            "max_backtracks": 4,
            "max_discarded_tokens": 9,
        },
    )
    config = request_config(body, SETTINGS)
    assert (config.temperature, config.top_k, config.top_p, config.min_p) == (0.0, 7, 0.9, 0.05)
    assert config.stop == ("\n\n",) and config.max_new_tokens == 40
    assert config.rollback_window is None  # null: unbounded, not "the default"
    assert (config.period, config.ban, config.max_retries_per_position) == (2, "next", 5)
    assert config.banned_strings == ("TODO",) and config.banned_ignore_case
    assert (config.budget.max_backtracks, config.budget.max_discarded_tokens) == (4, 9)


def test_the_protocols_filter_off_values_turn_the_filters_off():
    config = request_config(_completion(top_k=0, top_p=1.0, min_p=0.0), SETTINGS)
    assert (config.top_k, config.top_p, config.min_p) == (None, None, None)


def test_a_request_over_the_token_limit_is_refused():
    with pytest.raises(ServeError, match="--max-tokens-limit"):
        request_config(_completion(max_tokens=301), SETTINGS)

"""transformers' arguments to a custom_generate function, checked and turned into the engine's
settings: what :func:`backtrack.hf.generate` honours, what it refuses (one line each, before
anything is decoded), each row's prompt and the tokenizer of a decoding without text.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from backtrack.engine.settings import GENERATION_KEYS, GenerationConfig

# The backtracking settings transformers' GenerationConfig does not have: keyword arguments of
# generate(), named as in backtrack's GenerationConfig. The others (max_new_tokens,
# temperature, top_k, top_p, min_p, repetition_penalty) are transformers' own arguments.
BACKTRACK_SETTINGS: tuple[str, ...] = tuple(
    key for key in GENERATION_KEYS if key not in HFGenerationConfig().to_dict()
)
# What transformers builds from the arguments generate() honours; anything else changes the
# distribution in a way the engine does not reproduce.
_HONOURED_PROCESSORS = (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
)
_HONOURED_CRITERIA = (MaxLengthCriteria, EosTokenCriteria)
# Model inputs transformers prepares for every causal LM; the engine keeps its own cache and
# positions, and reads the attention mask for the padding.
_PREPARED_INPUTS = frozenset(
    {"attention_mask", "position_ids", "logits_to_keep", "cache", "past_key_values", "use_cache"}
)
_REPORTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


class NoTokenizer:
    """The tokenizer of a decoding from token ids alone: no text at all (every piece is ``""``).
    :func:`backtrack.hf.generate` only uses it when nothing needs text."""

    eos_token_id = None
    pad_token_id = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str, **kwargs: Any) -> Any:
        raise ValueError("decoding from token ids alone cannot tokenize text; pass tokenizer=")

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
        return ""

    def batch_decode(self, batch: Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return ["" for _ in batch]


def refuse_unsupported(
    hf: HFGenerationConfig, processors: Any, criteria: Any, model_kwargs: dict[str, Any]
) -> None:
    """A one-line error for the first setting :func:`backtrack.hf.generate` cannot honour."""
    mode = hf.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        raise ValueError(
            f"backtrack.hf.generate decodes greedily or by sampling, one sequence per row; "
            f"these settings ask for {mode.value} (num_beams={hf.num_beams})"
        )
    for name in _REPORTS:
        if getattr(hf, name, False):
            raise ValueError(f"{name}=True is not supported by backtrack.hf.generate")
    _refuse_others(
        processors,
        _HONOURED_PROCESSORS,
        "logits_processor=",
        "applies temperature, top_k, top_p, min_p and repetition_penalty",
    )
    _refuse_others(criteria, _HONOURED_CRITERIA, "stopping_criteria=",
                   "stops on max_new_tokens, EOS and its own stop= strings")  # fmt: skip
    for key, value in model_kwargs.items():
        if key not in _PREPARED_INPUTS and value is not None:
            raise ValueError(
                f"{key!r} is neither a setting of backtrack.hf.generate nor a model input it "
                f"supports (its settings: operator, seed, tokenizer, "
                f"{', '.join(BACKTRACK_SETTINGS)})"
            )
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError("backtrack.hf.generate starts from the prompt: pass no filled cache")


def prompts_of(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    """Each row's prompt without its left padding; right or inner padding is refused."""
    rows = input_ids.tolist()
    if attention_mask is None:
        return rows
    prompts = []
    for i, (row, mask) in enumerate(zip(rows, attention_mask.tolist(), strict=True)):
        start = len(mask) - sum(1 for m in mask if m)
        if start == len(mask):
            raise ValueError(f"row {i} of attention_mask masks every token: no prompt to continue")
        if any(m == 0 for m in mask[start:]):
            raise ValueError(
                f"row {i} of attention_mask is not left-padded (decoder-only models need "
                "padding_side='left')"
            )
        prompts.append(row[start:])
    return prompts


def engine_config(
    hf: HFGenerationConfig, prompt_length: int, settings: dict[str, Any]
) -> GenerationConfig:
    """The engine's settings: transformers' for what it has, the keyword arguments for the rest."""
    sampling = bool(hf.do_sample)
    if hf.max_new_tokens is not None:
        max_new_tokens = hf.max_new_tokens
    else:
        max_new_tokens = hf.max_length - prompt_length
    eos = hf.eos_token_id
    eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
    defaults = GenerationConfig().to_flat()
    # A single string where a list is expected (stop="\n") is that one string, not its letters.
    settings = {
        key: [value] if isinstance(value, str) and isinstance(defaults[key], list) else value
        for key, value in settings.items()
    }
    flat = {
        "max_new_tokens": max_new_tokens,
        "temperature": (1.0 if hf.temperature is None else hf.temperature) if sampling else 0.0,
        "top_k": (hf.top_k or None) if sampling else None,
        "top_p": hf.top_p if sampling and hf.top_p is not None and hf.top_p < 1.0 else None,
        "min_p": hf.min_p if sampling else None,
        "repetition_penalty": 1.0 if hf.repetition_penalty is None else hf.repetition_penalty,
        **settings,
    }
    return replace(GenerationConfig.from_flat(flat), eos_token_ids=eos_ids)


def needs_text(config: GenerationConfig, operator: Any) -> str | None:
    """What in this call needs text (for the error), or ``None``."""
    for name in ("stop", "banned_strings", "banned_regex"):
        if getattr(config, name):
            return f"{name}="
    if config.dry_multiplier:
        return "DRY (dry_multiplier=)"
    if operator is not None and getattr(operator, "reads_text", True):
        return f"the operator {operator.name!r} (it reads text)"
    return None


def with_settings_in_signature(function: Any) -> Any:
    """``function`` with every backtracking setting as a keyword parameter of its signature:
    transformers hands a custom_generate callable only the keyword arguments its signature
    names."""
    signature = inspect.signature(function)
    defaults = GenerationConfig().to_flat()
    params = list(signature.parameters.values())
    extra = [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=defaults[key])
        for key in BACKTRACK_SETTINGS
    ]
    function.__signature__ = signature.replace(parameters=[*params[:-1], *extra, params[-1]])
    return function


def _refuse_others(items, honoured: tuple[type, ...], where: str, does: str) -> None:
    """A one-line error for the first of ``items`` (logits processors or stopping criteria,
    from a generation setting or ``where``) that backtrack does not honour."""
    for item in items or ():
        if not isinstance(item, honoured):
            raise ValueError(
                f"{type(item).__name__} (from a generation setting or {where}) is not supported "
                f"by backtrack.hf.generate; it {does}"
            )

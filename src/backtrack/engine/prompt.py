"""What a sequence starts from and ends on: the prompt's token ids and the ids that end decoding
(shared by the session, beam search, the server and the evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

from backtrack.engine.settings import GenerationConfig


def eos_ids_for(model, tokenizer, config: GenerationConfig) -> frozenset[int]:
    """EOS ids: the config's, else the model's generation config plus the tokenizer's EOS."""
    if config.eos_token_ids is not None:
        return frozenset(int(i) for i in config.eos_token_ids)
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos is not None:
        ids.update(int(i) for i in gen_eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def encode_prompt(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """Prompt ids: a string is tokenized as is (no special tokens added)."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("the prompt is empty")
        return list(ids)
    return [int(i) for i in prompt]

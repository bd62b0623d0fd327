"""``tiny-random-qwen2``: a small randomly initialised Qwen2 and a tokenizer, both built in code.

Nothing is downloaded. The tokenizer is a byte-level BPE trained on a fixed snippet of Python, so
it round-trips any text (every byte is in the vocabulary) and multi-byte characters span several
tokens, as with real models. The model's weights come from a fixed seed, so every call returns
the same model on every machine.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TINY_MODEL_NAME = "tiny-random-qwen2"
TINY_SEED = 1234
TINY_VOCAB_SIZE = 512
EOS_TOKEN = "<|endoftext|>"
IM_END_TOKEN = "<|im_end|>"

# The corpus only decides which merges exist; any fixed text works.
_CORPUS = '''
def add(a, b):
    """Return the sum of a and b."""
    return a + b


def fib(n: int) -> int:
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()


for i in range(10):
    print(i, i * i)
assert add(1, 2) == 3
import math
from typing import List
def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False
'''


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocabulary of ``TINY_VOCAB_SIZE``) built deterministically."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[EOS_TOKEN, IM_END_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        bos_token=None,
        clean_up_tokenization_spaces=False,
    )


def tiny_config(vocab_size: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # A larger init than the default makes the random model's distributions peaked rather
        # than uniform, so tests see confident and unconfident steps alike.
        initializer_range=0.5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_tiny_model(
    dtype: torch.dtype = torch.float32,
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Return ``(model, tokenizer)`` for ``tiny-random-qwen2``, identical on every call."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(len(tokenizer))
    config.eos_token_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    # Seed a private generator state so building the model does not disturb the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.to(dtype).eval(), tokenizer

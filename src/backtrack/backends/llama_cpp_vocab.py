"""A GGUF's own vocabulary as the tokenizer the engine decodes with, read through llama.cpp.

A user's own ``llama_cpp.Llama`` comes with no transformers tokenizer, and transformers reads
tokenizers from GGUF files of a few architectures only (and takes seconds to convert one).
:class:`LlamaVocabTokenizer` instead asks llama.cpp itself, so any GGUF llama.cpp loads has
one, with the ids the model was trained on by construction. It offers what the engine uses of a
tokenizer (:mod:`backtrack.engine.prompt`, :mod:`backtrack.engine.text`, the DRY penalty):
calling it on a text, ``decode``, ``batch_decode``, ``len`` and the special token ids. It has
no chat template: format chat prompts yourself, or pass a transformers tokenizer.

Decoding joins each token's bytes (``llama_token_to_piece``) and decodes them as UTF-8, an
incomplete character at the end becoming U+FFFD as with transformers' byte-level tokenizers,
so the engine's incremental detokenizer holds it back until the token that completes it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any


class LlamaVocabTokenizer:
    """The vocabulary of a llama.cpp model (``model``: a
    :class:`~backtrack.backends.llama_cpp_backend.LlamaCppModel`) as a tokenizer.

    >>> tokenizer = LlamaVocabTokenizer(model)                     # doctest: +SKIP
    >>> tokenizer("def f():", add_special_tokens=False)["input_ids"]  # doctest: +SKIP
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        lib, vocab = model.lib, model.vocab_ptr
        self.lib, self.vocab = lib, vocab
        self.bos_token_id = _token_or_none(lib.llama_vocab_bos(vocab))
        self.eos_token_id = _token_or_none(lib.llama_vocab_eos(vocab))
        self.pad_token_id = _token_or_none(lib.llama_vocab_pad(vocab))

    def __len__(self) -> int:
        return int(self.model.vocab_size)

    def __repr__(self) -> str:
        return f"LlamaVocabTokenizer({self.model.path.name!r}, {len(self)} tokens)"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (e.g. ``<|im_start|>``)
        become their ids, as transformers tokenizers do; ``add_special_tokens`` adds BOS where
        the model wants one."""
        raw = text.encode("utf-8")
        size = len(raw) + 8
        while True:
            buffer = (self.lib.llama_token * size)()
            count = self.lib.llama_tokenize(
                self.vocab, raw, len(raw), buffer, size, add_special_tokens, True
            )
            if count >= 0:
                return list(buffer[:count])
            size = -count  # llama.cpp says how many it needs

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(
        self,
        ids: Sequence[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        """``ids`` as text (control tokens such as EOS left out when ``skip_special_tokens``).

        ``clean_up_tokenization_spaces`` is accepted for the transformers signature; llama.cpp
        never cleans spaces up, so it must be False.
        """
        if clean_up_tokenization_spaces:
            raise ValueError("LlamaVocabTokenizer does not clean up tokenization spaces")
        pieces = b"".join(self._piece(int(i), not skip_special_tokens) for i in ids)
        return pieces.decode("utf-8", errors="replace")

    def batch_decode(self, batch: Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in batch]

    def _piece(self, token: int, special: bool) -> bytes:
        size = 32
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self.lib.llama_token_to_piece(self.vocab, token, buffer, size, 0, special)
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # llama.cpp says how many bytes it needs


def _token_or_none(token: int) -> int | None:
    return int(token) if token >= 0 else None

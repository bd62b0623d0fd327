"""Models the caller already loaded, turned into the ``(model, tokenizer)`` pair the engine
decodes: :func:`from_llama` for a ``llama_cpp.Llama``.

Nothing goes through the model registry (:mod:`~backtrack.models.catalogue`): any GGUF that
llama-cpp-python loads, with the caller's own settings, decodes with backtracking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backtrack.backends.llama_cpp_backend import LlamaCppModel
from backtrack.backends.llama_cpp_vocab import LlamaVocabTokenizer

__all__ = ["from_llama"]


def from_llama(
    llm: Any,
    tokenizer: Any = None,
    *,
    eos_token_ids: Sequence[int] | None = None,
) -> tuple[LlamaCppModel, Any]:
    """``(model, tokenizer)`` for decoding with backtracking on ``llm``, a ``llama_cpp.Llama``.

    The model decodes on ``llm``'s weights (nothing is loaded twice) with ``llm``'s ``n_ctx``,
    ``n_threads`` and ``n_batch``, in a context of its own: ``llm`` itself is left as it was
    and keeps working (see :meth:`LlamaCppModel.from_llama`). Keep ``llm`` open while the
    model is used.

    Args:
        llm: the ``llama_cpp.Llama``, from any GGUF path.
        tokenizer: the tokenizer to decode text with. ``None`` (default): the GGUF's own
            vocabulary through llama.cpp (:class:`LlamaVocabTokenizer`: encode, decode, EOS;
            no chat template). A transformers tokenizer is checked against llama.cpp's
            tokenization first, so mismatched ids fail here, not as nonsense later.
        eos_token_ids: ids that end decoding (default: the GGUF's EOS and EOT tokens).

    Examples:
        >>> from llama_cpp import Llama                                # doctest: +SKIP
        >>> from backtrack import from_llama
        >>> from backtrack.engine import GenerationConfig, generate
        >>> from backtrack.operators import ProbabilityTrend
        >>> llm = Llama("model.gguf", n_ctx=2048, n_threads=4, verbose=False)  # doctest: +SKIP
        >>> model, tokenizer = from_llama(llm)                         # doctest: +SKIP
        >>> result = generate(model, tokenizer, "def fib(n):", ProbabilityTrend(),
        ...                   GenerationConfig(max_new_tokens=64, seed=1))     # doctest: +SKIP
    """
    model = LlamaCppModel.from_llama(llm, eos_token_ids=eos_token_ids)
    if tokenizer is None:
        return model, LlamaVocabTokenizer(model)
    model.check_tokenizer(tokenizer)
    return model, tokenizer

"""The llama.cpp backend: GGUF weights through llama-cpp-python's low-level API.

On a CPU this decodes several times faster than transformers (quantized matrix kernels, no
dequantized copy of the weights), and a rollback is native: ``llama_memory_seq_rm(seq, p, -1)``
removes a sequence's positions from ``p`` on, and nothing is recomputed.

* One sequence (:meth:`LlamaCppModel.new_cache`): a context with one sequence, created once
  per model and handed to the newest session (a session that was superseded gets a clear
  error if it is used again, never another session's cache).
* A batch (:meth:`LlamaCppModel.new_batch`): a context with one sequence id per row and a KV
  stream per sequence (``kv_unified = False``: a row attends over its own cells only), so
  ragged rows need no padding, no masks and no compaction. Each step is one ``llama_decode``
  over one token per live row; a rollback is that row's ``seq_rm``; a finished row's
  sequence id is cleared and reused by the next request.

The weights come from a GGUF file (:class:`LlamaCppModel`) or from a ``llama_cpp.Llama`` the
caller already loaded (:meth:`LlamaCppModel.from_llama`: its weights, its ``n_ctx``,
``n_threads`` and ``n_batch``, in contexts of the backend's own).

Sampling stays in the engine, on the float32 logits copied out of llama.cpp, so operators,
bans, budgets and stop strings are the same as on transformers. Tokens are those of the
transformers tokenizer read from the same GGUF, checked at load: llama.cpp must tokenize a
probe text to the same ids, so the two can never silently disagree (or, for a caller's own
``Llama``, of llama.cpp's vocabulary itself: :mod:`.llama_cpp_vocab`).

This module loads the weights and answers the backend interface; the contexts, sequences and
batches it decodes into are in ``backends/llama_cpp_cache.py``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from backtrack.backends.llama_cpp_cache import (
    LlamaBatch,
    LlamaContext,
    LlamaSequence,
    close_quietly,
)
from backtrack.errors import ModelLoadError

# The caches are importable from here too, where the tests and users take them.
__all__ = ["INSTALL_HINT", "LlamaBatch", "LlamaCppModel", "LlamaSequence", "default_threads"]

INSTALL_HINT = (
    "the llama.cpp backend needs llama-cpp-python; install it with:\n"
    f"    {sys.executable} -m pip install 'llama-cpp-python==0.3.36'\n"
    "(built from source: about 5-15 minutes on 2 cores; pip caches the wheel)"
)


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(INSTALL_HINT) from exc
    # llama-cpp-python prints llama.cpp's log (hundreds of lines per load) unless its logger
    # has a level; keep errors only, unless the user set one.
    log = logging.getLogger("llama-cpp-python")
    if log.level == logging.NOTSET:
        log.setLevel(logging.ERROR)
    return llama_cpp


def default_threads() -> int:
    """The cores this process may run on (llama.cpp's own default is half the cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LlamaCppModel:
    """A GGUF model on llama.cpp, as a backend (see :mod:`backtrack.backends.base`).

    >>> model = LlamaCppModel("model.gguf", eos_token_ids=[151645])   # doctest: +SKIP

    Args:
        path: the ``.gguf`` file.
        n_threads: CPU threads (default: every core this process may use).
        n_ctx: tokens one sequence may hold (prompt + completion); a batch of ``B`` rows
            allocates ``B * n_ctx``. Default 4096, at most the model's training context.
        n_batch: most tokens per ``llama_decode`` call (longer prompts are split).
        eos_token_ids: EOS ids for decoding (default: the GGUF's EOS and EOT tokens).
    """

    is_backtrack_backend = True
    matches_generate = False
    name = "llama.cpp"
    device = torch.device("cpu")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        n_batch: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        for label, value in (("n_threads", n_threads), ("n_ctx", n_ctx), ("n_batch", n_batch)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {str(self.path)!r} does not exist")
        lib = _llama_cpp()
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        model_ptr = lib.llama_model_load_from_file(str(self.path).encode(), params)
        if not model_ptr:
            raise ModelLoadError(f"llama.cpp could not load {str(self.path)!r} (not a GGUF?)")
        trained = int(lib.llama_model_n_ctx_train(model_ptr))
        n_ctx = min(n_ctx or 4096, trained) if trained > 0 else n_ctx or 4096
        self._owns_model = True  # this object loaded the weights, so it frees them
        self._setup(lib, model_ptr, n_threads or default_threads(), n_ctx, n_batch, eos_token_ids)

    @classmethod
    def from_llama(cls, llm: Any, *, eos_token_ids: Sequence[int] | None = None) -> LlamaCppModel:
        """A backend on the weights of a ``llama_cpp.Llama`` the caller already loaded.

        Nothing is loaded again: the backend decodes on ``llm``'s model, with ``llm``'s
        ``n_ctx`` (tokens per sequence), ``n_threads`` and ``n_batch``, in contexts of its own
        (``llm``'s own context and its prompt cache are left untouched, so ``llm`` keeps
        working as before). The backend holds ``llm``, so the weights live as long as it
        does; do not ``llm.close()`` while the backend is still used. See
        :func:`backtrack.models.from_llama` for the model and tokenizer pair.
        """
        lib = _llama_cpp()
        if not isinstance(llm, lib.Llama):
            raise TypeError(f"expected a llama_cpp.Llama, got {type(llm).__name__}")
        if llm.model is None:
            raise ValueError("this llama_cpp.Llama is closed (its weights were freed)")
        self = cls.__new__(cls)
        self.path = Path(llm.model_path)
        self._llama = llm  # keeps the weights alive as long as this backend
        self._owns_model = False
        self._setup(
            lib, llm.model, int(llm.n_threads), int(llm.n_ctx()), int(llm.n_batch), eos_token_ids
        )
        return self

    def _setup(
        self,
        lib: Any,
        model_ptr: Any,
        n_threads: int,
        n_ctx: int,
        n_batch: int | None,
        eos_token_ids: Sequence[int] | None,
    ) -> None:
        """What the backend reads from loaded weights: vocabulary, sizes, EOS ids."""
        self.lib, self.model_ptr = lib, model_ptr
        self.vocab_ptr = lib.llama_model_get_vocab(model_ptr)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self.vocab_ptr))
        self.n_ctx = n_ctx
        self.n_batch = min(n_batch or 512, self.n_ctx)
        self.n_threads = n_threads
        layers = lib.llama_model_n_layer(model_ptr)
        head_dim = lib.llama_model_n_embd(model_ptr) // lib.llama_model_n_head(model_ptr)
        kv_heads = lib.llama_model_n_head_kv(model_ptr)
        self.kv_bytes_per_token = layers * 2 * kv_heads * head_dim * 2  # K and V in f16
        if eos_token_ids is None:
            eos_token_ids = [
                t
                for t in (lib.llama_vocab_eos(self.vocab_ptr), lib.llama_vocab_eot(self.vocab_ptr))
                if t >= 0
            ]
        self.generation_config = SimpleNamespace(eos_token_id=list(dict.fromkeys(eos_token_ids)))
        self.lease = 0
        self._single: LlamaContext | None = None
        # prompt_logits' own context (never a session's), one caller at a time.
        self._scoring: LlamaContext | None = None
        self._scoring_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"LlamaCppModel({str(self.path)!r}, n_threads={self.n_threads}, n_ctx={self.n_ctx}, "
            f"n_batch={self.n_batch})"
        )

    def close(self) -> None:
        for name in ("_single", "_scoring"):
            context = getattr(self, name, None)
            if context is not None:
                context.close()
                setattr(self, name, None)
        if getattr(self, "model_ptr", None):
            if getattr(self, "_owns_model", False):  # an adopted Llama frees its own weights
                self.lib.llama_model_free(self.model_ptr)
            self.model_ptr = None

    def __del__(self, _close=close_quietly) -> None:
        # Bound at definition: at interpreter exit this module's globals may already be None.
        _close(self)

    # ------------------------------------------------------------------ tokenizer check
    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of ``text`` (no special tokens added)."""
        raw = text.encode("utf-8")
        buffer = (self.lib.llama_token * (len(raw) + 8))()
        count = self.lib.llama_tokenize(
            self.vocab_ptr, raw, len(raw), buffer, len(buffer), False, False
        )
        if count < 0:
            raise RuntimeError(f"llama_tokenize needs {-count} tokens for {len(raw)} bytes")
        return list(buffer[:count])

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise unless ``tokenizer`` gives llama.cpp's ids (the engine's tokens are fed as
        ids, so a mismatch would decode nonsense without any error)."""
        probe = "def add(a, b):\n    return a + b  # naïve 🙂\n\tprint('ok')"
        ours = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        theirs = self.tokenize(probe)
        if ours != theirs:
            raise ValueError(
                f"the tokenizer does not match {self.path.name}'s vocabulary "
                f"(probe text: {ours[:8]}... vs llama.cpp {theirs[:8]}...)"
            )

    # ------------------------------------------------------------------ backend interface
    def new_cache(self) -> LlamaSequence:
        """The single-sequence context, emptied, for a new session (which now owns it)."""
        if self._single is None:
            self._single = LlamaContext(self, n_seq=1, n_ctx=self.n_ctx)
        self.lease += 1
        self._single.remove(0, 0)
        return LlamaSequence(self._single, seq=0, lease=self.lease)

    def forward(self, cache: LlamaSequence, ids: Sequence[int]) -> torch.Tensor:
        cache.check()
        logits = cache.context.decode([(cache.seq, list(ids), cache.length)])
        cache.length += len(ids)
        return logits

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """The logits at every position of ``ids`` (see :class:`~backtrack.backends.base.
        Backend`), from one ``llama_decode`` per ``n_batch`` tokens on a context of its own."""
        with self._scoring_lock:
            if self._scoring is None:
                self._scoring = LlamaContext(self, n_seq=1, n_ctx=self.n_ctx)
            self._scoring.remove(0, 0)
            try:
                return self._scoring.decode([(0, list(ids), 0)], every=True)
            finally:
                self._scoring.remove(0, 0)

    def new_batch(
        self,
        slots: int,
        *,
        pad_token_id: int = 0,
        compact_fraction: float = 0.25,
        min_compact: int = 16,
    ) -> LlamaBatch:
        del pad_token_id, compact_fraction, min_compact  # no padding, no holes here
        return LlamaBatch(self, slots)

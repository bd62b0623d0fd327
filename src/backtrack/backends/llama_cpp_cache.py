"""The llama.cpp backend's KV side: a context, one sequence's cache, and a batch's rows.

:class:`~backtrack.backends.llama_cpp_backend.LlamaCppModel` loads the weights and answers
the backend interface; what it decodes into lives here. A :class:`LlamaContext` is one llama.cpp
context (KV cache and compute buffers) with ``n_seq`` sequences and one KV stream per
sequence; a :class:`LlamaSequence` is one sequence of it (a session's ``cache``, rolled back
with ``seq_rm``); a :class:`LlamaBatch` is a batch's rows as sequence ids of one context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

# llama_decode's return codes (llama.h).
_DECODE_ERRORS = {
    1: "no room left in the KV cache",
    2: "aborted",
    -1: "invalid input batch",
}


class LoadedGGUF(Protocol):
    """What a context needs of the loaded model (a
    :class:`~backtrack.backends.llama_cpp_backend.LlamaCppModel`)."""

    lib: Any  # the llama_cpp module
    model_ptr: Any
    vocab_size: int
    n_ctx: int
    n_batch: int
    n_threads: int
    kv_bytes_per_token: int
    lease: int  # which single-sequence session owns the model's one-sequence context


def close_quietly(owner) -> None:
    """``owner.close()`` from ``__del__``: at interpreter exit llama-cpp-python's ctypes
    bindings may be torn down before our objects (their functions are None by then), and the
    process is releasing everything anyway, so that case is not an error. No module global is
    used here: by then this module's own (``contextlib``) may be None too."""
    try:  # noqa: SIM105 - contextlib.suppress would be such a global
        owner.close()
    except (TypeError, AttributeError):
        pass


class LlamaContext:
    """A llama.cpp context (KV cache, compute buffers) with ``n_seq`` sequences, and a reusable
    token batch of ``n_batch`` entries."""

    def __init__(self, owner: LoadedGGUF, n_seq: int, n_ctx: int) -> None:
        lib = owner.lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = owner.n_batch
        params.n_ubatch = owner.n_batch
        params.n_seq_max = n_seq
        params.n_threads = owner.n_threads
        params.n_threads_batch = owner.n_threads
        params.kv_unified = False  # one KV stream per sequence: rows never attend to others
        params.no_perf = True
        self.lib, self.owner, self.n_seq, self.n_ctx = lib, owner, n_seq, n_ctx
        self.ctx = lib.llama_init_from_model(owner.model_ptr, params)
        if not self.ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {n_seq} "
                "sequence(s) (out of memory?); lower n_ctx or the batch size"
            )
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(owner.n_batch, 0, 1)
        self.kv_bytes = n_ctx * owner.kv_bytes_per_token

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def __del__(self, _close=close_quietly) -> None:
        # Bound at definition: at interpreter exit this module's globals may already be None.
        _close(self)

    def remove(self, seq: int, start: int) -> None:
        """Drop positions ``start..`` of sequence ``seq``."""
        if not self.lib.llama_memory_seq_rm(self.memory, seq, start, -1):
            raise RuntimeError(f"llama.cpp refused to remove positions {start}.. of seq {seq}")

    def copy(self, source: int, seq: int) -> None:
        """Sequence ``seq`` becomes a copy of sequence ``source``. With one KV stream per
        sequence this copies the whole stream's buffer (llama.cpp does it before the next
        ``llama_decode``); only whole sequences can be copied between streams."""
        self.remove(seq, 0)
        self.lib.llama_memory_seq_cp(self.memory, source, seq, -1, -1)

    def decode(
        self, pieces: Sequence[tuple[int, Sequence[int], int]], every: bool = False
    ) -> torch.Tensor:
        """Feed each ``(seq, ids, first position)``; the logits after each piece's last token,
        ``[len(pieces), V]`` float32 (``every``: after each of its tokens, piece after piece,
        ``[tokens, V]``: llama.cpp computes the output of the positions flagged in the
        batch). Pieces are packed into batches of ``n_batch`` tokens."""
        vocab = self.owner.vocab_size
        room = self.n_ctx // self.n_seq
        for _, ids, start in pieces:
            # Checked here: llama.cpp aborts the process on some overflows instead of failing.
            if start + len(ids) > room:
                raise RuntimeError(
                    f"a sequence would hold {start + len(ids)} tokens, more than its context "
                    f"of {room}: raise n_ctx (--n-ctx)"
                )
        rows = sum(len(ids) for _, ids, _ in pieces) if every else len(pieces)
        out = torch.empty((rows, vocab), dtype=torch.float32)
        batch, fill, wanted, row = self.batch, 0, [], 0
        for seq, ids, start in pieces:
            last = len(ids) - 1
            for j, token in enumerate(ids):
                if fill == self.owner.n_batch:
                    self._run(fill, wanted, out)
                    fill, wanted = 0, []
                batch.token[fill] = token
                batch.pos[fill] = start + j
                batch.n_seq_id[fill] = 1
                batch.seq_id[fill][0] = seq
                batch.logits[fill] = keep = every or j == last
                if keep:
                    wanted.append((row, fill))
                    row += 1
                fill += 1
        if fill:
            self._run(fill, wanted, out)
        return out

    def _run(self, fill: int, wanted: list[tuple[int, int]], out: torch.Tensor) -> None:
        self.batch.n_tokens = fill
        code = self.lib.llama_decode(self.ctx, self.batch)
        if code != 0:
            reason = _DECODE_ERRORS.get(code, "fatal error")
            hint = (
                f" (each sequence holds at most {self.n_ctx // self.n_seq} tokens: raise "
                "n_ctx / --n-ctx)"
                if code == 1
                else ""
            )
            raise RuntimeError(f"llama_decode failed with code {code}: {reason}{hint}")
        vocab = self.owner.vocab_size
        for index, i in wanted:
            pointer = self.lib.llama_get_logits_ith(self.ctx, i)
            out[index] = torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(vocab,)))


class LlamaSequence:
    """One sequence's cache in a llama.cpp context (the session's ``cache``)."""

    def __init__(self, context: LlamaContext, seq: int, length: int = 0, lease: int = 0) -> None:
        self.context, self.seq, self.length, self.lease = context, seq, length, lease

    def check(self) -> None:
        owner = self.context.owner
        if self.lease and self.lease != owner.lease:
            raise RuntimeError(
                "this llama.cpp sequence belongs to a session that a newer session replaced: "
                "one LlamaCppModel runs one single-sequence session at a time (decode several "
                "at once with BatchDecoder)"
            )

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        k = -tokens_to_remove
        if k > self.length:
            raise ValueError(f"cannot drop {k} positions from a sequence of {self.length}")
        if k:
            self.check()
            self.context.remove(self.seq, self.length - k)
            self.length -= k


class LlamaBatch:
    """Rows of a batch as sequence ids of one llama.cpp context (see
    :mod:`backtrack.backends.llama_cpp_backend`)."""

    def __init__(self, owner: LoadedGGUF, slots: int) -> None:
        self.context = LlamaContext(owner, n_seq=slots, n_ctx=owner.n_ctx * slots)
        self.rows: list[LlamaSequence | None] = [None] * slots
        self.free_seqs = list(range(slots))
        self.peak_bytes = self.context.kv_bytes  # allocated up front, for every row

    def admit(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        pieces = []
        for slot, prompt in zip(slots, prompts, strict=True):
            if self.rows[slot] is not None:
                raise ValueError(f"slot {slot} is not free")
            seq = self.free_seqs.pop(0)
            self.rows[slot] = LlamaSequence(self.context, seq, length=len(prompt))
            pieces.append((seq, list(prompt), 0))
        return self.context.decode(pieces)

    def step(self, tokens: Sequence[int | None]) -> torch.Tensor:
        pieces = []
        for slot, token in enumerate(tokens):
            if token is None:
                continue
            row = self.rows[slot]
            assert row is not None, f"slot {slot} is free"
            pieces.append((row.seq, (token,), row.length))
            row.length += 1
        return self.context.decode(pieces)

    def row_cache(self, slot: int) -> LlamaSequence:
        row = self.rows[slot]
        assert row is not None, f"slot {slot} is free"
        return row

    def free(self, slot: int) -> None:
        row = self.rows[slot]
        if row is not None:
            self.context.remove(row.seq, 0)
            self.free_seqs.append(row.seq)
            self.rows[slot] = None

    def copy_row(self, source: int, slot: int) -> None:
        src = self.row_cache(source)
        row = self.rows[slot]
        if row is None:
            row = self.rows[slot] = LlamaSequence(self.context, self.free_seqs.pop(0))
        self.context.copy(src.seq, row.seq)
        row.length = src.length

    def keep_rows(self, keep: Sequence[int]) -> None:
        for slot, row in enumerate(self.rows):
            if slot not in keep and row is not None:
                self.free(slot)
        self.rows = [self.rows[slot] for slot in keep]

    def grow(self, n: int) -> None:
        if len(self.rows) + n > self.context.n_seq:
            raise ValueError(
                f"cannot grow a batch of {len(self.rows)} rows by {n}: it was opened with "
                f"{self.context.n_seq}"
            )
        self.rows.extend([None] * n)

    def maintain(self) -> bool:
        return False

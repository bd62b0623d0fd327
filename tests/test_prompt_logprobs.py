"""``Backend.prompt_logits`` / ``prompt_logprobs``: every prompt token's log-probability from
one pass, on both backends, against an incremental replay (the prompt fed one token at a time
on a fresh cache, through the backend's own ``forward``).

The one pass multiplies all positions at once, the replay one row at a time, so they round
differently (tests/helpers.py: the one-shot gap on transformers in float32 is up to 1.7e-4
depending on the CPU). Measured here over the 22 tokens of PROMPT, log-probabilities and the top
3 alternatives: the tiny float32 model 1.1e-5; SmolLM2-135M Q4_1 on llama.cpp (2 threads)
3.8e-6. The bounds (1e-3, as tests/test_batch.py and tests/test_llama_cpp.py allow for other
call shapes) leave room for other CPUs' kernels and stay far below what a shifted position
gives (test_an_off_by_one_is_caught).
"""

from __future__ import annotations

import pytest
import torch

from backtrack.backends.base import as_backend, prompt_logprobs

PROMPT = "def has_close_elements(numbers, threshold):\n    for i, a in enumerate(numbers):\n"
TINY_TOL = 1e-3
SMOL_TOL = 1e-3


def replay(backend, ids: list[int], top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """The prompt fed one token at a time; the sampler's formula on each position's logits."""
    cache = backend.new_cache()
    out = []
    for i, token in enumerate(ids[:-1]):
        logits = backend.forward(cache, [token])[0]
        lse = torch.logsumexp(logits, dim=-1)
        best = torch.topk(logits, top)
        alts = list(zip(best.indices.tolist(), (best.values - lse).tolist(), strict=True))
        out.append((float(logits[ids[i + 1]] - lse), alts))
    return out


def gap(ours, theirs) -> float:
    worst = 0.0
    for (lp, alts), (ref_lp, ref_alts) in zip(ours, theirs, strict=True):
        worst = max(worst, abs(lp - ref_lp))
        for (_, a), (_, b) in zip(alts, ref_alts, strict=True):
            worst = max(worst, abs(a - b))
    return worst


def _check(backend, tok, tol: float) -> float:
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    ours = prompt_logprobs(backend, ids, 3)
    theirs = replay(backend, ids, 3)
    assert len(ours) == len(ids) - 1
    for (lp, alts), (_, ref_alts) in zip(ours, theirs, strict=True):
        assert [t for t, _ in alts] == [t for t, _ in ref_alts]
        assert lp <= alts[0][1]
    worst = gap(ours, theirs)
    assert worst <= tol, worst
    return worst


def test_tiny_prompt_logprobs_match_the_replay(tiny):
    model, tok = tiny
    _check(as_backend(model), tok, TINY_TOL)


def test_an_off_by_one_is_caught(tiny):
    model, tok = tiny
    backend = as_backend(model)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    shifted = prompt_logprobs(backend, ids, 3)[1:]
    assert gap(shifted, replay(backend, ids, 3)[:-1]) > 100 * TINY_TOL


def test_short_prompts(tiny):
    model, tok = tiny
    backend = as_backend(model)
    assert prompt_logprobs(backend, [5], 2) == []
    [(lp, alts)] = prompt_logprobs(backend, [5, 7], 0)
    assert alts == [] and lp < 0


def test_smollm2_llama_cpp_prompt_logprobs_match_the_replay():
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    from backtrack.models import SMOLLM2_MODEL, load_model

    model, tok = load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, progress=False)
    _check(model, tok, SMOL_TOL)
    # A session's cache is untouched: prompt_logits runs on a context of its own.
    cache = model.new_cache()
    model.forward(cache, [1, 2, 3])
    model.prompt_logits([4, 5, 6, 7])
    assert cache.get_seq_length() == 3
    cache.check()

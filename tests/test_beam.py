"""The engine's beam search: transformers' algorithm over the backend interface, batched.

References:
* ``model.generate(num_beams=N, early_stopping=True)`` on the same tiny model: the same
  completions, token for token (the algorithm is the same; only ties broken by last-bit
  differences of batched logits could part them, and none occur on these prompts).
* Each result's log-probabilities against the incremental replay of its final sequence at
  batch size 1 (``tests/helpers.py``), within test_batch.py's FP32_TOL (batch rows round
  differently; a forked beam's cache is a bitwise copy, so it adds nothing). Measured here: at
  most 4.9e-5 nats (median 1.2e-5) over the 64 results of test_equals_transformers_generate.
  A fork that copies nothing moves a log-probability by 12.5 nats or more in 6 of the 8
  searches of ``test_a_wrong_fork_is_caught`` (the other two never kept a forked beam).
"""

from __future__ import annotations

import collections

import pytest
import torch
from helpers import max_abs_diff, replay_logprobs_for

from backtrack.engine import GenerationConfig
from backtrack.engine.beam import BeamSearchDecoder

FP32_TOL = 1e-3  # test_batch.py's bound for batch rows (see the module docstring)

PROMPTS = [
    "def fib(n):\n    ",
    "import math\n",
    "x",
    "class Stack:\n    def push(self, item):\n",
    "for i in range(10):\n",
    "hello world",
    "a = 1\nb = 2\n",
    "print(",
]


def _generate_reference(model, tok, prompt: str, beams: int, new: int, eos: list[int]) -> list:
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            num_beams=beams,
            do_sample=False,
            early_stopping=True,
            max_new_tokens=new,
            eos_token_id=eos,
            pad_token_id=0,
        )
    ids = out[0, enc["input_ids"].shape[1] :].tolist()
    cut = next((j + 1 for j, t in enumerate(ids) if t in eos), len(ids))
    return ids[:cut]


@pytest.fixture(scope="module")
def frequent_tokens(tiny):
    """Tokens the tiny model often emits: used as EOS ids, so hypotheses finish early, at
    different steps and on different beams (its own EOS is almost never chosen)."""
    model, tok = tiny
    decoder = BeamSearchDecoder(model, tok, beams=2)
    outputs = decoder.generate_many(PROMPTS, GenerationConfig(max_new_tokens=30), batch_size=8)
    counts = collections.Counter(t for _, r in outputs for t in r.token_ids)
    return [t for t, _ in counts.most_common(8)]


@pytest.mark.parametrize("beams", [2, 3])
@pytest.mark.parametrize("eos_pick", [(2,), (3, 5), (0,), (6, 7)], ids=str)
def test_equals_transformers_generate(tiny, frequent_tokens, beams, eos_pick):
    """Batched (3 prompts' beams per batch), every completion equals model.generate's beam
    search, and its log-probabilities the replay's."""
    model, tok = tiny
    eos = [frequent_tokens[i] for i in eos_pick]
    config = GenerationConfig(max_new_tokens=30, eos_token_ids=eos)
    decoder = BeamSearchDecoder(model, tok, beams=beams)
    results = dict(decoder.generate_many(PROMPTS, config, batch_size=3 * beams))
    assert sorted(results) == list(range(len(PROMPTS)))
    reasons = set()
    for i, prompt in enumerate(PROMPTS):
        result = results[i]
        assert result.token_ids == _generate_reference(model, tok, prompt, beams, 30, eos)
        assert max_abs_diff(replay_logprobs_for(model, result), result.logprobs) <= FP32_TOL
        reasons.add(result.finish_reason)
        # The prompt once, then one row per running beam per step.
        assert len(result.token_ids) < result.counts.forward_passes <= 1 + beams * 30
    assert "eos" in reasons  # some hypotheses finished early


def test_batched_equals_alone_and_one_beam_is_greedy(tiny):
    model, tok = tiny
    config = GenerationConfig(max_new_tokens=16)
    decoder = BeamSearchDecoder(model, tok, beams=2)
    together = dict(decoder.generate_many(PROMPTS, config, batch_size=5))  # 2 searches, 1 spare
    for i, prompt in enumerate(PROMPTS):
        assert together[i].token_ids == decoder.generate(prompt, config).token_ids
    from backtrack.engine import Decoder

    greedy = BeamSearchDecoder(model, tok, beams=1).generate(PROMPTS[0], config)
    plain = Decoder(model, tok).generate(PROMPTS[0], None, config, temperature=0)
    assert greedy.token_ids == plain.token_ids


@pytest.mark.parametrize("span", [(0, 2), (3, 5), (6, 7)])
def test_stop_strings_as_transformers_and_cut(tiny, span):
    """A stop string ends a hypothesis as transformers' StopStringCriteria does (the same
    completion as model.generate with ``stop_strings``), and the text is cut before it."""
    model, tok = tiny
    decoder = BeamSearchDecoder(model, tok, beams=2)
    free = decoder.generate(PROMPTS[0], GenerationConfig(max_new_tokens=30))
    stop = tok.decode(free.token_ids[span[0] : span[1]])  # text the free search produces
    result = decoder.generate(PROMPTS[0], GenerationConfig(max_new_tokens=30, stop=[stop]))
    enc = tok(PROMPTS[0], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, num_beams=2, do_sample=False, early_stopping=True,
                             max_new_tokens=30, pad_token_id=0, stop_strings=[stop],
                             tokenizer=tok)  # fmt: skip
    reference = out[0, enc["input_ids"].shape[1] :].tolist()
    assert result.token_ids == reference[: len(result.token_ids)]
    assert set(reference[len(result.token_ids) :]) <= {0}  # padding after the end
    full = tok.decode(result.token_ids)
    if result.finish_reason == "stop_string":
        assert result.stop_string == stop and result.text == full[: full.find(stop)]
    else:  # a longer hypothesis scored better than the one that hit the stop string
        assert stop not in full and result.text == full


def test_a_wrong_fork_is_caught(tiny, monkeypatch):
    """If forking a beam copied nothing (the child kept whatever its row held), the replay
    check fails: the tolerance is far below what that does."""
    from backtrack.backends.transformers_backend import TransformersBatch

    model, tok = tiny
    monkeypatch.setattr(TransformersBatch, "copy_row", lambda self, source, slot: None)
    config = GenerationConfig(max_new_tokens=20)
    decoder = BeamSearchDecoder(model, tok, beams=2)
    worst = 0.0
    for _, result in decoder.generate_many(PROMPTS, config, batch_size=8):
        worst = max(worst, max_abs_diff(replay_logprobs_for(model, result), result.logprobs))
    assert worst > 100 * FP32_TOL


def test_refusals(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="beams"):
        BeamSearchDecoder(model, tok, beams=0)
    decoder = BeamSearchDecoder(model, tok, beams=2)
    with pytest.raises(ValueError, match="banned"):
        decoder.generate("x", GenerationConfig(banned_strings=["import os"]))

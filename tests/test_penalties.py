"""Penalties (presence, frequency, repetition, DRY, logit bias): their arithmetic against the
formulas, settings and flags, the batch, and exactness under rollback.

Exactness is checked as the engine's other rollback tests are (tests/test_engine.py): a
generation with random rollbacks records the distribution it drew each surviving token from,
and an incremental replay of its final tokens (the same backend calls, the same ``draw``)
must give the same distributions. On transformers that holds bit for bit (the replay's
logits are bitwise the engine's, see tests/test_engine.py); the llama.cpp twin is in
tests/test_llama_cpp_penalties.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import backend_replay_logits
from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.backends.base import as_backend
from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.penalties import Penalties, apply_penalties, dry_penalties
from backtrack.engine.sampling import Sampler, draw
from backtrack.operators import Chaos

PROMPT = "def fib(n):\n    "


def tiny_model():
    """The tiny model as ``generate --model tiny-random-qwen2 --dtype float32`` loads it."""
    from backtrack.models import load_model

    return load_model("tiny-random-qwen2", dtype="float32")


# ---------------------------------------------------------------------- the arithmetic
def _dense_reference(logits, prompt, output, p: Penalties) -> torch.Tensor:
    """The formulas, written out densely over the whole vocabulary (float32 throughout)."""
    x = logits.clone()
    for token, bias in p.bias:
        x[token] += bias
    for token in set(prompt) | set(output):  # vLLM: prompt and output count
        x[token] = x[token] / p.repetition if x[token] > 0 else x[token] * p.repetition
    for token in set(output):  # OpenAI: the completion only
        n = output.count(token)
        x[token] = x[token] - p.frequency * n
        x[token] = x[token] - p.presence * 1.0
    return x


@given(
    seed=st.integers(0, 1000),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
    repetition=st.floats(0.5, 2.0),
)
def test_penalties_follow_the_formulas(seed, presence, frequency, repetition):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 50, generator=g)
    prompt = torch.randint(0, 50, (8,), generator=g).tolist()
    output = torch.randint(0, 50, (12,), generator=g).tolist()
    p = Penalties(presence, frequency, repetition, bias=((3, 1.5), (7, -100.0)))
    got = apply_penalties(logits, [p], [(prompt, output)])[0]
    # The same float32 operations, but the vectorised path may fuse a multiply and a subtract
    # (one rounding instead of two): over 3,000 random cases on an AMD EPYC, 48 differed from
    # the scalar reference, by at most 9.5e-7 (one ulp at |x| ~ 8). Four ulps, relative, and
    # 1e-6 near zero.
    torch.testing.assert_close(
        got, _dense_reference(logits[0], prompt, output, p), rtol=4 * 2**-23, atol=1e-6
    )


def test_neutral_penalties_leave_the_logits_bit_for_bit():
    """Penalties on, every value neutral: the arithmetic runs and changes nothing."""
    logits = torch.randn(3, 64) * 5
    logits[1, 4] = -float("inf")
    neutral = Penalties(bias=((5, 0.0), (4, 0.0)), dry_multiplier=0.0)
    histories = [([1, 2, 4], [4, 5, 5, 9]), ([4], [4, 4]), ([], [])]
    assert torch.equal(apply_penalties(logits, [neutral] * 3, histories), logits)
    assert apply_penalties(logits, [None] * 3, histories) is logits


def test_rows_keep_their_own_settings_and_tokens():
    logits = torch.zeros(3, 10)
    p = Penalties(presence=1.0)
    out = apply_penalties(
        logits, [p, None, Penalties(frequency=0.5)], [([], [1]), None, ([], [2, 2])]
    )
    assert out[0, 1] == -1.0 and out[0].sum() == -1.0
    assert torch.equal(out[1], logits[1])
    assert out[2, 2] == -1.0 and out[2].sum() == -1.0


def _dry_brute(context, multiplier, base, allowed, breakers=frozenset()):
    """DRY by its definition, quadratically."""
    n, out = len(context), {}
    for i in range(n - 1):
        length = 0
        while (
            length <= i
            and context[i - length] == context[n - 1 - length]
            and context[i - length] not in breakers
        ):
            length += 1
        if length >= allowed:
            token = context[i + 1]
            out[token] = max(out.get(token, 0.0), multiplier * base ** (length - allowed))
    return out


@given(
    context=st.lists(st.integers(0, 4), min_size=0, max_size=40),
    allowed=st.integers(1, 4),
    breakers=st.frozensets(st.integers(0, 4), max_size=2),
)
def test_dry_matches_its_definition(context, allowed, breakers):
    assert dry_penalties(context, 0.8, 1.75, allowed, breakers) == pytest.approx(
        _dry_brute(context, 0.8, 1.75, allowed, breakers), rel=1e-12
    )


def test_dry_penalises_the_token_that_extends_a_repeat(tiny):
    model, tok = tiny
    config = GenerationConfig(dry_multiplier=1.0, dry_allowed_length=2, dry_sequence_breakers=())
    sampler = Sampler(config, history=([1, 2, 3, 9, 1, 2], [3]), tokenizer=tok)
    logits = torch.zeros(1, len(tok))
    shaped = apply_penalties(logits, [sampler.penalties], [sampler.history])
    assert shaped[0, 9] == -1.0 * 1.75 ** (3 - 2) and (shaped[0] != 0).sum() == 1


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(presence_penalty=2.5), "presence_penalty must be in [-2, 2]"),
        (dict(frequency_penalty=-3), "frequency_penalty must be in [-2, 2]"),
        (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
        (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number"),
        (dict(dry_multiplier=-1), "dry_multiplier must be >= 0"),
        (dict(dry_base=1.0), "dry_base must be > 1"),
        (dict(dry_allowed_length=0), "dry_allowed_length must be >= 1"),
        (dict(dry_sequence_breakers=[""]), "dry_sequence_breakers must be non-empty"),
        (dict(logit_bias={"x": 1}), "logit_bias keys must be token ids"),
        (dict(logit_bias={5: 101}), "logit_bias[5] must be in [-100, 100]"),
        (dict(logit_bias={-1: 1}), "logit_bias token ids must be >= 0"),
    ],
)
def test_bad_penalties_are_one_line_errors(kwargs, words):
    with pytest.raises(ValueError) as info:
        GenerationConfig(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_penalties_round_trip_the_flat_form_through_json():
    config = GenerationConfig(
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        repetition_penalty=1.2,
        dry_multiplier=0.8,
        dry_base=2.0,
        dry_allowed_length=3,
        dry_sequence_breakers=["\n", "##"],
        logit_bias={5: -1.5, "7": 2},
    )
    flat = json.loads(json.dumps(config.to_flat()))
    again = GenerationConfig.from_flat(flat)
    assert again == config and hash(again) == hash(config)
    assert again.logit_bias == {5: -1.5, 7: 2.0}
    assert config.differences(flat) == {}
    default = GenerationConfig()
    assert default.dry_sequence_breakers == ("\n", ":", '"', "*") and default.logit_bias == {}
    assert GenerationConfig.from_flat(default.to_flat()) == default


def test_vocabulary_is_checked_for_logit_bias(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Decoder(model, tok).session(PROMPT, None, GenerationConfig(logit_bias={len(tok): 1}))


# ---------------------------------------------------------------------- in generations
@torch.inference_mode()
def replay_probs(model, tok, result, config: GenerationConfig) -> list[torch.Tensor]:
    """The distribution of each final token from an incremental replay without rollbacks:
    the backend's forward passes as the engine made them, then the same ``draw``."""
    backend = as_backend(model)
    prompt, tokens = result.prompt_token_ids, result.token_ids
    probs = []
    for i, logits in backend_replay_logits(backend, result):
        sampler = Sampler(
            config,
            torch.Generator(device=backend.device).manual_seed(0),
            match_generate=backend.matches_generate,
            history=(prompt, tokens[:i]),
            tokenizer=tok,
        )
        probs.append(draw(logits, [sampler], [()]).probs[0].clone())
    return probs


penalty_settings = st.fixed_dictionaries(
    {
        "presence_penalty": st.sampled_from([0.0, 0.5, 2.0, -1.0]),
        "frequency_penalty": st.sampled_from([0.0, 0.3, 1.5]),
        "repetition_penalty": st.sampled_from([1.0, 1.3, 0.8]),
        "dry_multiplier": st.sampled_from([0.0, 0.8, 3.0]),
        "dry_allowed_length": st.integers(1, 3),
        "logit_bias": st.sampled_from([{}, {17: 2.0, 40: -5.0}]),
    }
)


def chaos_generation(model, tok, settings: dict, seed: int, p: float, kmax: int, **config):
    """Decode under random rollbacks; also return the distribution each position's last
    token (the surviving one) was drawn from."""
    config = GenerationConfig(max_new_tokens=24, seed=seed, ban="none", **settings, **config)
    session = Decoder(model, tok).session(PROMPT, Chaos(p=p, max=kmax, seed=seed), config)
    session.prefill()
    drawn: dict[int, torch.Tensor] = {}
    done = False
    while not done:  # DecodingSession.step, recording every draw
        step = session.sample()
        drawn[step.position] = step.probs.clone()
        done = session.conclude(session.decide(step))
    result = session.result()
    return result, [drawn[i] for i in range(len(result.token_ids))], config


@given(
    settings=penalty_settings,
    seed=st.integers(0, 10_000),
    p=st.floats(0.1, 0.8),
    kmax=st.integers(1, 12),
    temperature=st.sampled_from([0.0, 0.8]),
    top_k=st.sampled_from([None, 20]),
)
@settings(max_examples=25)  # ~1.5 s each on the tiny model; the schedules vary widely
def test_penalised_distributions_after_rollbacks_equal_the_replay(
    tiny, settings, seed, p, kmax, temperature, top_k
):
    """Penalties are a function of the surviving tokens only: after random rollbacks, each
    final token was drawn from exactly the distribution a replay without rollbacks gives."""
    model, tok = tiny
    result, drawn, config = chaos_generation(
        model, tok, settings, seed, p, kmax, temperature=temperature, top_k=top_k
    )
    replay = replay_probs(model, tok, result, config)
    for i, probs in enumerate(drawn):
        assert torch.equal(probs, replay[i]), f"position {i}"


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_penalties_on_with_neutral_values_equal_penalties_off_bit_for_bit(tiny, temperature):
    model, tok = tiny
    neutral = dict(
        presence_penalty=0.0,
        frequency_penalty=0.0,
        repetition_penalty=1.0,
        logit_bias={3: 0.0},  # on: the row goes through the arithmetic
    )
    for seed in range(3):
        on, _, config = chaos_generation(model, tok, neutral, seed, 0.4, 6, temperature=temperature)
        off, _, _ = chaos_generation(model, tok, {}, seed, 0.4, 6, temperature=temperature)
        assert Sampler(config, tokenizer=tok).penalties is not None
        assert on.token_ids == off.token_ids and on.logprobs == off.logprobs
        assert on.trace == off.trace and on.counts.backtracks > 0


def test_penalties_change_what_is_drawn(tiny):
    model, tok = tiny
    decoder = Decoder(model, tok)
    base = dict(max_new_tokens=30, temperature=0)
    plain = decoder.generate(PROMPT, None, GenerationConfig(**base))
    forced = decoder.generate(PROMPT, None, GenerationConfig(**base, logit_bias={42: 100}))
    assert forced.token_ids == [42] * 30 and plain.token_ids != forced.token_ids
    # A frequency penalty of 2 per use against a +100 bias: still 42 (100 - 2 * 29 > others).
    assert (
        decoder.generate(
            PROMPT, None, GenerationConfig(**base, logit_bias={42: 100}, frequency_penalty=2)
        ).token_ids
        == [42] * 30
    )
    # Repetition 1.5 on a +100 logit: divided, 42 still wins; presence -2 rewards repeats.
    distinct = decoder.generate(PROMPT, None, GenerationConfig(**base, presence_penalty=2.0))
    assert len(set(distinct.token_ids)) >= len(set(plain.token_ids))


def test_batch_rows_with_and_without_penalties(tiny):
    """A batch mixing settings: each row equals that request decoded alone."""
    model, tok = tiny
    configs = [
        GenerationConfig(max_new_tokens=20, temperature=0.8, seed=i, **settings)
        for i, settings in enumerate(
            [{}, dict(presence_penalty=1.0, repetition_penalty=1.3), dict(dry_multiplier=2.0)]
        )
    ]
    prompts = [PROMPT, "import math\n", PROMPT]
    pairs = list(zip(prompts, configs, strict=True))
    requests = [(p, Chaos(p=0.3, max=3, seed=i), c) for i, (p, c) in enumerate(pairs)]
    batch = BatchDecoder(model, tok).generate_all(requests, batch_size=3)
    for i, (p, c) in enumerate(pairs):
        alone = Decoder(model, tok).generate(p, Chaos(p=0.3, max=3, seed=i), c)
        assert batch[i].token_ids == alone.token_ids


# ---------------------------------------------------------------------- the command line
def test_generate_penalty_flags_reach_the_engine(tmp_path):
    from typer.testing import CliRunner

    from backtrack.cli import app

    out = tmp_path / "result.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator", "never",
            "--temperature", "0", "--max-new-tokens", "16", "--dtype", "float32",
            "--presence-penalty", "0.5", "--frequency-penalty", "0.25",
            "--repetition-penalty", "1.3", "--dry-multiplier", "0.8", "--dry-base", "2",
            "--dry-allowed-length", "1", "--dry-sequence-breaker", "\n",
            "--logit-bias", "42=4", "--logit-bias", "17=-100", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model, tok = tiny_model()
    config = GenerationConfig(
        max_new_tokens=16,
        temperature=0,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        repetition_penalty=1.3,
        dry_multiplier=0.8,
        dry_base=2.0,
        dry_allowed_length=1,
        dry_sequence_breakers=["\n"],
        logit_bias={42: 4.0, 17: -100.0},
    )
    reference = Decoder(model, tok).generate(PROMPT, None, config)
    assert json.loads(out.read_text())["token_ids"] == reference.token_ids


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--logit-bias", "42"], "--logit-bias takes TOKEN_ID=BIAS"),
        (["--logit-bias", "a=1"], "logit_bias keys must be token ids"),
        (["--presence-penalty", "9"], "presence_penalty must be in [-2, 2]"),
    ],
)
def test_bad_penalty_flags_are_one_line_errors(flags, words):
    from typer.testing import CliRunner

    from backtrack.cli import app

    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, *flags]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and words in result.output


def test_penalties_docstring_examples_pass():
    import doctest

    import backtrack.engine.penalties as module

    result = doctest.testmod(module, verbose=False)
    assert result.failed == 0 and result.attempted >= 2

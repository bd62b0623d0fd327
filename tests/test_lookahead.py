"""The lookahead operator: its choices, its exactness, the forcing channel, batch and budget.

Reference and tolerances: a choice is checked against an independent greedy lookahead computed
by incremental replay through the backend's own interface (as ``backend_replay_logits`` in
``tests/helpers.py``: the prompt in one pass, then one token per pass, as the engine feeds
them; after a rollback to position 0 the last prompt token is re-fed alone, as the engine
did). Measured on tiny-random-qwen2 (float32, 2-core Xeon) over 167 choices: at most 1e-7
(the order of the mean's sum) except at position 0 of a run that rolled back to it, up to
4.5e-6: the engine scored the drawn candidate on the prefill's logits, before the first
rollback made it re-feed the last prompt token, which the replay does for every candidate.
SCORE_TOL = 5e-5 is 11x that; a winner is asserted only when it leads the replayed runner-up
by more than 10 * SCORE_TOL (the smallest lead measured was 7.4e-3).
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_replay_logprobs, max_abs_diff

from backtrack.backends.base import as_backend
from backtrack.engine import Budget, Decoder, GenerationConfig, RollbackEvent
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.forcing import bans_at
from backtrack.engine.positions import Rejections
from backtrack.engine.prompt import eos_ids_for
from backtrack.engine.sampling import Greedy, Only, Sampler, build_warpers, draw
from backtrack.operators.lookahead import Lookahead
from backtrack.operators.spec import OperatorSpecError, parse_operator

SCORE_TOL = 5e-5  # see the module docstring
PROMPTS = ["def add(a, b):", "import math\n", "class Stack:\n    def push(self, item):\n", "x"]
# Room for every exploration: the default budget (max_new_tokens discarded) would stop them
# after a few on a random model, whose entropy is high nearly everywhere.
ROOMY = Budget(max_discarded_tokens=2000, max_forward_passes=4000)


def _greedy(max_new_tokens: int = 20, **fields) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=0, budget=ROOMY, **fields)


def _run(model, tok, prompt, op, config):
    session = Decoder(model, tok).session(prompt, op, config)
    for _ in session.run():
        pass
    return session, session.result()


@torch.inference_mode()
def _replayed_choice(backend, prompt_ids, prefix, candidate, length, eos, max_new, refeed):
    """The mean raw log-probability of ``candidate`` at ``len(prefix)`` followed by its greedy
    continuation, ``length`` tokens in all (fewer at EOS or the length limit): a fresh cache,
    the prompt in one pass, then one token per pass."""
    cache = backend.new_cache()
    logits = backend.forward(cache, prompt_ids)
    if refeed:
        cache.crop(-1)
        logits = backend.forward(cache, prompt_ids[-1:])
    for token in prefix:
        logits = backend.forward(cache, [token])
    logprobs, token, position = [], candidate, len(prefix)
    while True:
        row = logits[0].float()
        logprobs.append(float(row[token] - torch.logsumexp(row, dim=-1)))
        position += 1
        if len(logprobs) == length or token in eos or position >= max_new:
            return sum(logprobs) / len(logprobs), row
        logits = backend.forward(cache, [token])
        token = int(logits[0].argmax())


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(("m", "length"), [(2, 4), (3, 3), (4, 1)])
@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_each_kept_token_is_the_candidate_with_the_best_replayed_lookahead(
    tiny, prompt, m, length, temperature
):
    """Sampled or greedy decoding, the lookaheads are greedy (the default), so each choice
    has one right answer, which an independent replay computes."""
    model, tok = tiny
    backend = as_backend(model)
    op = Lookahead(threshold=1.0, m=m, length=length)
    config = GenerationConfig(max_new_tokens=20, temperature=temperature, seed=5, budget=ROOMY)
    _, result = _run(model, tok, prompt, op, config)
    assert op.explored, "the random model is uncertain nearly everywhere: it must explore"
    eos = eos_ids_for(model, tok, config)
    positions = [c.position for c in op.explored]
    assert positions == sorted(set(positions)), "a settled position was explored again"
    emptied = any(isinstance(e, RollbackEvent) and e.position == 0 for e in result.trace)
    checked = 0
    for choice in op.explored:
        p = choice.position
        assert result.token_ids[p] == choice.chosen
        prefix = result.token_ids[:p]
        replayed = []
        for candidate in choice.candidates:
            score, _ = _replayed_choice(
                backend,
                result.prompt_token_ids,
                prefix,
                candidate,
                length,
                eos,
                config.max_new_tokens,
                emptied,
            )
            replayed.append(score)
        assert max_abs_diff(list(choice.scores), replayed) <= SCORE_TOL
        # The candidates are the top m of the distribution sampled from at p (greedy: the
        # raw softmax; else after temperature and top-k), uncertain enough to explore.
        _, row = _replayed_choice(
            backend, result.prompt_token_ids, prefix, choice.chosen, 1, eos, 10**9, emptied
        )
        warped = build_warpers(config)(torch.zeros((1, 0), dtype=torch.long), row[None])
        probs = torch.softmax(warped[0], dim=-1)
        assert list(choice.candidates) == torch.topk(probs, m).indices.tolist()
        assert float(-torch.special.xlogy(probs, probs).sum()) > op.threshold - SCORE_TOL
        ranked = sorted(replayed, reverse=True)
        if ranked[0] - ranked[1] > 10 * SCORE_TOL:
            assert choice.chosen == choice.candidates[replayed.index(ranked[0])]
            checked += 1
    assert checked, "no choice had a clear winner to check"


@pytest.mark.parametrize(("temperature", "greedy"), [(0.0, True), (0.5, True), (0.5, False)])
def test_rollbacks_stay_exact_and_every_lookahead_token_is_counted(tiny, temperature, greedy):
    """After a run full of explorations, the recorded log-probabilities and the KV cache are
    those of a replay of the final tokens, and the explorations' tokens count as sampled,
    discarded tokens and forward passes."""
    model, tok = tiny
    backend = as_backend(model)
    config = GenerationConfig(max_new_tokens=30, temperature=temperature, seed=3, budget=ROOMY)
    plain = Decoder(model, tok).generate(PROMPTS[2], None, _greedy(30, seed=3))
    session, result = _run(model, tok, PROMPTS[2], Lookahead(0.5, 3, 3, greedy), config)
    rollbacks = [e for e in result.trace if isinstance(e, RollbackEvent)]
    assert len(rollbacks) >= 3
    # The single engine equals its incremental replay bit for bit (tests/helpers.py).
    assert max_abs_diff(backend_replay_logprobs(backend, result), result.logprobs) == 0.0
    assert session.cache_length() == len(result.prompt_token_ids) + len(result.token_ids) - 1
    # The cache's every position: the next distribution from it equals a fresh replay's.
    replay = backend.new_cache()
    backend.forward(replay, result.prompt_token_ids + result.token_ids[:-1])
    nxt = result.token_ids[-1:]
    assert torch.allclose(
        backend.forward(session.cache, nxt), backend.forward(replay, nxt), atol=1e-4, rtol=0
    )
    c = result.counts
    assert c.tokens_discarded == sum(e.k for e in rollbacks) > 0
    assert c.tokens_sampled == len(result.token_ids) + c.tokens_discarded
    assert c.forward_passes == c.tokens_sampled  # the prefill gives the first token's
    if temperature == 0:
        assert c.forward_passes == plain.counts.forward_passes + c.tokens_discarded


def test_works_under_the_default_settings(tiny):
    """temperature 0.5, top-k 50, ban "accumulate", at most 3 retries per position: with
    m=4 the explored position runs out of retries before the last candidate, which must not
    stop the exploration (the operator needs no consultation at the anchor), and the forced
    candidates override the bans each exploration's rollback leaves there."""
    model, tok = tiny
    op = Lookahead(threshold=1.0, m=4, length=2)
    config = GenerationConfig(max_new_tokens=40, seed=0)
    _, result = _run(model, tok, PROMPTS[0], op, config)
    assert op.explored
    for choice in op.explored:
        assert result.token_ids[choice.position] == choice.chosen
        assert len(choice.candidates) == 4
        assert choice.chosen == choice.candidates[choice.scores.index(max(choice.scores))]
    # The default budget (max_new_tokens discarded) bounds the explorations.
    assert result.counts.tokens_discarded <= config.max_new_tokens


def test_batch_rows_equal_single_sessions_and_others_are_unaffected(tiny):
    model, tok = tiny
    decoder = Decoder(model, tok)
    requests = [
        (prompt, Lookahead(threshold=1.0, m=3, length=3) if i % 2 == 0 else None, _greedy(16))
        for i, prompt in enumerate(PROMPTS)
    ]
    singles = [
        decoder.generate(prompt, Lookahead(threshold=1.0, m=3, length=3) if op else None, config)
        for prompt, op, config in requests
    ]
    batched = BatchDecoder(model, tok).generate_all(requests, batch_size=4)
    for single, row, (_, op, _) in zip(singles, batched, requests, strict=True):
        assert row.token_ids == single.token_ids
        assert row.counts.tokens_discarded == single.counts.tokens_discarded
        if op is not None:
            assert op.explored and row.counts.tokens_discarded > 0
        else:
            assert row.counts.tokens_discarded == 0


def test_llama_cpp_batch_equals_single_session():
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    from backtrack.models import SMOLLM2_MODEL, ModelLoadError, load_model

    try:
        model, tok = load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, progress=False)
    except ModelLoadError as exc:
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")
    prompts = ["def fib(n):\n    ", "import math\n"]
    config = _greedy(10)
    singles = [
        Decoder(model, tok).generate(p, Lookahead(threshold=0.5, m=2, length=3), config)
        for p in prompts
    ]
    assert any(s.counts.tokens_discarded for s in singles)
    requests = [(p, Lookahead(threshold=0.5, m=2, length=3), config) for p in prompts]
    batched = BatchDecoder(model, tok).generate_all(requests, batch_size=2)
    for single, row in zip(singles, batched, strict=True):
        assert row.token_ids == single.token_ids


def test_forcing_draws_the_token_on_every_sampling_path(tiny):
    model, _ = tiny
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(0))
    weakest = int(logits[0].argmin())  # outside any top-k
    for support_only in (False, True):
        config = GenerationConfig(temperature=0.7, top_k=20)
        samplers = [Sampler(config, torch.Generator().manual_seed(1), not support_only)] * 2
        draws = draw(logits, samplers, [Only(weakest), ()])
        assert int(draws.tokens[0]) == weakest and float(draws.probs[0, weakest]) == 1.0
        assert float(draws.entropy[0]) == 0.0 and int(draws.tokens[1]) != weakest
    greedy = [Sampler(GenerationConfig(temperature=0))]
    assert int(draw(logits[:1], greedy, [Only(weakest)]).tokens[0]) == weakest


def test_a_greedy_request_takes_the_best_unbanned_token_without_using_the_stream():
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(0))
    best, second = torch.topk(logits[0], 2).indices.tolist()
    for support_only in (False, True):
        config = GenerationConfig(temperature=1.5, top_k=40)
        generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
        samplers = [Sampler(config, g, not support_only) for g in generators]
        before = generators[0].get_state()
        draws = draw(logits, samplers, [Greedy(frozenset({best})), ()])
        assert int(draws.tokens[0]) == second
        assert torch.equal(generators[0].get_state(), before)
        assert not torch.equal(
            generators[1].get_state(), torch.Generator().manual_seed(2).get_state()
        )


def test_forcing_overrides_rejections_but_not_banned_strings():
    class Forcing:
        def forced_token(self, generated):
            return 7 if len(generated) == 2 else None

    rejections = Rejections("accumulate")
    rejections.resumed(2, 7)
    assert bans_at(Forcing(), [1, 2], rejections) == Only(7)
    assert bans_at(Forcing(), [1], rejections) == ()
    assert bans_at(None, [1, 2], rejections) == {7}
    rejections.resumed(2, 7, kind="hard")
    assert bans_at(Forcing(), [1, 2], rejections) == {7}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lookahead:m=1", "m (candidates) must be an integer >= 2, got 1"),
        ("lookahead:length=0", "length (lookahead tokens) must be an integer >= 1, got 0"),
        ("lookahead:threshold=-1", "threshold must be a number of nats >= 0, got -1"),
        ("lookahead:threshold=nan", "threshold must be a number of nats >= 0"),
        ("lookahead:m=2.5", "m (candidates) must be an integer >= 2, got 2.5"),
    ],
)
def test_bad_parameters_are_one_line_errors(spec, message):
    with pytest.raises(OperatorSpecError) as info:
        parse_operator(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_spec_string_and_refused_settings(tiny):
    model, tok = tiny
    op = parse_operator("lookahead:threshold=1.2,m=3,length=6")
    assert (op.threshold, op.m, op.length) == (1.2, 3, 6)
    with pytest.raises(ValueError, match="needs period=1"):
        Decoder(model, tok).session("x", op, GenerationConfig(period=2))
    with pytest.raises(ValueError, match=r"rollback_window >= length \(6\)"):
        Decoder(model, tok).session("x", op, GenerationConfig(rollback_window=3))
    with pytest.raises(OperatorSpecError, match="lookahead cannot be combined with other"):
        parse_operator("repetition+lookahead")
    with pytest.raises(RuntimeError, match="must be the session's own operator"):
        Lookahead(threshold=0)(_any_step())


def test_search_space_recipes_run_alone_at_period_one():
    optuna = pytest.importorskip("optuna")
    from backtrack.tuning.space import recipe_params, suggest_recipe

    name = "lookahead:threshold=1.2,m=3,length=6@temperature=0,ban=next"
    recipe = suggest_recipe(optuna.trial.FixedTrial(recipe_params(name)))
    assert recipe.name == "lookahead:threshold=1.2,m=3,length=6@temperature=0,period=1,ban=next"
    assert isinstance(parse_operator(recipe.spec), Lookahead)
    with pytest.raises(ValueError, match="period=1 only"):
        recipe_params("lookahead:threshold=1.2,m=3,length=6@temperature=0,period=2")
    with pytest.raises(ValueError, match="never combined"):
        recipe_params(
            "repetition:max_repetitions=3+lookahead:threshold=1,m=2,length=2@temperature=0"
        )


@pytest.mark.parametrize("banned", ["e", "a"])
def test_banned_strings_cutting_into_explorations_stay_exact(tiny, banned):
    """A banned string's rollback during an exploration abandons it (the forced candidate is
    never forced over the ban): the completion holds no banned text, and stays exact."""

    class Counting(Lookahead):
        abandoned = 0

        def _continue(self, x, step, session):
            k = super()._continue(x, step, session)
            self.abandoned += k is None and x.best is None
            return k

    model, tok = tiny
    backend = as_backend(model)
    op = Counting(threshold=0.5, m=3, length=4)
    config = _greedy(30, banned_strings=[banned])
    _, result = _run(model, tok, PROMPTS[0], op, config)
    assert result.counts.ban_rollbacks > 0 and op.explored and op.abandoned > 0
    assert banned not in result.text
    assert max_abs_diff(backend_replay_logprobs(backend, result), result.logprobs) == 0.0


def test_the_server_streams_the_engines_lookahead_completion():
    """Through the server (a batch row, streaming only text no rollback can reach): the text
    of the single-sequence engine, with its explorations."""
    pytest.importorskip("uvicorn")
    from test_serve import PROMPT, LiveServer

    from backtrack.models.tiny import TINY_MODEL_NAME
    from backtrack.serving import ServeSettings

    spec = "lookahead:threshold=1.0,m=3,length=3"
    settings = ServeSettings([TINY_MODEL_NAME], max_batch=2, max_tokens_limit=64)
    with LiveServer(settings) as live:
        stream = live.client().completions.create(
            model=TINY_MODEL_NAME,
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            stream=True,
            extra_body={"backtrack": {"operator": spec}},
        )
        chunks = [c for c in stream if c.choices]
        expected = Decoder(live.model, live.tokenizer).generate(
            PROMPT,
            parse_operator(spec),
            GenerationConfig(max_new_tokens=24, temperature=0, rollback_window=32),
        )
    assert expected.counts.backtracks > 0
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    assert chunks[-1].choices[0].backtrack["rollbacks"] == expected.counts.backtracks


def _any_step():
    from backtrack.engine import Step

    probs = torch.tensor([0.5, 0.5])
    return Step(0, 0, "x", 0.5, -0.7, 0.0, 0, 0.69, 0.5, 0.5, torch.zeros(2), probs, [0])

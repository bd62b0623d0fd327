"""Soft and hard phrase bans in the engine, on the tiny model: every draw's distribution equals
an incremental replay's with the bans' weights applied, the rule's marginal is what its
definition says, reusing logits changes nothing but the forward passes, whole words hold to
the very end, and streams never show text a ban later removes."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.banned import fold, is_word_char
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.results import RollbackEvent, TokenEvent
from backtrack.engine.reuse import CAPACITY, LogitMemory

PROMPT = "def fib(n: int) -> int:\n"


def _soft_list(tmp_path, phrases: dict[str, float], name: str = "soft") -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([[p, f] for p, f in phrases.items()]))
    return str(path)


def _words(text: str) -> list[str]:
    words, word = [], ""
    for char in text + " ":
        if is_word_char(char):
            word += char
        elif word:
            words.append(word)
            word = ""
    return words


class Replay:
    """The raw logits at the end of any prefix, by an incremental replay (prefill the prompt,
    then feed one token at a time), cached by prefix."""

    def __init__(self, decoder: Decoder, prompt_ids: list[int]) -> None:
        self.backend = decoder.session(PROMPT).backend
        self.prompt_ids = prompt_ids

    @functools.cache  # noqa: B019 (one replay per test)
    def logits(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if not prefix:
            cache = self.backend.new_cache()
            return self.backend.forward(cache, self.prompt_ids)[0]
        # Feed the prefix one token at a time on a fresh cache, as the engine did.
        cache = self.backend.new_cache()
        logits = self.backend.forward(cache, self.prompt_ids)
        for token in prefix:
            logits = self.backend.forward(cache, [token])
        return logits[0]


def expected_probabilities(result, replay: Replay, config: GenerationConfig):
    """``(event prob, expected prob)`` for every token drawn in ``result``'s trace: the replay's
    logits at that prefix, hard-banned tokens masked, warped as configured, each soft-banned
    token's probability multiplied by its weight, renormalised."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_k:
        warpers.append(TopKLogitsWarper(config.top_k))
    completion: list[int] = []
    banned: dict[int, set[int]] = {}
    weights: dict[int, dict[int, float]] = {}
    pairs = []
    for event in result.trace:
        if isinstance(event, TokenEvent):
            p = event.position
            logits = replay.logits(tuple(completion)).clone()
            for token in banned.get(p, ()):
                logits[token] = -math.inf
            scores = warpers(None, logits[None])[0]
            for token, weight in weights.get(p, {}).items():
                scores[token] += math.log(weight)
            probs = torch.softmax(scores, dim=-1)
            pairs.append((event.prob, float(probs[event.token_id])))
            completion.append(event.token_id)
        else:
            keep, first = event.position, event.removed_token_ids[0]
            del completion[keep:]
            for table in (banned, weights):
                for p in [p for p in table if p > keep]:
                    del table[p]
            if event.ban_weight:  # soft: down-weighted there, not banned
                at = weights.setdefault(keep, {})
                at[first] = at.get(first, 1.0) * event.ban_weight
            else:  # hard (and the dead-end rewind): banned there
                banned.setdefault(keep, set()).add(first)
    return pairs


@settings(max_examples=12)
@given(
    seed=st.integers(0, 10_000),
    factors=st.lists(st.sampled_from([0.0, 0.1, 0.5, 0.9]), min_size=6, max_size=6),
    whole_words=st.booleans(),
    ignore_case=st.booleans(),
)
def test_every_draw_is_the_replays_distribution_times_the_bans_weights(
    tiny, tmp_path_factory, seed, factors, whole_words, ignore_case
):
    decoder = Decoder(*tiny)
    sampling = dict(max_new_tokens=30, temperature=0.8, top_k=20, seed=seed)
    plain = decoder.generate(PROMPT, config=GenerationConfig(**sampling))
    words = sorted(set(_words(plain.text)))[:6] or ["e"]
    path = _soft_list(tmp_path_factory.mktemp("l"), dict(zip(words, factors, strict=False)))
    config = GenerationConfig(
        **sampling, ban_files=[path], ban_whole_words=whole_words, banned_ignore_case=ignore_case
    )
    result = decoder.generate(PROMPT, config=config)
    replay = Replay(decoder, result.prompt_token_ids)
    pairs = expected_probabilities(result, replay, config)
    # The engine's logits and an incremental replay's agree to 8e-6 (fp32, tests/helpers.py);
    # through a softmax at T=0.8 that moves a probability by about 1e-5: 1e-4 leaves room.
    assert max(abs(got - want) for got, want in pairs) < 1e-4
    # And the hard phrases (factor 0) are gone from the result.
    text = fold(result.text) if ignore_case else result.text
    for word, factor in zip(words, factors, strict=False):
        word = fold(word) if ignore_case else word
        if factor == 0.0 and not whole_words:
            assert word not in text


def _marginal(q: dict[int, float], soft: set[int], weight: float, target: int) -> float:
    """P(the draw ends on ``target``) under the soft-ban rule: draw from q * w; a token of
    ``soft`` not yet down-weighted is rolled back, its weight multiplied by ``weight``, and
    drawn again; a token already down-weighted (its phrase paid for) stands."""

    @functools.cache
    def ends_on(weighted: frozenset[int]) -> float:
        w = {t: weight if t in weighted else 1.0 for t in q}
        z = sum(q[t] * w[t] for t in q)
        total = 0.0
        for t, p in q.items():
            p = p * w[t] / z
            if t in soft and t not in weighted:
                total += p * ends_on(weighted | {t})
            elif t == target:
                total += p
        return total

    return ends_on(frozenset())


def test_the_soft_rules_marginal_is_its_definitions(tiny, tmp_path):
    """400 one-token completions: the share that ends on the soft-banned token matches the
    rule's exact marginal (computed from the model's distribution) within 4.5 sigma."""
    model, tokenizer = tiny
    decoder = Decoder(model, tokenizer)
    # Pick a temperature at which the likeliest token is neither rare nor sure.
    logits, bias, clean = _clean_distribution(decoder)
    for temperature in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5):
        probs = torch.softmax(logits / temperature, dim=-1)
        target = int(probs.argmax())
        if clean(target) and 0.25 < float(probs[target]) < 0.85:
            break
    q = {int(t): float(p) for t, p in enumerate(probs) if p > 1e-9}
    phrase = tokenizer.decode([target])
    assert clean(target) and 0.25 < q[target] < 0.85, (phrase, q[target])
    soft = {t for t in q if phrase in tokenizer.decode([t])}
    weight = 0.3
    path = _soft_list(tmp_path, {phrase: weight})
    expected = _marginal(q, soft, weight, target)
    n = 400
    hits = sum(
        decoder.generate(
            PROMPT,
            config=GenerationConfig(
                max_new_tokens=1,
                temperature=temperature,
                top_k=None,
                seed=seed,
                ban_files=[path],
                logit_bias=bias,
            ),
        ).token_ids
        == [target]
        for seed in range(n)
    )
    sigma = math.sqrt(expected * (1 - expected) / n)
    assert abs(hits / n - expected) < 4.5 * sigma + 1 / n, (hits / n, expected)
    # Plain down-weighting (q * w renormalised) would give another number: the rule is not it.
    naive = q[target] * weight / (q[target] * weight + 1 - q[target])
    assert abs(expected - naive) > 0.05


def _clean_distribution(decoder: Decoder):
    """The raw logits at the first position with the random model's broken-byte favourites
    biased away (``logit_bias``, which acts before everything else), and that bias."""
    tokenizer = decoder.tokenizer
    session = decoder.session(PROMPT)
    session.prefill()
    logits = session._next_logits[0].clone()

    def clean(t: int) -> bool:
        text = tokenizer.decode([t])
        return bool(text.strip()) and text.isprintable() and "\ufffd" not in text

    bias = {int(t): -100.0 for t in torch.topk(logits, 20).indices if not clean(int(t))}
    for t, b in bias.items():
        logits[t] += b
    return logits, bias, clean


def test_greedy_keeps_a_soft_banned_token_only_if_still_the_most_likely(tiny, tmp_path):
    decoder = Decoder(*tiny)
    logits, bias, clean = _clean_distribution(decoder)
    top2 = torch.topk(torch.softmax(logits, dim=-1), 2)
    (p1, p2), (t1, _) = top2.values.tolist(), top2.indices.tolist()
    assert clean(t1)
    phrase = decoder.tokenizer.decode([t1])
    tried = 0
    for weight in (0.9 * p2 / p1, (p2 / p1 + 1) / 2):  # under and over the tie
        if not 0 < weight < 1:
            continue
        config = GenerationConfig(
            max_new_tokens=1,
            temperature=0,
            logit_bias=bias,
            ban_files=[_soft_list(tmp_path, {phrase: weight})],
        )
        result = decoder.generate(PROMPT, config=config)
        # p1 * w against p2: the argmax of the down-weighted probabilities.
        assert (result.token_ids[0] == t1) == (p1 * weight > p2)
        assert result.counts.soft_ban_rollbacks == 1
        tried += 1
    assert tried == 2


@settings(max_examples=8)
@given(seed=st.integers(0, 10_000), hard=st.booleans())
def test_reusing_logits_changes_nothing_but_the_forward_passes(tiny, tmp_path_factory, seed, hard):
    decoder = Decoder(*tiny)
    sampling = dict(max_new_tokens=40, temperature=1.0, seed=seed)
    plain = decoder.generate(PROMPT, config=GenerationConfig(**sampling))
    words = sorted(set(_words(plain.text)))[:8] or ["e"]
    path = _soft_list(tmp_path_factory.mktemp("l"), dict.fromkeys(words, 0.4))
    config = GenerationConfig(**sampling, ban_files=[path], ban_hard=hard)
    reused, recomputed = (_decode(decoder, config, capacity) for capacity in (CAPACITY, 0))
    assert reused.token_ids == recomputed.token_ids
    assert [type(e) for e in reused.trace] == [type(e) for e in recomputed.trace]
    # Without reuse every ban's rollback re-feeds the last token kept; with it, none does.
    rollbacks = reused.counts.ban_rollbacks
    assert recomputed.counts.forward_passes - reused.counts.forward_passes >= rollbacks


def _decode(decoder: Decoder, config: GenerationConfig, capacity: int):
    session = decoder.session(PROMPT, None, config)
    session.memory = LogitMemory(capacity)
    for _ in session.run():
        pass
    return session.result()


def test_batch_rows_reuse_like_the_single_engine(tiny, tmp_path):
    model, tokenizer = tiny
    decoder = Decoder(model, tokenizer)
    plain = decoder.generate(PROMPT, config=GenerationConfig(max_new_tokens=40, temperature=0))
    words = sorted(set(_words(plain.text)))[:8]
    path = _soft_list(tmp_path, dict.fromkeys(words, 0.3))
    config = GenerationConfig(max_new_tokens=40, temperature=0, ban_files=[path])
    single = decoder.generate(PROMPT, config=config)
    assert single.counts.soft_ban_rollbacks >= 1
    batch = BatchDecoder(model, tokenizer).generate_all(
        [(PROMPT, None, config), (PROMPT + "    ", None, config), (PROMPT, None, config)],
        batch_size=3,
    )
    # Greedy batched decoding is token-identical to the single engine (see engine.batch).
    assert batch[0].token_ids == single.token_ids == batch[2].token_ids


@pytest.mark.parametrize("hard", [True, False])
def test_a_whole_word_at_the_very_end_is_caught_before_decoding_finishes(tiny, tmp_path, hard):
    decoder = Decoder(*tiny)
    plain = decoder.generate(PROMPT, config=GenerationConfig(max_new_tokens=40, temperature=0))
    # Cut where the text ends in a whole word (the next token begins with a non-word char).
    texts = [e.text for e in plain.trace]
    cut = next(
        i
        for i in range(3, len(texts) - 1)
        if _words(texts[i - 1]) and is_word_char(texts[i - 1][-1])
        and texts[i] and not is_word_char(texts[i][0])
    )  # fmt: skip
    text = "".join(texts[:cut])
    last = _words(text)[-1]
    path = _soft_list(tmp_path, {last: 0.0 if hard else 0.01})
    config = GenerationConfig(
        max_new_tokens=cut, temperature=0, ban_files=[path], ban_whole_words=True
    )
    result = decoder.generate(PROMPT, config=config)
    banned = [e for e in result.trace if isinstance(e, RollbackEvent) and e.banned == last]
    assert banned, "the word at the very end was not caught"
    if hard:
        assert last not in _words(result.text)


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), whole_words=st.booleans(), window=st.sampled_from([4, 32]))
def test_streams_never_show_what_a_ban_removes(tiny, tmp_path_factory, seed, whole_words, window):
    """Soft and hard phrases together: the streamed chunks add up to exactly the result, and
    no chunk holds a hard-banned phrase."""
    decoder = Decoder(*tiny)
    sampling = dict(max_new_tokens=40, temperature=1.0, seed=seed, rollback_window=window)
    plain = decoder.generate(PROMPT, config=GenerationConfig(**sampling))
    words = sorted(set(_words(plain.text)))
    hard, soft = words[::2][:4], words[1::2][:4]
    lists = tmp_path_factory.mktemp("l")
    config = GenerationConfig(
        **sampling,
        ban_files=[_soft_list(lists, {**dict.fromkeys(soft, 0.2), **dict.fromkeys(hard, 0.0)})],
        ban_whole_words=whole_words,
    )
    result = decoder.generate(PROMPT, config=config)
    streamed = list(decoder.stream_text(PROMPT, None, config))
    assert "".join(streamed) == result.text
    for word in hard:
        present = word in _words(result.text) if whole_words else word in result.text
        assert not present


def test_generate_and_eval_take_ban_files(tiny, tmp_path):
    """--ban-file, --ban-whole-words, --ban-strength and --ban-hard reach the engine from
    `generate`, and `eval` records them in meta.json."""
    from typer.testing import CliRunner

    from backtrack.cli import app

    decoder = Decoder(*tiny)
    plain = decoder.generate(PROMPT, config=GenerationConfig(max_new_tokens=24, temperature=0))
    words = sorted(set(_words(plain.text)))[:4]
    path = _soft_list(tmp_path, dict.fromkeys(words, 0.5))
    out = tmp_path / "result.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator", "never",
            "--temperature", "0", "--max-new-tokens", "24", "--ban-file", path,
            "--ban-whole-words", "--ban-strength", "2", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    config = GenerationConfig(
        max_new_tokens=24, temperature=0, ban_files=[path], ban_whole_words=True, ban_strength=2
    )
    assert data["text"] == decoder.generate(PROMPT, config=config).text
    bans = [e for e in data["trace"] if e["kind"] == "rollback" and e["banned"]]
    assert bans and all(e["ban_weight"] == 0.25 for e in bans)
    hard = CliRunner().invoke(app, [*args, "--ban-hard"])
    assert hard.exit_code == 0, hard.output
    assert not set(_words(json.loads(out.read_text())["text"])) & set(words)

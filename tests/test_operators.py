"""Operators: validation, decisions on hand-built steps, exact state after rollback, specs."""

from __future__ import annotations

import pytest
import torch

from backtrack.engine import Decoder, GenerationConfig, RollbackEvent, Step
from backtrack.operators import (
    AnyOf,
    Chaos,
    EntropyThreshold,
    LineRestart,
    LogitThreshold,
    Never,
    NGramOverlap,
    Operator,
    OperatorSpecError,
    ProbabilityDrop,
    ProbabilityMargin,
    ProbabilityThreshold,
    ProbabilityTrend,
    Repetition,
    SyntaxCheck,
    parse_operator,
)

PROMPT = "def fib(n):\n    "


def make_step(prob=0.5, *, entropy=0.5, top1=0.6, top2=0.2, logit=1.0, generated=(1,), pos=0):
    return Step(
        position=pos,
        token_id=generated[-1],
        text="x",
        prob=prob,
        logprob=-1.0,
        logit=logit,
        rank=0,
        entropy=entropy,
        top1_prob=top1,
        top2_prob=top2,
        logits=torch.zeros(4),
        probs=torch.zeros(4),
        generated=list(generated),
    )


def test_threshold_operators_fire_on_their_signal():
    assert ProbabilityThreshold(0.1, k=2)(make_step(0.05)) == 2
    assert ProbabilityThreshold(0.1)(make_step(0.5)) == 0
    assert EntropyThreshold(1.0, k=3)(make_step(entropy=1.5)) == 3
    assert EntropyThreshold(1.0)(make_step(entropy=0.5)) == 0
    assert ProbabilityMargin(0.1)(make_step(top1=0.45, top2=0.4)) == 1
    assert ProbabilityMargin(0.1)(make_step(top1=0.9, top2=0.05)) == 0
    assert LogitThreshold(-5.0)(make_step(logit=-6.0)) == 1
    assert LogitThreshold(-5.0)(make_step(logit=0.0)) == 0
    assert Never()(make_step()) == 0


def test_probability_drop_compares_with_previous():
    op = ProbabilityDrop(max_drop=0.5)
    op.reset()
    assert op(make_step(0.8)) == 0
    assert op(make_step(0.3)) == 1  # 0.3 < 0.8 * 0.5
    assert op(make_step(0.2)) == 0  # compared with 0.3 now


def test_probability_trend_waits_for_half_a_window_then_fires():
    op = ProbabilityTrend(window=4, drop=0.5)
    op.reset()
    assert op(make_step(0.9)) == 0
    assert op(make_step(0.1)) == 0  # only one value known: warming up
    # mean of (0.9, 0.1) = 0.5; 0.2 < 0.25 fires and is not added to the history
    assert op(make_step(0.2)) == 1
    assert op.state == (0.9, 0.1)
    for p in (0.8, 0.8, 0.8):
        op(make_step(p))
    assert op.state == (0.1, 0.8, 0.8, 0.8)  # bounded window


def test_repetition_and_ngram_read_the_completion():
    assert Repetition(max_repetitions=2)(make_step(generated=(5, 7, 7, 7))) == 3
    assert Repetition(max_repetitions=3)(make_step(generated=(5, 7, 7, 7))) == 0
    assert NGramOverlap(n=2)(make_step(generated=(1, 2, 3, 1, 2))) == 1
    assert NGramOverlap(n=3)(make_step(generated=(1, 2, 3, 1, 2))) == 0


@pytest.mark.parametrize(
    "factory",
    [
        lambda: ProbabilityThreshold(min_prob=0),
        lambda: ProbabilityThreshold(min_prob=1.5),
        lambda: ProbabilityThreshold(k=0),
        lambda: EntropyThreshold(max_entropy=-1),
        lambda: ProbabilityMargin(min_margin=2),
        lambda: ProbabilityDrop(max_drop=-0.1),
        lambda: ProbabilityTrend(window=1),
        lambda: ProbabilityTrend(drop=1.0),
        lambda: Repetition(max_repetitions=0),
        lambda: NGramOverlap(n=1),
        lambda: LogitThreshold(k=-2),
        lambda: Chaos(p=2),
        lambda: Chaos(max=0),
        lambda: AnyOf([]),
    ],
)
def test_bad_parameters_are_rejected(factory):
    with pytest.raises(ValueError):
        factory()


class Recorder(Operator):
    """Wraps the operator under test and records every step it is consulted on, in order."""

    name = "recorder"

    def __init__(self, inner: Operator):
        self.inner = inner
        self.calls: list[Step] = []

    def reset(self):
        self.inner.reset()
        self.calls = []

    def __call__(self, step):
        # Steps share the session's live id list; freeze a copy for the replay.
        self.calls.append(Step(**{**step.__dict__, "generated": list(step.generated)}))
        return self.inner(step)

    def set_prompt(self, prompt):
        self.inner.set_prompt(prompt)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


STATEFUL = [
    lambda: ProbabilityTrend(window=6, drop=0.7),
    lambda: ProbabilityDrop(max_drop=0.6),
    lambda: AnyOf([ProbabilityTrend(window=4, drop=0.6), ProbabilityDrop(max_drop=0.7)]),
    lambda: LineRestart(min_prob=0.2, max_k=8),
    lambda: SyntaxCheck(max_k=12),
]


@pytest.mark.parametrize("factory", STATEFUL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_state_after_rollback_equals_fresh_operator_fed_surviving_steps(tiny, factory, seed):
    model, tok = tiny
    recorder = Recorder(factory())
    # Chaos adds rollbacks the operator did not ask for (it sees every step in AnyOf).
    combined = AnyOf([recorder, Chaos(p=0.25, max=5, seed=seed)])
    # No retry cap: the operator is then consulted on every token until the budget is spent.
    cfg = GenerationConfig(
        max_new_tokens=40, seed=seed, temperature=1.0, max_retries_per_position=None
    )
    result = Decoder(model, tok).generate(PROMPT, combined, cfg)
    assert result.counts.backtracks > 0
    # The operator is consulted on every sampled token until the budget is spent (the
    # allowance only shrinks), so the calls match the first len(calls) token events.
    tokens = [e for e in result.trace if not isinstance(e, RollbackEvent)]
    last_event = {e.position: i for i, e in enumerate(tokens)}
    surviving = [
        recorder.calls[last_event[p]]
        for p in range(len(result.token_ids))
        if last_event[p] < len(recorder.calls)
    ]
    assert surviving, "the operator saw no surviving step"
    assert [s.position for s in surviving] == list(range(len(surviving)))
    assert [s.token_id for s in surviving] == result.token_ids[: len(surviving)]
    fresh = factory()
    fresh.reset()
    fresh.set_prompt(PROMPT)
    for step in surviving:
        assert fresh(step) == 0  # a step the operator fired on was deleted
    assert fresh.get_state() == recorder.inner.get_state()


def test_spec_strings():
    op = parse_operator("probability-trend:window=12,drop=0.4")
    assert isinstance(op, ProbabilityTrend) and op.window == 12 and op.drop == 0.4
    chaos = parse_operator("chaos:p=0.3,max=4,seed=1")
    assert isinstance(chaos, Chaos) and (chaos.p, chaos.max, chaos.seed) == (0.3, 4, 1)
    combo = parse_operator("trend+repetition:max_repetitions=5")
    assert isinstance(combo, AnyOf) and len(combo.operators) == 2
    assert isinstance(parse_operator(None), Never)
    assert isinstance(parse_operator("never"), Never)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus", "unknown operator"),
        ("probability-trend:windw=3", "no parameter 'windw'"),
        ("probability-trend:window", "expected KEY=VALUE"),
        ("probability-trend:window=1", "window must be"),
        ("", "empty"),
    ],
)
def test_bad_specs_give_clear_errors(spec, message):
    with pytest.raises(OperatorSpecError, match=message):
        parse_operator(spec)

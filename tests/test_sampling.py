"""One sampler for one row or a whole batch: :func:`backtrack.engine.sampling.draw`.

A row drawn inside a batch gets the token it would get alone, from its own generator, with its
own settings and bans: the warpers and the softmax work row by row and give bitwise the same
probabilities; only the reductions over the vocabulary (``logsumexp`` for the log-probability,
the entropy sum) may round differently with another batch shape: measured over 160 rows of
random logits (vocabulary 151,936) at most 1.9e-6 for the log-probability and 9.5e-7 for the
entropy, so the tolerance is 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.sampling import Sampler, draw

VOCAB = 151_936
REDUCTION_TOL = 1e-5
SETTINGS = [
    dict(temperature=0.5, top_k=50),
    dict(temperature=0.5, top_k=50),
    dict(temperature=1.0, top_k=None, top_p=0.9),
    dict(temperature=0.0),
    dict(temperature=0.7, top_k=20, top_p=0.95, min_p=0.05),
    dict(temperature=1.0, top_k=None),
]


def _samplers(seed: int, match_generate: bool = True) -> list[Sampler]:
    return [
        Sampler(GenerationConfig(**kw), torch.Generator().manual_seed(seed + i), match_generate)
        for i, kw in enumerate(SETTINGS)
    ]


# match_generate=False (llama.cpp): the top-k rows draw over their support only, so the batch
# mixes two ways of drawing and two values of k; each row must still draw what it draws alone.
@pytest.mark.parametrize("match_generate", [True, False], ids=["generate", "support"])
@pytest.mark.parametrize("seed", range(5))
def test_a_row_in_a_batch_draws_what_it_draws_alone(seed, match_generate):
    logits = torch.randn(len(SETTINGS), VOCAB, generator=torch.Generator().manual_seed(seed)) * 4
    bans = [(), {int(logits[1].argmax())}, (), (), (), ()]
    together = draw(logits, _samplers(seed, match_generate), bans)
    for row, sampler in enumerate(_samplers(seed, match_generate)):
        alone = draw(logits[row : row + 1], [sampler], [bans[row]])
        assert int(alone.tokens[0]) == int(together.tokens[row])
        assert torch.equal(alone.probs[0], together.probs[row])
        assert float(alone.top1[0]) == float(together.top1[row])
        assert float(alone.top2[0]) == float(together.top2[row])
        assert int(alone.rank[0]) == int(together.rank[row])
        assert abs(float(alone.logprob[0]) - float(together.logprob[row])) <= REDUCTION_TOL
        assert abs(float(alone.entropy[0]) - float(together.entropy[row])) <= REDUCTION_TOL
    # Each group of settings got its own warpers: top-k 50 keeps 50 candidates, top-k 20
    # (with top-p and min-p) at most 20, plain temperature 1 everything.
    support = (together.probs > 0).sum(dim=-1).tolist()
    assert support[0] == support[1] == 50 and support[4] <= 20 and support[5] == VOCAB
    assert int(together.tokens[1]) != int(logits[1].argmax())  # the ban held
    assert int(together.tokens[3]) == int(logits[3].argmax())  # greedy


def test_draw_matches_torch_multinomial():
    """The draw is torch.multinomial's own (argmax of p over exponential noise), so seeded
    sessions stay token-identical to ``model.generate``."""
    for seed in range(20):
        logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
        sampler = Sampler(GenerationConfig(temperature=0.8, top_k=40), torch.Generator())
        sampler.generator.manual_seed(seed)
        drawn = draw(logits, [sampler], [()])
        expected = torch.multinomial(
            drawn.probs, 1, generator=torch.Generator().manual_seed(seed)
        ).item()
        assert int(drawn.tokens[0]) == expected


def test_a_ban_that_empties_a_row_is_ignored_for_that_row_only():
    logits = torch.full((2, 8), -50.0)
    logits[:, 3] = 10.0
    greedy = [Sampler(GenerationConfig(temperature=0.0)) for _ in range(2)]
    topk = [
        Sampler(GenerationConfig(temperature=1.0, top_k=1), torch.Generator()) for _ in range(2)
    ]
    drawn = draw(logits, greedy, [{3}, ()])
    assert drawn.tokens.tolist()[1] == 3 and drawn.tokens.tolist()[0] != 3  # greedy: next best
    # Banning every candidate of a row would leave nothing to draw: that row's ban is dropped,
    # the other row's kept.
    drawn = draw(logits, topk, [set(range(8)), {3}])
    assert drawn.tokens.tolist()[0] == 3 and drawn.tokens.tolist()[1] != 3


def test_prefill_budget_bounds_each_admission(tiny):
    """With a budget of one token every prompt is prefilled on its own; with the default all
    first rows go in one left-padded pass. Either way the rows decode the same tokens here:
    greedy, fp32, and measured identical on the tiny model."""
    model, tok = tiny
    prompts = ["def fib(n):\n    ", "import os\n", "class A:\n    def f(self):\n        "]
    requests = [
        (p, None, GenerationConfig(max_new_tokens=8, temperature=0.0, seed=i))
        for i, p in enumerate(prompts * 2)
    ]
    together = BatchDecoder(model, tok)
    results = together.generate_all(requests, batch_size=3)
    assert together.stats.prefill_rows == 6 and together.stats.prefills < 6
    alone = BatchDecoder(model, tok, prefill_budget=1)
    results_alone = alone.generate_all(requests, batch_size=3)
    assert alone.stats.prefills == 6
    single = Decoder(model, tok)
    for (prompt, _, config), a, b in zip(requests, results, results_alone, strict=True):
        assert a.token_ids == b.token_ids == single.generate(prompt, None, config).token_ids
    with pytest.raises(ValueError, match="prefill_budget must be >= 1"):
        BatchDecoder(model, tok, prefill_budget=0)

"""Per-step cost of the penalties, recomputed from the surviving tokens at every draw.

The penalties are a function of a row's current tokens, so :func:`apply_penalties` rebuilds
the counts from the ids at every step (nothing to undo on rollback). This measures what that
costs, on logits of a 152k vocabulary (Qwen2.5's) for a context of ``--context`` tokens, with
presence, frequency, repetition and a logit bias on, and DRY's scan alone (pure Python,
linear in the context), for 1 and 8 rows. Compare with a forward pass (tens of ms on a CPU).

    python benchmarks/bench_penalties.py --context 2000
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from backtrack.engine.penalties import Penalties, apply_penalties, dry_penalties


def best_ms(fn, repeats: int) -> float:
    """The best of ``repeats`` timings (a shared machine's load hits every round alike)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--context", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(0)
    half = args.context // 2
    penalties = Penalties(0.5, 0.3, 1.2, bias=((5, 1.0), (9, -2.0)))
    for rows in (1, 8):
        logits = torch.randn(rows, args.vocab)
        histories = [
            (
                [rng.randrange(args.vocab) for _ in range(half)],
                [rng.randrange(args.vocab) for _ in range(half)],
            )
            for _ in range(rows)
        ]
        ms = best_ms(
            lambda x=logits, h=histories, n=rows: apply_penalties(x, [penalties] * n, h),
            args.repeats,
        )
        print(f"apply_penalties, {rows} row(s), {args.context} tokens each: {ms:.2f} ms/step")
    context = [rng.randrange(200) for _ in range(args.context)]
    ms = best_ms(lambda: dry_penalties(context, 0.8, 1.75, 2), args.repeats)
    print(f"dry_penalties, {args.context} tokens: {ms:.2f} ms/step")


if __name__ == "__main__":
    main()

"""Beam search against backtracking at equal batch, side by side on llama.cpp.

For the first ``--problems`` HumanEval prompts, decode every configuration batched as the
evaluation does (``--batch-size`` rows): ``base`` (plain sampling, the paper's T=0.5, top-k
50), each ``--operator`` recipe, and beam search with ``--beams`` beams (the engine's
``BeamSearchDecoder``, ``batch_size // beams`` prompts at a time). The configurations take
turns ``--repeats`` times in rotating order, so machine load hits all alike. Prints, per
configuration: wall seconds for the whole set, accepted tokens per second, forward passes
(batch rows fed) per accepted token, and the wall time relative to base.

    .venv/bin/python benchmarks/bench_beam.py --problems 16 \\
        --operator recipe:qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace

from common import machine, rotated

from backtrack.engine import GenerationConfig
from backtrack.engine.batch import BatchDecoder
from backtrack.engine.beam import BeamSearchDecoder
from backtrack.evaluation.data import load_humaneval
from backtrack.evaluation.prompts import EVALPLUS_STOP, build_prompt
from backtrack.evaluation.settings import split_configuration
from backtrack.models import load_model
from backtrack.operators import parse_operator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--beams", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--operator", action="append", default=[])
    args = ap.parse_args()

    model, tok = load_model(args.model, backend="llama.cpp", progress=False)
    prompts = [build_prompt(p) for p in load_humaneval()[: args.problems]]
    # The project's sampling (GenerationConfig's defaults), the paper's.
    base = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=EVALPLUS_STOP)
    batch = BatchDecoder(model, tok)
    beam = BeamSearchDecoder(model, tok, beams=args.beams)

    def engine(name: str, spec: str, settings) -> tuple[int, int]:
        config = base.updated(dict(settings))
        requests = [
            (p, parse_operator(spec), replace(config, seed=i)) for i, p in enumerate(prompts)
        ]
        results = batch.generate_all(requests, args.batch_size)
        return (
            sum(len(r.token_ids) for r in results),
            sum(r.counts.forward_passes for r in results),
        )

    def beams() -> tuple[int, int]:
        results = [r for _, r in beam.generate_many(prompts, base, args.batch_size)]
        return (
            sum(len(r.token_ids) for r in results),
            sum(r.counts.forward_passes for r in results),
        )

    runs = {"base": lambda: engine("base", "never", {})}
    for name in args.operator:
        spec, settings = split_configuration(name)
        runs[name] = lambda spec=spec, settings=settings, name=name: engine(name, spec, settings)
    runs[f"beam:{args.beams}"] = beams
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    names = list(runs)
    for repeat in range(args.repeats):
        for name in rotated(names, repeat):
            start = time.perf_counter()
            tokens, passes = runs[name]()
            totals[name][0] += time.perf_counter() - start
            totals[name][1] += tokens
            totals[name][2] += passes
    print(f"{machine()}, llama.cpp, {args.problems} HumanEval prompts, batch "
          f"{args.batch_size}, {args.repeats} repeat(s)")  # fmt: skip
    print(f"{'configuration':<40} {'wall s':>8} {'tok/s':>7} {'fwd/tok':>8} {'x base wall':>12}")
    base_wall = totals["base"][0]
    for name in names:
        wall, tokens, passes = totals[name]
        print(f"{name[:40]:<40} {wall:8.1f} {tokens / wall:7.1f} {passes / max(1, tokens):8.2f} "
              f"{wall / base_wall:12.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

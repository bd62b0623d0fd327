"""What the ``examples`` operator costs a batch, side by side in one run (issue 29's target:
decoding throughput with ``examples`` at B=16 >= 0.85x of ``never`` at B=16 on llama.cpp,
sandbox time excluded and reported separately).

The first ``--problems`` HumanEval prompts are decoded ``--rounds`` times with each
configuration through one ``BatchDecoder`` of ``--batch-size`` rows, alternating the order per
round, with the project's sampling (temperature 0.5, top-k 50, EvalPlus stops). For each
configuration it prints:

* decode tok/s: tokens sampled (final and rolled back: the work) over the batch's wall time
  less the time every row sat waiting for a check's verdict (``BatchStats.check_stall_s``),
  and its ratio to ``never``: how fast the decoder runs while the operator is in it;
* final tok/s: final tokens over the whole wall time (sandbox stalls included), the ratio a
  user sees;
* checks, repairs, the seconds rows waited for verdicts in all (overlapping decoding) and the
  seconds the whole batch stalled on them.

    .venv/bin/python benchmarks/bench_examples.py --problems 16 --batch-size 16 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from common import machine, rotated

from backtrack.engine import GenerationConfig
from backtrack.engine.batch import BatchDecoder
from backtrack.evaluation.data import humaneval_prompts
from backtrack.evaluation.prompts import EVALPLUS_STOP
from backtrack.models import load_model
from backtrack.operators import parse_operator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--operator", default="examples")
    args = ap.parse_args()
    model, tok = load_model(args.model, backend="llama.cpp", threads=args.threads, progress=False)
    prompts = humaneval_prompts(args.problems)
    configs = ["never", args.operator]
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for round_index in range(args.rounds):
        for name in rotated(configs, round_index):
            requests = [
                (
                    prompt,
                    parse_operator(name),
                    GenerationConfig(
                        max_new_tokens=args.max_new_tokens,
                        seed=1000 * round_index + i,
                        stop=EVALPLUS_STOP,
                    ),
                )
                for i, prompt in enumerate(prompts)
            ]
            decoder = BatchDecoder(model, tok)
            start = time.perf_counter()
            results = decoder.generate_all(requests, batch_size=args.batch_size)
            wall = time.perf_counter() - start
            stall = decoder.stats.check_stall_s
            sampled = sum(r.counts.tokens_sampled for r in results)
            final = sum(len(r.token_ids) for r in results)
            row = rows[name]
            row["decode"].append(sampled / (wall - stall))
            row["final"].append(final / wall)
            row["checks"].append(sum(r.counts.checks for r in results))
            row["repairs"].append(sum(max(r.counts.checks - 1, 0) for r in results))
            row["waited"].append(sum(r.counts.check_wait_s for r in results))
            row["stall"].append(stall)
            row["wall"].append(wall)
    print(
        f"# {args.model} on llama.cpp, {machine()}, "
        f"{args.threads} threads, B={args.batch_size}, {args.problems} HumanEval prompts x "
        f"{args.rounds} rounds (medians over rounds)"
    )
    base_decode = statistics.median(rows["never"]["decode"])
    base_final = statistics.median(rows["never"]["final"])
    print("| config | decode tok/s | x never | final tok/s | x never | checks | repairs "
          "| rows waited s | batch stalled s | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in configs:
        row = {key: statistics.median(values) for key, values in rows[name].items()}
        print(
            f"| {name} | {row['decode']:.1f} | {row['decode'] / base_decode:.2f} "
            f"| {row['final']:.1f} | {row['final'] / base_final:.2f} | {row['checks']:.0f} "
            f"| {row['repairs']:.0f} | {row['waited']:.1f} | {row['stall']:.1f} "
            f"| {row['wall']:.1f} |"
        )


if __name__ == "__main__":
    main()

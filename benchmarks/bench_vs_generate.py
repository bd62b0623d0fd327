"""Our decoding against transformers' ``model.generate``, side by side in one run.

The peer a user would pick instead of us is ``model.generate``: one prompt at a time, or a
left-padded batch. Every configuration decodes HumanEval prompts (the first ``--prompts``,
each ``--copies`` times with other seeds) with the same sampling settings and only EOS as a
stop; batch-1 configurations decode the first copy only (or the first ``--single-prompts``), to
save time (same prompts, same settings: their tokens per second compare with the others').
Throughput counts the tokens of final completions (up to and including EOS; for ``generate``,
its padding after EOS is not output) over the configuration's whole wall time, prefill
included. ``KV/row`` is our shared cache's peak size over the rows it held (padding and holes
included).

    python benchmarks/bench_vs_generate.py                      # the default model
    python benchmarks/bench_vs_generate.py --quantize int8      # both sides in int8
"""

from __future__ import annotations

import argparse
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


def run_generate(model, tok, requests, batch_size: int, args) -> Measured:
    """``model.generate`` on left-padded batches of ``batch_size`` prompts."""
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = set(model.generation_config.eos_token_id or []) | {tok.eos_token_id}
    tokens = 0
    start = time.perf_counter()
    for first in range(0, len(requests), batch_size):
        chunk = requests[first : first + batch_size]
        enc = tok(
            [p for p, _ in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        torch.manual_seed(chunk[0][1])
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=args.temperature,
                top_k=args.top_k,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=pad,
            )
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            ends = [i for i, t in enumerate(row) if t in eos]
            tokens += ends[0] + 1 if ends else len(row)
    wall = time.perf_counter() - start
    return Measured(f"generate B={batch_size}", len(requests), tokens, wall)


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", default="auto", help="auto: bf16 only with native bf16")
    parser.add_argument("--quantize", default=None, choices=[None, "int8"])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--copies", type=int, default=2, help="seeds per prompt (batched runs)")
    add_sampling_arguments(parser, max_new_tokens=64)
    parser.add_argument("--batch-sizes", default="16,32", help="batched sizes besides 1")
    parser.add_argument("--operators", default="never,probability-trend")
    parser.add_argument("--no-single", action="store_true", help="skip the batch-1 rows")
    parser.add_argument(
        "--single-prompts", type=int, default=0, help="batch-1 rows decode only the first N"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over every configuration (round-robin)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype=args.dtype, quantize=args.quantize, progress=False)
    prompts = humaneval_prompts(args.prompts)
    requests = [(p, 1000 * copy + i) for copy in range(args.copies) for i, p in enumerate(prompts)]
    single = requests[: args.single_prompts or len(prompts)]
    specs = args.operators.split(",")
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    warm_up(model, tok, single[:2], 2, args)

    # Every configuration runs --repeats times, round-robin, so that drift of the machine
    # (other load, thermal) falls on all of them alike; ratios pair the runs of one round.
    jobs: list[tuple[str, Callable[[], Measured]]] = []
    if not args.no_single:
        jobs.append(("generate B=1", lambda: run_generate(model, tok, single, 1, args)))
        for spec in specs:
            jobs.append(
                (f"ours {spec} B=1", lambda s=spec: run_ours(model, tok, single, 1, s, args))
            )
    for size in sizes:
        if size == sizes[0]:
            jobs.append(
                (f"generate B={size}", lambda b=size: run_generate(model, tok, requests, b, args))
            )
        for spec in specs:
            jobs.append(
                (
                    f"ours {spec} B={size}",
                    lambda s=spec, b=size: run_ours(model, tok, requests, b, s, args),
                )
            )
    rounds = run_rounds(jobs, args.repeats)

    print(
        f"cpu={machine()} model={args.model} dtype={next(model.parameters()).dtype} "
        f"quantize={args.quantize} "
        f"threads={torch.get_num_threads()} prompts={args.prompts} (HumanEval) copies="
        f"{args.copies} max_new_tokens={args.max_new_tokens} temperature={args.temperature} "
        f"top_k={args.top_k} repeats={args.repeats} peak RSS {peak_rss_gib():.1f} GiB"
    )
    peer1, peerb = "generate B=1", f"generate B={sizes[0]}"

    def ratio(label: str, peer: str) -> str:
        return paired_ratio(rounds, label, peer) if peer in rounds[0] else "-"

    print_table(
        ["vs generate B=1", f"vs generate B={sizes[0]}"],
        [
            (label, [r[label] for r in rounds], [ratio(label, peer1), ratio(label, peerb)])
            for label, _ in jobs
        ],
    )
    if args.repeats > 1:
        print("Ratios: median over the rounds (min-max); wall s and tok/s: medians.")


if __name__ == "__main__":
    main()

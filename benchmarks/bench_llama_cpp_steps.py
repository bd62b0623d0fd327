"""What batching can buy on this CPU: llama.cpp step times by batch size, and the bound they
put on a batching server against one that serialises requests.

A server that batches ``C`` concurrent requests still prefills every prompt (compute-bound,
the same work as a serial server) and only shares the decode steps. With ``t1`` the time of
a one-row decode step, ``tC`` that of a ``C``-row step, ``p`` the mean prompt length, ``r`` the
prefill rate and ``T`` the tokens per request, the best ratio a batching server can reach
over a serial one on the same machine is

    (p / r + T * t1) / (p / r + T * tC / C)

(every overhead of a real server — HTTP, streaming, rows waiting for admission — only lowers
it). Everything is measured through the engine's own llama.cpp backend (``new_batch``,
``admit``, ``step``: logits copied out, as in decoding), on the first ``--prompts`` HumanEval
prompts, nothing else running.

    python benchmarks/bench_llama_cpp_steps.py                    # default model, 2 threads
"""

from __future__ import annotations

import argparse
import statistics
import time

from backtrack.evaluation.data import humaneval_prompts
from backtrack.models import DEFAULT_MODEL, load_model


def prefill_rate(model, prompts: list[list[int]]) -> float:
    """Tokens per second prefilling the prompts one at a time (as a server admits them)."""
    batch = model.new_batch(1)
    batch.admit([0], [prompts[-1]])  # warm-up, not measured
    batch.free(0)
    start = time.perf_counter()
    for ids in prompts:
        batch.admit([0], [ids])
        batch.free(0)
    return sum(len(ids) for ids in prompts) / (time.perf_counter() - start)


def step_time(model, prompts: list[list[int]], rows: int, steps: int) -> float:
    """Median seconds of one decode step of ``rows`` rows holding HumanEval prompts."""
    batch = model.new_batch(rows)
    batch.admit(list(range(rows)), [prompts[i % len(prompts)] for i in range(rows)])
    token = prompts[0][-1]
    batch.step([token] * rows)  # warm-up, not measured
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batch.step([token] * rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=32, help="Timed decode steps per size.")
    parser.add_argument("--tokens", type=int, default=64, help="T: new tokens per request.")
    args = parser.parse_args()

    model, tok = load_model(args.model, backend="llama.cpp", threads=args.threads, progress=False)
    prompts = [
        tok(p, add_special_tokens=False)["input_ids"] for p in humaneval_prompts(args.prompts)
    ]
    mean_prompt = statistics.mean(len(ids) for ids in prompts)
    rate = prefill_rate(model, prompts)
    sizes = sorted({1, *(int(b) for b in args.batch_sizes.split(",") if b)})
    steps = {rows: step_time(model, prompts, rows, args.steps) for rows in sizes}

    print(
        f"model={args.model} (llama.cpp) threads={args.threads} prompts={args.prompts} "
        f"(HumanEval, mean {mean_prompt:.0f} tokens) prefill {rate:.0f} tok/s, "
        f"T={args.tokens} tokens per request"
    )
    print("| rows | step ms | decode tok/s | x one row | bound: batching server / serial server |")
    print("|---|---|---|---|---|")
    serial = mean_prompt / rate + args.tokens * steps[1]
    for rows, seconds in steps.items():
        batched = mean_prompt / rate + args.tokens * seconds / rows
        print(
            f"| {rows} | {seconds * 1000:.1f} | {rows / seconds:.1f} | "
            f"{steps[1] / seconds * rows:.2f}x | {serial / batched:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""The same evaluation run locally and with ``--ray local`` (2 actors), side by side.

The peer is our own local run: what a user without Ray runs. Both decode the first
``--problems`` HumanEval problems with ``base`` and ``probability-trend`` (one run, paper
sampling, ``--max-new-tokens``), fp32 on transformers, into fresh result directories; the
wall time of each includes loading the model (the Ray run: starting Ray and both actors, which
load their models in parallel). It prints both wall times, Ray's overhead per cell, and how
many records are identical (completion, tokens, forward passes, verdict).

Run it with nothing else on the machine. On 2 cores, 2 actors get one core (one torch thread)
each, where the local run has one process with 2 threads: the same CPU, split differently.

    python benchmarks/bench_ray.py
    python benchmarks/bench_ray.py --problems 4 --max-new-tokens 64    # quicker
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from backtrack.evaluation.generation.runner import run_eval
from backtrack.evaluation.settings import EvalSettings
from backtrack.evaluation.store import ResultStore

FIELDS = ("completion", "final_tokens", "forward_passes", "passed")


def settings(out: Path, args, **changes) -> EvalSettings:
    return EvalSettings.from_flat(
        {
            "model": args.model,
            "out": str(out),
            "operators": ["probability-trend"],
            "limit": args.problems,
            "runs": 1,
            "dtype": "float32",
            "backend": "transformers",
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            **changes,
        }
    )


def cells(out: Path) -> dict:
    records, _ = ResultStore(out).load()
    return {(r["config"], r["run"], r["task_id"]): tuple(r[f] for f in FIELDS) for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4, help="Rows per chunk / batch.")
    parser.add_argument("--actors", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))

    from backtrack.models import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype="float32", backend="transformers")
    local_load = time.perf_counter() - start
    local = run_eval(settings(work / "local", args), model, tokenizer, progress=False)
    local_s = time.perf_counter() - start
    del model, tokenizer

    from backtrack.evaluation.generation.distributed import RayPool

    start = time.perf_counter()
    ray_settings = settings(work / "ray", args, ray="local", ray_actors=args.actors)
    pool = RayPool(ray_settings, "local", actors=args.actors)
    pool.pids()  # every actor has loaded its model
    ray_load = time.perf_counter() - start
    try:
        ray_run = run_eval(ray_settings, progress=False, pool=pool)
    finally:
        pool.close()
    ray_s = time.perf_counter() - start

    mine, theirs = cells(work / "ray"), cells(work / "local")
    same = sum(1 for key, value in theirs.items() if mine.get(key) == value)
    n = local.written
    what = f"{args.problems} problems x base, probability-trend"
    print(f"{n} cells ({what}), fp32, batch {args.batch_size}")
    local_decode, ray_decode = local_s - local_load, ray_s - ray_load
    parts = f"load {local_load:.1f} + run {local_decode:.1f}"
    print(f"  local (1 process, 2 threads):  {local_s:7.1f} s = {parts}")
    print(
        f"  --ray local, {args.actors} actors (1 thread each): {ray_s:7.1f} s = start Ray and "
        f"actors {ray_load:.1f} + run {ray_decode:.1f}"
    )
    print(f"  wall time x local: {ray_s / local_s:.2f} (run only: {ray_decode / local_decode:.2f})")
    print(f"  Ray overhead per cell, run only: {(ray_decode - local_decode) / n:+.2f} s")
    print(f"  records identical to the local run: {same} of {n} (written {ray_run.written})")


if __name__ == "__main__":
    main()

"""Load time and greedy decoding speed of a built-in model in fp32, bf16 and int8, side by side.

Why one run for all three: CPU speed here varies by +/-20% over minutes (shared machines), so
ratios measured in the same process are far more trustworthy than absolute numbers copied from
separate runs. The load average before and after is printed because other processes competing
for the 2 cores make 2-thread PyTorch dramatically slower (OpenMP threads wait for each other),
which would make every figure meaningless.

    python benchmarks/bench_models.py                  # default model, warm cache
    python benchmarks/bench_models.py --cold           # also time a cold conversion (~1 min)
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from backtrack.models import DEFAULT_MODEL, cpu_supports_bf16, load_model, prepare_model

PROMPT = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
'''

CONFIGS: dict[str, dict[str, str | None]] = {
    "fp32": {"dtype": "float32", "quantize": None},
    "bf16": {"dtype": "bfloat16", "quantize": None},
    "int8": {"dtype": "auto", "quantize": "int8"},
}


@dataclass
class Result:
    config: str
    load_s: float
    tok_per_s: float
    tokens: list[int]


def _bench_config(name: str, config: str, new_tokens: int, repeats: int) -> Result:
    """Warm load, one short warm-up generation, then ``repeats`` timed greedy generations."""
    t0 = time.perf_counter()
    model, tokenizer = load_model(name, device="cpu", progress=False, **CONFIGS[config])
    load_s = time.perf_counter() - t0
    inputs = tokenizer(PROMPT, return_tensors="pt")
    kwargs = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    with torch.no_grad():
        model.generate(**inputs, do_sample=False, max_new_tokens=8)  # warm-up: kernels, caches
        rates, out = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(**inputs, **kwargs)
            elapsed = time.perf_counter() - t0
            rates.append((out.shape[1] - inputs["input_ids"].shape[1]) / elapsed)
    assert out is not None
    tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    del model
    gc.collect()
    return Result(config, load_s, statistics.median(rates), tokens)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--configs", default="fp32,bf16,int8")
    parser.add_argument(
        "--cold", action="store_true", help="also time a cold conversion into a temp cache"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    cold_s = None
    if args.cold:
        with tempfile.TemporaryDirectory(prefix="backtrack-bench-") as tmp:
            t0 = time.perf_counter()
            prepare_model(args.model, cache_dir=tmp, progress=False)
            cold_s = time.perf_counter() - t0
        print(f"cold prepare: {cold_s:.1f} s", flush=True)
    prepare_model(args.model)  # make sure the real cache is warm before timing warm loads

    results = [
        _bench_config(args.model, c, args.new_tokens, args.repeats) for c in args.configs.split(",")
    ]
    load_after = os.getloadavg()[0]

    import transformers

    print()
    print(
        f"model {args.model}; greedy, {args.new_tokens} new tokens, {args.threads} threads, "
        f"median of {args.repeats}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; CPU native bf16: {cpu_supports_bf16()}"
    )
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}")
    if max(load_before, load_after) > args.threads + 0.5:
        print("WARNING: other processes were competing for the CPU; figures are unreliable")
    if cold_s is not None:
        print(
            f"cold prepare (assemble + sha256 + dequantize + save bf16 + manifest): {cold_s:.1f} s"
        )
    base = next((r for r in results if r.config == "fp32"), results[0])
    print()
    same_header = f"same tokens as {base.config}"
    print(f"{'config':<7}{'warm load s':>12}{'tok/s':>9}{'ratio':>8}{same_header:>24}")
    for r in results:
        same = _common_prefix(r.tokens, base.tokens)
        print(
            f"{r.config:<7}{r.load_s:>12.2f}{r.tok_per_s:>9.1f}{r.tok_per_s / base.tok_per_s:>8.2f}"
            f"{f'{same}/{len(base.tokens)}':>24}"
        )


if __name__ == "__main__":
    main()

"""What the benchmarks share: the machine line, the sampling they decode with, our engine timed
on a list of requests, the round-robin loop that times configurations side by side, and a
free loopback port.

Not a package: ``python benchmarks/bench_x.py`` (run from the repository root, like every
command in docs/benchmarks.md) puts this folder first on ``sys.path``, so the benchmarks
import it as ``common``. The package is imported inside the functions that need it, so that
a benchmark of servers (bench_serve.py, whose client decodes nothing) does not load torch.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from backtrack.engine import GenerationConfig

T = TypeVar("T")

# The throughput comparisons against other decoders (bench_batch, bench_vs_generate,
# bench_llama_cpp) sample at 0.7, not at the project's 0.5 (GenerationConfig's default): their
# figures in docs/benchmarks.md were measured at 0.7, and the rollbacks an operator makes, so
# its forward passes per token, depend on it (probability-trend: 9-10% more passes at 0.7, 5%
# at 0.5).
THROUGHPUT_TEMPERATURE = 0.7


def machine() -> str:
    """The CPU the figures come from, and whether it computes bf16 natively."""
    from backtrack.models import cpu_name, cpu_supports_bf16

    return f"{cpu_name()} (native bf16: {cpu_supports_bf16()})"


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` started at ``round_index`` (mod their number): configurations taking turns
    in rotating order, so that load from other processes hits all of them alike."""
    start = round_index % len(items)
    return [*items[start:], *items[:start]]


@dataclass
class Measured:
    """One configuration's run over a list of requests."""

    label: str
    requests: int
    tokens: int
    wall_s: float
    forward_per_token: float = 1.0  # a peer's decoding: one forward pass per token
    kv_bytes_per_row: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The options :func:`sampling` reads; temperature :data:`THROUGHPUT_TEMPERATURE`, top-k
    the project's."""
    from backtrack.engine import GenerationConfig

    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=THROUGHPUT_TEMPERATURE)
    parser.add_argument("--top-k", type=int, default=GenerationConfig().top_k)


def sampling(args: argparse.Namespace, seed: int) -> GenerationConfig:
    """The benchmark's sampling (``--max-new-tokens``, ``--temperature``, ``--top-k``), seeded;
    no stop strings, so every request ends at EOS or the length limit."""
    from backtrack.engine import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=seed,
    )


def run_ours(
    model,
    tokenizer,
    requests: Sequence[tuple[str, int]],
    batch_size: int,
    spec: str,
    args: argparse.Namespace,
    label: str = "ours",
) -> Measured:
    """Decode ``(prompt, seed)`` requests with operator ``spec``: one at a time through
    ``Decoder`` at batch size 1, else through ``BatchDecoder`` (its peak cache per row is
    reported). Tokens are those of the final completions; the prefill counts as a pass."""
    from backtrack.engine import Decoder
    from backtrack.engine.batch import BatchDecoder
    from backtrack.operators import parse_operator

    jobs = [(prompt, parse_operator(spec), sampling(args, seed)) for prompt, seed in requests]
    kv = None
    start = time.perf_counter()
    if batch_size == 1:
        decoder = Decoder(model, tokenizer)
        results = [decoder.generate(prompt, op, cfg) for prompt, op, cfg in jobs]
    else:
        batch = BatchDecoder(model, tokenizer)
        results = batch.generate_all(jobs, batch_size=batch_size)
        kv = batch.stats.peak_cache_bytes / max(batch.stats.peak_rows, 1)
    wall = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    passes = sum(r.counts.forward_passes for r in results)
    return Measured(f"{label} {spec} B={batch_size}", len(jobs), tokens, wall, passes / tokens, kv)


def warm_up(model, tokenizer, requests: Sequence[tuple[str, int]], batch_size: int, args) -> None:
    """A few tokens of ``requests``, not measured: the first calls allocate memory, pick
    kernels and finish lazy imports, which would otherwise be charged to the first job."""
    short = argparse.Namespace(**{**vars(args), "max_new_tokens": 4})
    run_ours(model, tokenizer, requests, batch_size, "never", short, "warm-up")


def run_rounds(
    jobs: Sequence[tuple[str, Callable[[], Measured]]], repeats: int
) -> list[dict[str, Measured]]:
    """Every job once per round, ``repeats`` rounds (round-robin, so that drift of the machine
    falls on all of them alike), printing each run as it ends; one ``{label: run}`` a round."""
    rounds: list[dict[str, Measured]] = []
    for repeat in range(repeats):
        rounds.append({})
        for label, job in jobs:
            row = rounds[-1][label] = job()
            print(
                f"  [{repeat + 1}/{repeats}] {label}: {row.tokens} tokens in "
                f"{row.wall_s:.1f} s ({row.tokens_per_s:.1f} tok/s)",
                flush=True,
            )
    return rounds


def paired_ratio(rounds: Sequence[dict[str, Measured]], label: str, against: str) -> str:
    """Tokens/s of ``label`` over ``against``, paired within each round: the median, with the
    range when there is more than one round."""
    values = sorted(r[label].tokens_per_s / r[against].tokens_per_s for r in rounds)
    text = f"{statistics.median(values):.2f}x"
    return text + (f" ({values[0]:.2f}-{values[-1]:.2f})" if len(values) > 1 else "")


def print_table(
    ratio_columns: Sequence[str], rows: Sequence[tuple[str, list[Measured], list[str]]]
) -> None:
    """A Markdown table, a row per configuration: ``(label, its runs, its ratios)``, with the
    medians over the runs of wall time, tokens/s and forward passes per token, and the KV cache
    per row; ``ratio_columns`` name the ratios."""
    print(
        "| configuration | requests | tokens | wall s | tok/s | "
        + "".join(f"{name} | " for name in ratio_columns)
        + "forward passes/token | KV/row |"
    )
    print("|---" * (7 + len(ratio_columns)) + "|")
    for label, runs, ratios in rows:
        first = runs[0]
        kv = f"{first.kv_bytes_per_row / 2**20:.1f} MiB" if first.kv_bytes_per_row else "-"
        wall = statistics.median(r.wall_s for r in runs)
        speed = statistics.median(r.tokens_per_s for r in runs)
        passes = statistics.median(r.forward_per_token for r in runs)
        print(
            f"| {label} | {first.requests} | {first.tokens} | {wall:.1f} | {speed:.1f} | "
            + "".join(f"{ratio} | " for ratio in ratios)
            + f"{passes:.3f} | {kv} |"
        )


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

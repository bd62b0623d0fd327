"""Serving: throughput and latency of ``backtrack serve`` next to a peer server.

Two peers, chosen with ``--peer``:

* ``transformers`` (default): ``transformers serve`` with continuous batching, on the same
  model and weights (ours on ``--backend transformers``, fp32 on both).
* ``llama-cpp``: llama-cpp-python's own server (``python -m llama_cpp.server``) on the same
  GGUF file and the same ``--threads`` (ours on ``--backend llama.cpp``). It needs
  ``pip install 'llama-cpp-python[server]'`` (sse-starlette, starlette-context,
  pydantic-settings). Its known behaviours, and what is done about each: it decodes one
  request at a time behind a lock (so its C=8 is 8 clients queued on one sequence: that is
  what a user of it gets); with its default ``--interrupt_requests True`` a new request cuts
  the running stream short, so it is started with ``--interrupt_requests False``; it applies
  ``repeat_penalty`` 1.1 by default, so every request to it sends ``repeat_penalty: 1.0``
  (both servers then decode greedily, the same argmax); it sends no usage in streams
  (``stream_options`` is not implemented), so its completion tokens are ``max_tokens`` for a
  choice that finished for ``length`` and otherwise the number of chunks that carried text
  (one token each; it holds back an incomplete UTF-8 sequence, so this can undercount,
  never overcount: an error in our favour of at most a token or two per request that stopped
  before ``max_tokens``, and greedy HumanEval completions of 64 tokens nearly all run to it).
  It also keeps the previous request's KV cache and reuses the longest common prefix with
  the next prompt: consecutive requests here are different HumanEval prompts (a shared
  prefix of a few tokens such as ``from typing import List``, which it keeps as a feature
  a user gets too), and the warm-up uses a prompt that no measured request follows.

Each server runs as a subprocess on loopback and is warmed up with one request; then each
round measures every configuration at each concurrency level in turn, one at a time (on 2
cores two loads would share the CPU): ``C`` clients (the official ``openai`` async client)
each send streaming completions back to back until ``max(C, --min-requests)`` requests are
done. Every request is a HumanEval prompt, greedy (temperature 0; ``transformers serve`` only
samples when the model's generation config says so), ``--max-tokens`` tokens, no stop strings.
Per level it prints aggregate tokens/s (completion tokens over the level's wall time), latency
p50/p99 (request sent to last byte) and time to first text p50, and the ratios of our tokens/s
and our time to first text to the peer's at the same level, paired within each round
(``--repeats``), as the median and range over rounds.

Ours runs once per operator of ``--operators`` on one server: ``never`` (plain decoding) and
``probability-trend`` (its extra forward passes, and streaming that waits for the rollback
window), chosen per request through ``extra_body``.

    python benchmarks/bench_serve.py                          # default model, fp32 on both
    python benchmarks/bench_serve.py --concurrency 8 --repeats 3

The llama.cpp comparison of issue 31 (target: >= 1.0x tokens/s at C=1, >= 2x at C=8), run
on a quiet machine::

    python benchmarks/bench_serve.py --peer llama-cpp --concurrency 1,8 --repeats 5 \
        --min-requests 16 --max-tokens 64 --threads 2 --operators never

Smoke run (proves the script works; its figures mean nothing)::

    python benchmarks/bench_serve.py --peer llama-cpp --model smollm2-135m-instruct \
        --concurrency 1,2 --repeats 1 --min-requests 2 --max-tokens 16 --threads 2 \
        --operators never
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from common import free_port

from backtrack.evaluation.data import humaneval_prompts


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
    tokens = text_chunks = 0
    finish = None
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
            if chunk.choices and chunk.choices[0].text:
                text_chunks += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except openai.APIError as exc:
        level.errors += 1
        print(f"  error: {exc}", file=sys.stderr)
        return
    level.latencies.append(time.perf_counter() - start)
    if first is not None:
        level.first_text.append(first)
    if not tokens:  # no usage in the stream (llama_cpp.server): see the module docstring
        tokens = max_tokens if finish == "length" else text_chunks
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
    """One short request (the peer's continuous batching starts its worker on the first).

    Its prompt is the last one, not the first that is measured next: llama_cpp.server keeps
    the previous request's KV cache and reuses its longest common prefix, so warming up on
    the first measured prompt would hand it that prompt's prefill for free.
    """
    short = argparse.Namespace(**{**vars(args), "min_requests": 1, "max_tokens": 8})
    asyncio.run(run_level(server, "warm-up", 1, prompts[-1:], short, extra))


def peer_server(args, port: int) -> tuple[str, Server, dict | None]:
    """The peer's label, server and per-request extra body."""
    if args.peer == "llama-cpp":
        from backtrack.models import prepare_gguf

        gguf, _ = prepare_gguf(args.model)
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
            "--model_alias", args.model, "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
            "--n_ctx", str(args.n_ctx), "--interrupt_requests", "False",
        ]  # fmt: skip
        # Its default repeat_penalty is 1.1; 1.0 makes its greedy decoding the same argmax.
        return (
            PEERS["llama-cpp"],
            Server(PEERS["llama-cpp"], command, port, args.model),
            {"repeat_penalty": 1.0},
        )
    from backtrack.models import prepare_model

    model_dir = Path(prepare_model(args.model))
    transformers_bin = str(Path(sys.executable).parent / "transformers")
    command = [
        transformers_bin, "serve", str(model_dir), "--host", "127.0.0.1", "--port",
        str(port), "--device", "cpu", "--dtype", args.dtype, "--continuous-batching",
    ]  # fmt: skip
    return PEERS["transformers"], Server(PEERS["transformers"], command, port, str(model_dir)), None


def ours_command(args, backend: str, port: int) -> list[str]:
    backtrack_bin = shutil.which("backtrack") or str(Path(sys.executable).parent / "backtrack")
    command = [
        backtrack_bin, "serve", "--model", args.model, "--port", str(port),
        "--backend", backend, "--max-batch", str(args.max_batch), "--max-queue", "1024",
    ]  # fmt: skip
    if backend == "transformers":  # GGUF weights on llama.cpp keep their quantization
        command += ["--dtype", args.dtype]
    else:
        command += ["--threads", str(args.threads)]
    return command


def print_ratios(configs, measured, args, peer: str) -> None:
    """Ours over the peer, paired within each round: tokens/s, and time to first text."""
    print(f"\nours / {peer}, per round (median [min, max]):")
    for label, _, _ in configs:
        if label == peer:
            continue
        for what, value in (
            ("tokens/s", lambda lv: lv.tokens_per_s),
            ("first text p50", lambda lv: lv.pct(lv.first_text, 0.5)),
        ):
            cells = []
            for clients in args.concurrency:
                pairs = zip(measured[(label, clients)], measured[(peer, clients)], strict=True)
                ratios = [value(mine) / value(theirs) for mine, theirs in pairs if value(theirs)]
                if not ratios:
                    cells.append(f"C={clients}: n/a")
                    continue
                spread = f"[{min(ratios):.2f}, {max(ratios):.2f}]"
                cells.append(f"C={clients}: {statistics.median(ratios):.2f}x {spread}")
            print(f"  {label:<30} {what:<15} " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--min-requests", type=int, default=4, help="Requests per level, at least.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="Rounds; ratios pair each round.")
    parser.add_argument("--dtype", default="float32", help="Both servers' dtype (transformers).")
    parser.add_argument("--max-batch", type=int, default=32, help="Our batch (>= the top C).")
    parser.add_argument("--peer", choices=sorted(PEERS), default="transformers")
    parser.add_argument(
        "--ours-backends",
        default=None,
        help="Comma list: transformers,llama.cpp (default: the peer's: transformers for "
        "transformers, llama.cpp for llama-cpp).",
    )
    parser.add_argument(
        "--operators", default="never,probability-trend", help="Ours, one run per operator."
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="llama.cpp threads, both servers."
    )
    parser.add_argument("--n-ctx", type=int, default=4096, help="llama_cpp.server's context.")
    parser.add_argument("--no-peer", action="store_true", help="Skip the peer.")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.ours_backends is None:
        args.ours_backends = "llama.cpp" if args.peer == "llama-cpp" else "transformers"
    prompts = humaneval_prompts(args.prompts)
    llama = args.peer == "llama-cpp" or "llama.cpp" in args.ours_backends
    print(
        f"model {args.model}, peer {args.peer}, ours on {args.ours_backends}, "
        + (f"{args.threads} llama.cpp threads" if llama else f"dtype {args.dtype}")
        + f", greedy, {args.max_tokens} tokens, levels {args.concurrency}, "
        f"{args.repeats} round(s), {os.cpu_count()} cores"
    )
    # Every server is started first and stays up (an idle one uses no CPU: 0.4% measured for
    # transformers serve); then each round measures every configuration at each level in turn,
    # so a ratio pairs two measurements taken minutes apart, not a whole run apart.
    configs: list[tuple[str, Server, dict | None]] = []
    peer = PEERS[args.peer]
    with contextlib.ExitStack() as stack:
        for backend in args.ours_backends.split(","):
            port = free_port()
            server = stack.enter_context(
                Server(
                    f"backtrack serve ({backend})",
                    ours_command(args, backend, port),
                    port,
                    args.model,
                )
            )
            for operator in args.operators.split(","):
                configs.append(
                    (f"ours {backend} {operator}", server, {"backtrack": {"operator": operator}})
                )
        if not args.no_peer:
            label, server, extra = peer_server(args, free_port())
            configs.append((label, stack.enter_context(server), extra))
        for _, server, extra in configs:
            warm_up(server, prompts, args, extra)
        measured: dict[tuple[str, int], list[Level]] = {}
        for round_ in range(args.repeats):
            print(f"round {round_ + 1}:", flush=True)
            for clients in args.concurrency:
                for label, server, extra in configs:
                    level = measure(server, label, clients, prompts, args, extra)
                    measured.setdefault((label, clients), []).append(level)
    if not args.no_peer:
        print_ratios(configs, measured, args, peer)


PEERS = {"transformers": "transformers serve (CB)", "llama-cpp": "llama_cpp.server"}

if __name__ == "__main__":
    main()

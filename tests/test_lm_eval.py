"""lm-evaluation-harness against ``backtrack serve``: its ``local-completions`` model runs a
``generate_until`` task and a ``loglikelihood`` (multiple-choice) task, both small local tasks
shipped in tests/data/lm_eval_tasks/ (the hub is not reachable in tests).

The server is the real CLI (``backtrack serve``, a subprocess on loopback, the tiny model: the
whole test takes about 40 s on 2 cores). lm-eval tokenizes with the same tokenizer (saved from
the tiny model), sends each (context, continuation) as token ids with ``echo``, ``logprobs: 1``
and ``max_tokens: 1``, and sums the continuation's echoed log-probabilities. So every
per-sample log-likelihood it reports must be the server's own numbers for that continuation,
asked for again here the way lm-eval asks: the same floats summed in the same order (1e-9 is
there only for the JSON round trip of lm-eval's sample file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (the test extra)")

pytestmark = pytest.mark.integration

TASKS = Path(__file__).parent / "data" / "lm_eval_tasks"
SRC = Path(__file__).resolve().parents[1] / "src"
MODEL = "tiny-random-qwen2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``backtrack serve`` on loopback, and the tokenizer it uses saved where lm-eval reads it."""
    from backtrack.models.tiny import build_tiny_model

    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    tokenizer = build_tiny_model()[1]
    tokenizer.save_pretrained(tokenizer_dir)
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "backtrack.cli",
        "serve",
        "--model",
        MODEL,
        "--port",
        str(port),
    ]
    # A file, not a pipe: the server logs a line per request, and a pipe nobody reads fills up.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(log.read().decode(errors="replace")[-4000:])
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "backtrack serve did not start"
                time.sleep(0.2)
            yield url, tokenizer_dir, tokenizer
        finally:
            process.terminate()
            process.wait(timeout=30)


def _lm_eval(url: str, tokenizer_dir: Path, task: str, out: Path) -> tuple[dict, list[dict]]:
    """Run lm-eval's CLI on one task; its results and its per-sample records."""
    model_args = (
        f"base_url={url}/v1/completions,model={MODEL},tokenizer_backend=huggingface,"
        f"tokenizer={tokenizer_dir},max_length=512"
    )
    command = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions",
        "--model_args", model_args, "--tasks", task, "--include_path", str(TASKS),
        "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    # cwd: the tasks' data_files are relative to it.
    run = subprocess.run(
        command, cwd=TASKS, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [results_file] = out.rglob("results_*.json")
    [samples_file] = out.rglob(f"samples_{task}_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line]
    return json.loads(results_file.read_text())["results"][task], samples


def _metrics_are_fractions(results: dict, name: str) -> None:
    value = results[f"{name},none"]
    assert isinstance(value, float) and 0.0 <= value <= 1.0, results


def test_generate_until_task(served, tmp_path):
    url, tokenizer_dir, _ = served
    results, samples = _lm_eval(url, tokenizer_dir, "backtrack_gen", tmp_path)
    _metrics_are_fractions(results, "exact_match")
    assert len(samples) == 5
    assert all(isinstance(s["resps"][0][0], str) for s in samples)


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``TemplateLM._encode_pair`` for a causal model: trailing spaces of the
    context go to the continuation; the whole is encoded and split at the context's length."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx) :]


def test_loglikelihood_task_uses_the_servers_logprobs(served, tmp_path):
    url, tokenizer_dir, tokenizer = served
    results, samples = _lm_eval(url, tokenizer_dir, "backtrack_mc", tmp_path)
    _metrics_are_fractions(results, "acc")
    assert len(samples) == 5
    checked = 0
    for sample in samples:
        for (reported, _), args in zip(
            sample["filtered_resps"], sample["arguments"].values(), strict=True
        ):
            ctx, cont = _encode_pair(tokenizer, args["arg_0"], args["arg_1"])
            # What lm-eval sends for a loglikelihood request.
            body = {
                "model": MODEL, "prompt": [ctx + cont], "max_tokens": 1, "temperature": 0,
                "logprobs": 1, "echo": True, "seed": 1234,
            }  # fmt: skip
            reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
            lp = reply["choices"][0]["logprobs"]["token_logprobs"]
            assert len(lp) == len(ctx) + len(cont) + 1  # the prompt, then the one new token
            ours = sum(lp[len(ctx) : -1])
            assert abs(float(reported) - ours) <= 1e-9, (reported, ours)
            checked += 1
    assert checked == 15

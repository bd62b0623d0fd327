"""The peer of the ban-list comparison: the ``backtrack-sampler`` package's antislop strategy
(PyPI 3.2.1, its llama.cpp provider) on the same model, prompts and sampling as
``ban_quality.py``, writing records ``ban_scores.py`` scores alike (configuration
``backtrack-sampler``).

Install it as the package says (no dependencies of its own; it needs torch and
llama-cpp-python, which the test extras have): ``pip install --no-deps backtrack-sampler==3.2.1``.
It bans each phrase outright (seven case and space variants, as token sequences; no factors),
checks every phrase against the whole completion after every token, and runs one sequence at
a time, so it is measured on fewer completions than the batched configurations (``--runs``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from ban_quality import WRITING_TEMPERATURE, done_keys, writing_prompts

from backtrack.engine.banlists import read_ban_file

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="The folder of records.jsonl (appended to).")],
    ban_list: Annotated[Path, typer.Option("--list")],
    name: Annotated[str, typer.Option()],
    model: Annotated[str, typer.Option()] = "qwen2.5-coder-0.5b-instruct",
    runs: Annotated[int, typer.Option(help="Seed modifiers per prompt.")] = 1,
    max_new_tokens: Annotated[int, typer.Option()] = 300,
    threads: Annotated[int, typer.Option()] = 2,
    limit: Annotated[int | None, typer.Option()] = None,
    probe: Annotated[
        bool, typer.Option(help="Only time its set-up and first tokens with this list.")
    ] = False,
) -> None:
    import torch
    from backtrack_sampler import BacktrackSampler
    from backtrack_sampler.provider.llamacpp_provider import LlamacppProvider
    from backtrack_sampler.strategy.antislop_strategy import AntiSlopStrategy
    from llama_cpp import Llama, LlamaRAMCache
    from transformers import AutoTokenizer

    from backtrack.models.prepare import prepare_gguf

    phrases = list(read_ban_file(ban_list))
    gguf, tokenizer_dir = prepare_gguf(model)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    llm = Llama(str(gguf), n_ctx=4096, n_threads=threads, verbose=False)
    provider = LlamacppProvider(llm, LlamaRAMCache(), torch.device("cpu"))
    start = time.perf_counter()
    strategy = AntiSlopStrategy(provider, phrases)
    print(f"set-up: {time.perf_counter() - start:.1f} s for {len(phrases)} phrases", flush=True)
    sampler = BacktrackSampler(provider, strategy)
    records = out / "records.jsonl"
    done = done_keys(records)
    prompts = writing_prompts(runs)
    if limit:
        keep = sorted({p for p, _, _ in prompts}, key=int)[:limit]
        prompts = [p for p in prompts if p[0] in keep]
    for key, run, text in prompts:
        if (name, "backtrack-sampler", key, run) in done:
            continue
        chat = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        torch.manual_seed(1000 * int(key) + run)
        tokens, t0 = [], time.perf_counter()
        for token in sampler.generate(
            rendered,
            max_new_tokens=4 if probe else max_new_tokens,
            temperature=WRITING_TEMPERATURE,
            top_k=50,
        ):
            tokens.append(token)
        wall = time.perf_counter() - t0
        if tokens and tokens[-1] == llm.token_eos():
            tokens.pop()
        if probe:
            print(f"probe: {len(tokens)} tokens in {wall:.1f} s", flush=True)
            return
        record = {
            "model": model, "list": name, "config": "backtrack-sampler", "prompt": key,
            "run": run, "text": tokenizer.decode(tokens), "tokens": len(tokens), "samples": 1,
            "tokens_decoded": len(tokens), "forward_passes": None, "rollbacks": 0,
            "ban_rollbacks": 0, "finish_reason": None, "wall_s": wall, "batch_size": 1,
            "max_new_tokens": max_new_tokens, "temperature": WRITING_TEMPERATURE,
        }  # fmt: skip
        with records.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{key}/{run}: {len(tokens)} tokens, {len(tokens) / wall:.2f} tok/s", flush=True)


if __name__ == "__main__":
    app()

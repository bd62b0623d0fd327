"""What a ban list does to real text, and what it costs, side by side with the alternatives.

The measurement of issue 40 (docs/results.md, "Phrase bans"). For one model, on the EQ-Bench
creative-writing prompts (each with its seed modifiers 0..R-1, one sampling seed each), it
decodes every configuration below for one ban list and writes one JSON record per completion
to ``OUT/records.jsonl`` (resumable: a rerun decodes only what is missing):

- ``none``: no bans (shared by both lists; decoded once per model);
- ``instruction``: the list as an instruction appended to the prompt (the full list does not
  fit a context: its ``INSTRUCTION_PHRASES`` strongest phrases);
- ``token-ban``: a logit bias on the first token of every variant of every phrase (as written,
  lower case, capitalised, upper case, each with and without a leading space): -100 for a
  hard list, ``ln(f ** s)`` for a soft one; what a user of a plain server does;
- ``bad-words``: vLLM's ``bad_words`` rule (the last token of a phrase whose other tokens end
  the text is banned; no rollback; :class:`~backtrack.operators.bad_words.BadWords`);
- ``resample``: plain sampling, resampled whole (a new seed) while the text has a hit, at most
  ``RESAMPLES`` samples; the sample with the fewest hits is kept; every sample's tokens count;
- ``ours-hard``: this project's ban, every phrase banned outright;
- ``ours-soft``: this project's soft ban, each phrase's own factor (strength 1).

Ours match whole words, case-insensitively, as the independent matcher of ``ban_scores.py``
counts hits. Every configuration decodes with the same sampler, seeds and batch
(``BatchDecoder``, ``--batch-size``), so the comparisons are paired and the tokens per second
comparable. ``python scripts/ban_scores.py`` scores the records and writes the table and chart.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer

from backtrack.engine.banlists import read_ban_file

# Creative writing is sampled warmer than the project's code default (0.5): 0.7, the
# temperature of the measurements that opened issue 40.
WRITING_TEMPERATURE = 0.7
RESAMPLES = 4
INSTRUCTION_PHRASES = 500
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PROMPTS = DATA / "writing" / "eqbench_creative_writing_prompts_v2.json"
CONFIGS = ("none", "instruction", "token-ban", "bad-words", "resample", "ours-hard", "ours-soft")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """Decode the ban-list comparison (then score it with ban_scores.py)."""


def writing_prompts(runs: int) -> list[tuple[str, int, str]]:
    """``(prompt id, run, user message)``: each prompt with its seed modifier ``run``."""
    data = json.loads(PROMPTS.read_text())
    out = []
    for key, item in data.items():
        for run in range(runs):
            modifier = item["seed_modifiers"][run % len(item["seed_modifiers"])]
            out.append((key, run, item["writing_prompt"].replace("<SEED>", modifier)))
    return out


def variants(phrase: str) -> list[str]:
    """The spellings token banning has to cover: as written, lower, capitalised, upper, each
    with and without a leading space (the antislop sampler's six, plus as written)."""
    forms = {phrase, phrase.lower(), phrase.capitalize(), phrase.upper()}
    return sorted({v for form in forms for v in (form, " " + form)})


def token_bias(tokenizer, factors: dict[str, float], hard: bool) -> dict[int, float]:
    """``{first token: bias}`` over every variant of every phrase (the strongest where several
    phrases begin with one token)."""
    spelled = [(v, f) for p, f in factors.items() for v in variants(p)]
    ids = tokenizer([v for v, _ in spelled], add_special_tokens=False)["input_ids"]
    bias: dict[int, float] = {}
    for (_, factor), tokens in zip(spelled, ids, strict=True):
        if not tokens:
            continue
        value = -100.0 if hard or factor <= 0 else max(-100.0, math.log(factor))
        bias[tokens[0]] = min(value, bias.get(tokens[0], 0.0))
    return {t: b for t, b in bias.items() if b < 0}


def instruction(factors: dict[str, float]) -> str:
    """The list as an instruction (the strongest phrases first, at most INSTRUCTION_PHRASES)."""
    phrases = sorted(factors, key=lambda p: factors[p])[:INSTRUCTION_PHRASES]
    return "\n\nNever use any of these words or phrases: " + "; ".join(phrases) + "."


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        record = json.loads(line)
        keys.add((record["list"], record["config"], record["prompt"], record["run"]))
    return keys


def _request(tok, suffix, bad_words, base, extra, prompt, sample: int = 0):
    """One batch request: the prompt rendered by the chat template, the operator, the config
    with the seed of (prompt, run, sample)."""
    from backtrack.engine import GenerationConfig
    from backtrack.operators import BadWords

    key, run, text = prompt
    chat = [{"role": "user", "content": text + suffix}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    seed = 1000 * int(key) + run + 100_000 * sample
    operator = BadWords(file=bad_words) if bad_words else None
    return rendered, operator, GenerationConfig(**base, **extra, seed=seed)


@app.command()
def decode(
    out: Annotated[Path, typer.Option(help="Folder of records.jsonl (resumable).")],
    ban_list: Annotated[Path, typer.Option("--list", help="The ban list (antislop JSON).")],
    name: Annotated[str, typer.Option(help="The list's name in the records.")],
    model: Annotated[str, typer.Option()] = "qwen2.5-coder-0.5b-instruct",
    configs: Annotated[str, typer.Option(help="Comma-separated.")] = ",".join(CONFIGS),
    runs: Annotated[int, typer.Option(help="Seed modifiers (and seeds) per prompt.")] = 3,
    max_new_tokens: Annotated[int, typer.Option()] = 300,
    batch_size: Annotated[int, typer.Option()] = 16,
    threads: Annotated[int | None, typer.Option()] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N prompts.")] = None,
) -> None:
    """Decode every configuration for one list; one record per completion."""
    from backtrack import load_model
    from backtrack.engine.batch import BatchDecoder

    chosen = [c.strip() for c in configs.split(",")]
    unknown = sorted(set(chosen) - set(CONFIGS))
    if unknown:
        raise typer.BadParameter(f"unknown configurations {unknown}; known: {CONFIGS}")
    factors = read_ban_file(ban_list)
    out.mkdir(parents=True, exist_ok=True)
    records = out / "records.jsonl"
    done = done_keys(records)
    prompts = writing_prompts(runs)
    if limit:
        keep = sorted({p for p, _, _ in prompts}, key=int)[:limit]
        prompts = [p for p in prompts if p[0] in keep]
    mdl, tok = load_model(model, backend="llama.cpp", threads=threads)
    decoder = BatchDecoder(mdl, tok)
    base = dict(max_new_tokens=max_new_tokens, temperature=WRITING_TEMPERATURE)
    entry = f"{name}={ban_list}"
    ours = dict(ban_files=[entry], ban_whole_words=True, banned_ignore_case=True)
    settings = {
        "none": {},
        "instruction": {},
        "token-ban": {"logit_bias": None},
        "bad-words": {},
        "resample": {},
        "ours-hard": {**ours, "ban_hard": True},
        "ours-soft": ours,
    }
    hard_list = all(f == 0 for f in factors.values())
    from ban_scores import Matcher  # the independent matcher (resample stops on a clean text)

    matcher = Matcher(factors)
    # Not measured: the first batch allocates the contexts and warms the caches.
    warm = functools.partial(_request, tok, "", None, {**base, "max_new_tokens": 4}, {})
    decoder.generate_all([warm(p) for p in prompts[:batch_size]], batch_size=batch_size)
    for config in chosen:
        list_name = "-" if config == "none" else name
        todo = [p for p in prompts if (list_name, config, p[0], p[1]) not in done]
        if not todo:
            continue
        extra = dict(settings[config])
        if config == "token-ban":
            extra["logit_bias"] = token_bias(tok, factors, hard_list)
        suffix = instruction(factors) if config == "instruction" else ""
        request = functools.partial(
            _request, tok, suffix, str(ban_list) if config == "bad-words" else None, base, extra
        )

        start = time.perf_counter()
        results = decoder.generate_all([request(p) for p in todo], batch_size=batch_size)
        samples = [[r] for r in results]
        if config == "resample":  # again, for every text with a hit, up to RESAMPLES samples
            for sample in range(1, RESAMPLES):
                again = [i for i, s in enumerate(samples) if all(matcher.hits(x.text) for x in s)]
                if not again:
                    break
                more = decoder.generate_all(
                    [request(todo[i], sample) for i in again], batch_size=batch_size
                )
                for i, result in zip(again, more, strict=True):
                    samples[i].append(result)
        wall = time.perf_counter() - start
        total_tokens = sum(len(r.token_ids) for s in samples for r in s)
        with records.open("a") as f:
            for (key, run, _), tries in zip(todo, samples, strict=True):
                best = min(tries, key=lambda r: matcher.hits(r.text))
                c = best.counts
                record = {
                    "model": model, "list": list_name, "config": config, "prompt": key,
                    "run": run, "text": best.text, "tokens": len(best.token_ids),
                    "samples": len(tries),
                    "tokens_decoded": sum(len(r.token_ids) for r in tries),
                    "forward_passes": sum(r.counts.forward_passes for r in tries),
                    "rollbacks": c.backtracks, "ban_rollbacks": c.ban_rollbacks,
                    "finish_reason": best.finish_reason,
                    # The batch's wall time shared by its completions, by tokens decoded.
                    "wall_s": wall * sum(len(r.token_ids) for r in tries) / total_tokens,
                    "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                    "temperature": WRITING_TEMPERATURE,
                }  # fmt: skip
                f.write(json.dumps(record) + "\n")
        final = sum(len(s[0].token_ids) for s in samples)
        print(f"{name} {config}: {len(todo)} completions, {final / wall:.1f} tok/s", flush=True)


if __name__ == "__main__":
    app()

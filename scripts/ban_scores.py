"""Score the records of ``ban_quality.py`` and write the table and chart of issue 40.

For every completion, measured independently of the engine that wrote it:

- **hits per 1,000 words**: phrases of the list in the final text, counted by Python's ``re``
  (one case-insensitive alternation with word boundaries, longest phrase first), not by the
  project's matcher;
- **non-words per 1,000 words**: words of three or more letters that ``wordfreq`` has never
  seen in English (the broken-word failure of token banning: "tapestr", "Elar");
- **log-likelihood per token** of the completion under the *other* model (the 1.5B scores the
  0.5B's text and the reverse; llama.cpp, the same tokenizer family);
- **lexical diversity**: MATTR (``lexicalrichness``, window 50) and distinct-2;
- tokens per second of the configuration's batch, forward passes per final token (every
  sample of ``resample`` counts), rollbacks per 1,000 tokens.

Differences against ``none`` (and between any two configurations) are paired on (prompt, run)
and their 95% intervals bootstrapped over prompts (the runs of a prompt stay together).
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class Matcher:
    """Hits of a list in a text, by ``re`` (independent of ``backtrack.engine.banned``)."""

    def __init__(self, factors: dict[str, float]) -> None:
        phrases = sorted({p.lower() for p in factors}, key=len, reverse=True)
        self.pattern = re.compile(
            r"(?<!\w)(?:" + "|".join(map(re.escape, phrases)) + r")(?!\w)", re.IGNORECASE
        )

    def hits(self, text: str) -> int:
        return sum(1 for _ in self.pattern.finditer(text))


def words(text: str) -> list[str]:
    return WORD.findall(text)


def non_words(text: str) -> int:
    from wordfreq import zipf_frequency

    return sum(1 for w in words(text) if len(w) >= 3 and zipf_frequency(w, "en") == 0)


def diversity(text: str) -> tuple[float, float]:
    """MATTR (window 50, or the text's length if shorter) and distinct-2."""
    from lexicalrichness import LexicalRichness

    tokens = [w.lower() for w in words(text)]
    if len(tokens) < 2:
        return float("nan"), float("nan")
    mattr = LexicalRichness(" ".join(tokens)).mattr(window_size=min(50, len(tokens) - 1))
    bigrams = list(zip(tokens, tokens[1:], strict=False))
    return mattr, len(set(bigrams)) / len(bigrams)


class Scorer:
    """Mean log-probability per token of a completion under a model (llama.cpp, every
    position's logits in one evaluation of prompt and completion)."""

    def __init__(self, model: str) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        from backtrack.models.prepare import prepare_gguf

        gguf, tokenizer_dir = prepare_gguf(model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.llm = Llama(str(gguf), n_ctx=4096, logits_all=True, n_batch=512, verbose=False)

    def loglik(self, user: str, text: str) -> float:
        import numpy as np

        chat = [{"role": "user", "content": user}]
        prompt = self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )
        head = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not tail:
            return float("nan")
        self.llm.reset()
        self.llm.eval(head + tail)
        logits = np.asarray(self.llm.scores[len(head) - 1 : len(head) + len(tail) - 1], np.float64)
        top = logits.max(axis=1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        picked = logits[np.arange(len(tail)), tail]
        return float((picked - logz).mean())


@app.command()
def score(
    records: Annotated[Path, typer.Argument(help="records.jsonl of ban_quality.py")],
    lists: Annotated[list[str], typer.Option("--list", help="NAME=PATH of each list.")],
    judge: Annotated[str, typer.Option(help="The other model (log-likelihood).")],
    runs: Annotated[int, typer.Option()] = 3,
    loglik_runs: Annotated[
        int, typer.Option(help="Score log-likelihood on runs 0..N-1 only (the judge is slow).")
    ] = 3,
) -> None:
    """Add scores.jsonl next to the records (resumable)."""
    from ban_quality import writing_prompts

    from backtrack.engine.banlists import read_ban_file

    matchers = {}
    for entry in lists:
        name, _, path = entry.partition("=")
        matchers[name] = Matcher(read_ban_file(path))
    out = records.with_name("scores.jsonl")
    seen = set()
    if out.exists():
        seen = {(r["list"], r["config"], r["prompt"], r["run"])
                for r in map(json.loads, out.read_text().splitlines())}  # fmt: skip
    users = {(k, r): text for k, r, text in writing_prompts(runs)}
    scorer = None
    with out.open("a") as f:
        for record in map(json.loads, records.read_text().splitlines()):
            key = (record["list"], record["config"], record["prompt"], record["run"])
            if key in seen:
                continue
            judged = record["run"] < loglik_runs
            if scorer is None and judged:
                scorer = Scorer(judge)
            text, n = record["text"], max(len(words(record["text"])), 1)
            mattr, distinct2 = diversity(text)
            row = {
                **{k: record[k] for k in ("list", "config", "prompt", "run", "tokens")},
                "words": n,
                "hits": {name: m.hits(text) * 1000 / n for name, m in matchers.items()},
                "non_words": non_words(text) * 1000 / n,
                "loglik": scorer.loglik(users[key[2:]], text) if judged else None,
                "mattr": mattr,
                "distinct2": distinct2,
            }
            f.write(json.dumps(row) + "\n")
            f.flush()


def bootstrap(diffs: dict[str, list[float]], resamples: int = 2000) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% interval, resampling prompts (each prompt's runs
    together)."""
    prompts = sorted(diffs)
    values = [v for p in prompts for v in diffs[p]]
    rng = random.Random(0)
    means = []
    for _ in range(resamples):
        sample = [v for p in rng.choices(prompts, k=len(prompts)) for v in diffs[p]]
        means.append(statistics.fmean(sample))
    means.sort()
    return statistics.fmean(values), means[int(0.025 * resamples)], means[int(0.975 * resamples)]


def _metric(row: dict, metric: str, list_name: str) -> float | None:
    return row["hits"][list_name] if metric == "hits" else row[metric]


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="Result folders (one per model).")],
    markdown: Annotated[Path, typer.Option(help="Write the table here.")],
    plot: Annotated[Path | None, typer.Option(help="Write the chart here.")] = None,
) -> None:
    """The paired table (each configuration against ``none``) and a chart."""
    lines, chart = [], []
    for folder in folders:
        records, scores = (_keyed(folder / name) for name in ("records.jsonl", "scores.jsonl"))
        model = next(iter(records.values()))["model"]
        list_names = sorted({k[0] for k in records} - {"-"})
        for list_name in list_names:
            lines += [f"\n### {model}, list `{list_name}`\n", _header()]
            configs = sorted({k[1] for k in records if k[0] == list_name}, key=_order)
            for config in ["none", *configs]:
                source = "-" if config == "none" else list_name
                row, cells = _row(records, scores, source, config, list_name)
                if row is not None:
                    lines.append(row)
                    chart.append((model, list_name, config, cells))
    markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if plot is not None:
        _plot(chart, plot)


@app.command()
def code(
    results: Annotated[Path, typer.Argument(help="A result directory of `backtrack eval`.")],
    calls: Annotated[Path, typer.Option(help="The banned calls, one per line.")],
    markdown: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Banned calls in the final completions of an evaluation, per configuration (substring
    counts over the code that was scored, by ``str.count``)."""
    banned = [line for line in calls.read_text().splitlines() if line]
    per_config: dict[str, list[int]] = defaultdict(list)
    for record in map(json.loads, (results / "results.jsonl").read_text().splitlines()):
        per_config[record["config"]].append(sum(record["completion"].count(b) for b in banned))
    lines = ["| configuration | completions | with a banned call | banned calls per 100 "
             "completions |", "|---|---|---|---|"]  # fmt: skip
    for config, counts in per_config.items():
        with_any, n = sum(1 for c in counts if c), len(counts)
        share, rate = 100 * with_any / n, 100 * sum(counts) / n
        lines.append(f"| {config} | {n} | {with_any} ({share:.1f}%) | {rate:.1f} |")
    print("\n".join(lines))
    if markdown is not None:
        markdown.write_text("\n".join(lines) + "\n")


def _keyed(path: Path) -> dict[tuple, dict]:
    rows = map(json.loads, path.read_text().splitlines())
    return {(r["list"], r["config"], r["prompt"], r["run"]): r for r in rows}


def _order(config: str) -> int:
    from ban_quality import CONFIGS

    return CONFIGS.index(config) if config in CONFIGS else len(CONFIGS)


def _header() -> str:
    names = ("configuration", "n", "hits/1k words", "non-words/1k",
             "log-lik/token (other model)", "MATTR", "distinct-2", "tok/s vs none",
             "fwd passes/token", "rollbacks/1k tok")  # fmt: skip
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


def _row(records, scores, source, config, list_name):
    """One configuration's row: its mean and, for every metric, its paired difference with
    ``none`` [95% CI]."""
    mine = {(k[2], k[3]): s for k, s in scores.items() if k[0] == source and k[1] == config}
    base = {(k[2], k[3]): s for k, s in scores.items() if k[0] == "-" and k[1] == "none"}
    pairs = sorted(set(mine) & set(base))
    if not pairs:
        return None, None
    cells, shown = {}, []
    for metric in ("hits", "non_words", "loglik", "mattr", "distinct2"):
        # (prompt, run), this configuration's value, none's value; log-likelihood may be
        # scored on some runs only (score --loglik-runs), so each metric keeps its own pairs.
        both = [(p, _metric(mine[p], metric, list_name), _metric(base[p], metric, list_name))
                for p in pairs]  # fmt: skip
        scored = [(p, mine_value, base_value) for p, mine_value, base_value in both
                  if mine_value is not None and base_value is not None]  # fmt: skip
        mean = statistics.fmean(mine_value for _, mine_value, _ in scored)
        if config == "none":
            shown.append(f"{mean:.2f}" if metric in ("hits", "non_words") else f"{mean:.3f}")
            cells[metric] = (mean, None)
            continue
        diffs: dict[str, list[float]] = defaultdict(list)
        for p, mine_value, base_value in scored:
            diffs[p[0]].append(mine_value - base_value)
        diff, low, high = bootstrap(diffs)
        fmt = ".2f" if metric in ("hits", "non_words") else ".3f"
        shown.append(f"{mean:{fmt}} ({diff:+{fmt}} [{low:+{fmt}}, {high:+{fmt}}])")
        cells[metric] = (mean, (diff, low, high))
    rec = [records[(source, config, p[0], p[1])] for p in pairs]
    none = [records[("-", "none", p[0], p[1])] for p in pairs]
    speed = sum(r["tokens"] for r in rec) / sum(r["wall_s"] for r in rec)
    base_speed = sum(r["tokens"] for r in none) / sum(r["wall_s"] for r in none)
    counted = [r for r in rec if r["forward_passes"] is not None]  # the peer does not say
    passes = sum(r["forward_passes"] for r in counted) / max(sum(r["tokens"] for r in counted), 1)
    rollbacks = 1000 * sum(r["rollbacks"] for r in rec) / max(sum(r["tokens"] for r in rec), 1)
    cells["speed"] = (speed / base_speed, None)
    batch = f", B={rec[0]['batch_size']}" if rec[0]["batch_size"] != none[0]["batch_size"] else ""
    shown_passes = f"{passes:.2f}" if counted else "-"
    tail = (f"{speed / base_speed:.2f}x ({speed:.1f} tok/s{batch}) | {shown_passes} | "
            f"{rollbacks:.1f} |")  # fmt: skip
    row = f"| {config} | {len(pairs)} | " + " | ".join(shown) + f" | {tail}"
    return row, cells


def _plot(chart, path: Path) -> None:
    """Hits against non-words per configuration, one panel per model and list; the marker's
    label says tokens/s against none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(m, ln) for m, ln, _, _ in chart})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (model, list_name) in zip(axes[0], panels, strict=True):
        for m, ln, config, cells in chart:
            if (m, ln) != (model, list_name):
                continue
            hits, nonw = cells["hits"][0], cells["non_words"][0]
            ax.scatter(hits, nonw, s=60)
            ax.annotate(f"{config} ({cells['speed'][0]:.2f}x)", (hits, nonw), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax.set_title(f"{model}\nlist: {list_name}", fontsize=9)
        ax.set_xlabel("banned-list hits per 1,000 words (lower is better)")
        ax.set_ylabel("non-words per 1,000 words (lower is better)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    app()

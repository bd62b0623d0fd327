"""Tables and figures from ``backtrack eval`` result directories (``backtrack report``).

Everything is computed from ``results.jsonl`` alone (plus ``meta.json`` for labels), so a
report can be redone at any time, on partial directories too: when an interrupted run left
some (run, problem) cells missing for some configurations, only the largest rectangle of
problems x runs that *every* configuration has is used, so the comparison stays paired (the
excluded records are counted in a note).

Per configuration: mean pass@1 with a two-level bootstrap 95% CI (:func:`metrics.mean_pass1`),
the paired difference to ``base`` with its CI and the problems gained/lost
(:func:`metrics.compare`), accepted tokens/s (final completion tokens over decoding wall time),
forward passes per accepted token, throughput relative to ``base``, and mean backtracks and
discarded tokens per generation. Every row names its dataset and result directory, so several
directories (datasets, models) can be reported together.

How throughput is compared (:data:`THROUGHPUT_NOTE`): a record's wall time is that of its own
decoding, so tokens/s is per sequence. With ``--batch-size B > 1`` the engine configurations
decode B sequences at once (each row's time runs from admission to finish, shared with the
others), while the transformers baselines (``beam:N`` on transformers, ``hf-sample``) decode one
sequence at a time. Their per-sequence figures measure different things, so "x base" is given
only between configurations decoded the same way; compare the others with a side-by-side
benchmark (``benchmarks/bench_cost.py``). The engine's own beam search (``beam:N`` on llama.cpp)
is batched like the engine rows but holds N rows, so its tokens/s is divided by N: what its
rows would give as N rows of base.

Re-scoring stored completions (``report --rescore``, ``backtrack rescore``) runs the sandbox
and writes result directories: it lives in :mod:`~backtrack.evaluation.scoring.rescore`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backtrack.evaluation.reporting import metrics
from backtrack.evaluation.settings import BASE
from backtrack.evaluation.store import read_directory


@dataclass(frozen=True)
class Row:
    """One line of the report: a configuration of one model."""

    model: str
    config: str
    dataset: str
    directory: str
    n_problems: int
    n_runs: int
    pass1: metrics.Estimate
    diff: metrics.Estimate | None
    gained: int
    lost: int
    tokens_per_s: float | None
    passes_per_token: float | None
    throughput_ratio: float | None
    backtracks: float
    discarded: float


@dataclass
class ResultSet:
    """One result directory, loaded."""

    path: Path
    meta: dict
    records: list[dict]
    notes: list[str]

    @property
    def model(self) -> str:
        return str(self.meta.get("model") or (self.records[0]["model"] if self.records else "?"))

    @property
    def dataset(self) -> str:
        name = str(self.meta.get("dataset", "?"))
        split = self.meta.get("split")
        return f"{name}:{split}" if split else name

    @property
    def batch_size(self) -> int:
        return int(self.meta.get("batch_size", 1) or 1)


THROUGHPUT_NOTE = (
    "tok/s: final tokens over each sequence's own decoding time, per batch row (a beam "
    "search holds one row per beam); x base: only between configurations decoded the same "
    "way (engine rows share one batch; transformers baselines run one sequence at a time)"
)


def load_results(path: str | Path) -> ResultSet:
    """Read meta.json (optional) and results.jsonl; damaged lines become notes, not errors."""
    path = Path(path)
    return ResultSet(path, *read_directory(path))


def paired_subset(records: Sequence[dict]) -> tuple[list[dict], int]:
    """Records restricted to a problems x runs rectangle present for every configuration.

    Of the two natural rectangles (all problems x the runs complete for all of them; all runs
    x the problems complete in every run) the larger is kept. Returns (records, excluded).
    """
    by_config: dict[str, set[tuple[str, int]]] = {}
    for rec in records:
        by_config.setdefault(rec["config"], set()).add((str(rec["task_id"]), int(rec["run"])))
    if not by_config:
        return [], 0
    common = set.intersection(*by_config.values())
    tasks = sorted({t for t, _ in common})
    runs = sorted({r for _, r in common})
    full_runs = [r for r in runs if all((t, r) in common for t in tasks)]
    full_tasks = [t for t in tasks if all((t, r) in common for r in runs)]
    if len(tasks) * len(full_runs) >= len(full_tasks) * len(runs):
        keep = {(t, r) for t in tasks for r in full_runs}
    else:
        keep = {(t, r) for t in full_tasks for r in runs}
    kept = [r for r in records if (str(r["task_id"]), int(r["run"])) in keep]
    return kept, len(records) - len(kept)


def _configs_in_order(records: Sequence[dict], meta: dict) -> list[str]:
    """meta.json's order (base first), then any other config found in the records."""
    order = [c["name"] for c in meta.get("configs", [])]
    present = list(dict.fromkeys(r["config"] for r in records))
    ordered = [c for c in order if c in present] + [c for c in present if c not in order]
    if BASE in ordered:
        ordered.remove(BASE)
        ordered.insert(0, BASE)
    return ordered


def batch_rows(record: dict) -> int | None:
    """The batch rows a record's decoding held: its ``rows`` (beam search holds one per beam),
    1 for an engine record written before that field existed, None for a decoding outside
    the batch (transformers' ``model.generate``)."""
    return record.get("rows", 1 if record.get("kind", "engine") == "engine" else None)


def summarize(
    result: ResultSet, *, baseline: str = BASE, resamples: int = metrics.DEFAULT_RESAMPLES
) -> list[Row]:
    """Report rows for one result directory (see the module docstring for the metrics)."""
    records, excluded = paired_subset(result.records)
    if excluded:
        result.notes.append(
            f"{result.path}: {excluded} records outside the cells every configuration has "
            "were left out (interrupted run?)"
        )
    if not records:
        return []
    configs = _configs_in_order(records, result.meta)
    if baseline != BASE and baseline not in configs:
        raise ValueError(
            f"no configuration {baseline!r} to compare against; it has: {', '.join(configs)}"
        )
    has_base = baseline in configs
    base_tps = _tokens_per_s([r for r in records if r["config"] == baseline]) if has_base else None
    rows = []
    incomparable = []
    for name in configs:
        recs = [r for r in records if r["config"] == name]
        # Engine rows of a batched run are timed inside a shared batch; a transformers baseline
        # decodes alone (no "rows"). Their per-sequence speeds do not compare. The engine's
        # beam search is timed in the batch too, but holds one row per beam.
        rows_held = batch_rows(recs[0])
        batched_apart = result.batch_size > 1 and rows_held is None
        est = metrics.mean_pass1(records, name, resamples=resamples)
        diff, gained, lost = None, 0, 0
        if has_base and name != baseline:
            comparison = metrics.compare(records, name, baseline, resamples=resamples)
            diff, gained, lost = comparison.diff, len(comparison.gained), len(comparison.lost)
        tps = _tokens_per_s(recs)
        if tps is not None and rows_held:
            tps /= rows_held  # per row of the batch, what it would otherwise give base
        tokens = [int(r["final_tokens"]) for r in recs]
        fpt = (
            metrics.forward_passes_per_token([int(r["forward_passes"]) for r in recs], tokens)
            if sum(tokens) > 0
            else None
        )
        ratio = metrics.ratio_to_baseline(tps, base_tps) if tps is not None and base_tps else None
        if batched_apart and ratio is not None:
            ratio = None
            incomparable.append(name)
        rows.append(
            Row(
                model=result.model,
                config=name,
                dataset=result.dataset,
                directory=str(result.path),
                n_problems=est.n_problems,
                n_runs=est.n_runs,
                pass1=est,
                diff=diff,
                gained=gained,
                lost=lost,
                tokens_per_s=tps,
                passes_per_token=fpt,
                throughput_ratio=ratio,
                backtracks=float(np.mean([r.get("backtracks", 0) for r in recs])),
                discarded=float(np.mean([r.get("tokens_discarded", 0) for r in recs])),
            )
        )
    if incomparable:
        result.notes.append(
            f"{result.path}: no 'x base' for {', '.join(incomparable)}: decoded one sequence "
            f"at a time while the engine rows were batched ({result.batch_size}); compare "
            "their speed with benchmarks/bench_cost.py"
        )
    return rows


def _tokens_per_s(recs: Sequence[dict]) -> float | None:
    """Accepted tokens per second of decoding, or None when no time was recorded."""
    wall = [float(r["wall_time_s"]) for r in recs]
    if not recs or sum(wall) <= 0:
        return None
    return metrics.accepted_tokens_per_s([int(r["final_tokens"]) for r in recs], wall)


# --------------------------------------------------------------------------- rendering

HEADERS = (
    "dataset",
    "directory",
    "model",
    "config",
    "problems x runs",
    "pass@1 [95% CI]",
    "vs base [95% CI]",
    "gained/lost",
    "tok/s",
    "x base",
    "passes/tok",
    "backtracks",
    "discarded",
)


def headers(against: str = BASE) -> tuple[str, ...]:
    """The column names, with the differences and speed ratios named after their reference
    ("base", or "ref" for another configuration, which the table's note names in full)."""
    short = "base" if against == BASE else "ref"
    return tuple(h.replace("base", short) for h in HEADERS)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def row_cells(row: Row) -> list[str]:
    """The row as the strings both the terminal and the Markdown table show."""
    p = row.pass1
    diff = "-"
    if row.diff is not None:
        d = row.diff
        diff = f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    return [
        row.dataset,
        row.directory,
        row.model,
        row.config,
        f"{row.n_problems} x {row.n_runs}",
        f"{_pct(p.mean)} [{_pct(p.low)}, {_pct(p.high)}]",
        diff,
        f"+{row.gained}/-{row.lost}" if row.diff is not None else "-",
        f"{row.tokens_per_s:.1f}" if row.tokens_per_s is not None else "-",
        f"{row.throughput_ratio:.2f}" if row.throughput_ratio is not None else "-",
        f"{row.passes_per_token:.2f}" if row.passes_per_token is not None else "-",
        f"{row.backtracks:.2f}",
        f"{row.discarded:.1f}",
    ]


def markdown_table(rows: Sequence[Row], against: str = BASE) -> str:
    """A GitHub-flavoured Markdown table (pass@1 and differences in percentage points)."""
    names = headers(against)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    note = THROUGHPUT_NOTE + ".\n"
    if against != BASE:
        note += f"ref (differences paired against, speed relative to): `{against}`.\n"
    return "\n".join(lines) + "\n\n" + note


def rich_table(rows: Sequence[Row], against: str = BASE):
    """The same table for the terminal."""
    from rich.table import Table

    table = Table(
        title=f"pass@1 (%) with 95% bootstrap CIs; differences paired vs {against}",
        caption=THROUGHPUT_NOTE,
    )
    names = 4  # dataset, directory, model, config: left-aligned text that may fold
    for i, header in enumerate(headers(against)):
        # Numbers never wrap; long names fold instead.
        table.add_column(
            header, justify="left" if i < names else "right", no_wrap=i >= names, overflow="fold"
        )
    for row in rows:
        table.add_row(*row_cells(row))
    return table


def short_label(config: str) -> str:
    """A configuration name fit for a legend: file paths in spec values cut to the file name.

    ``rl:path=policies/qwen2.5-coder-0.5b-instruct/policy.zip,deterministic=false`` becomes
    ``rl:path=policy.zip,deterministic=false``; the table keeps the full name.
    """
    parts = []
    for part in config.split(","):
        key, sep, value = part.rpartition("=")
        if sep and ("/" in value or os.sep in value):
            part = f"{key}={Path(value).name}"
        parts.append(part)
    return ",".join(parts)


def plot_groups(rows: Sequence[Row]) -> list[tuple[str, str, str]]:
    """The plot's groups of bars: one per result directory, as (dataset, model, directory)."""
    return list(dict.fromkeys((r.dataset, r.model, r.directory) for r in rows))


def plot(rows: Sequence[Row], path: str | Path, against: str = BASE) -> Path:
    """Figure-1-style bars: pass@1 per configuration grouped by model (CI error bars), and
    accepted-token throughput relative to ``against``. Returns the written path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = plot_groups(rows)
    configs = list(dict.fromkeys(r.config for r in rows))
    lookup = {((r.dataset, r.model, r.directory), r.config): r for r in rows}
    several_dirs = len({g[2] for g in groups}) > 1
    models = [
        f"{model}\n{dataset}" + (f"\n{Path(directory).name}" if several_dirs else "")
        for dataset, model, directory in groups
    ]
    x = np.arange(len(models))
    width = 0.8 / max(1, len(configs))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 3 + 2.5 * len(models)), 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, config in enumerate(configs):
        offs = x - 0.4 + width * (j + 0.5)
        means, errs, ratios = [], [[], []], []
        for group in groups:
            row = lookup.get((group, config))
            if row is None:
                means.append(np.nan)
                errs[0].append(0)
                errs[1].append(0)
                ratios.append(np.nan)
                continue
            p = row.pass1
            means.append(100 * p.mean)
            errs[0].append(100 * max(0.0, p.mean - p.low))
            errs[1].append(100 * max(0.0, p.high - p.mean))
            ratios.append(row.throughput_ratio if row.throughput_ratio is not None else np.nan)
        color = colors[j % len(colors)]
        label = short_label(config)
        ax1.bar(offs, means, width, yerr=errs, capsize=3, label=label, color=color)
        ax2.bar(offs, ratios, width, label=label, color=color)
    reference = against if against == BASE else short_label(against)
    throughput = f"accepted tokens/s relative to {reference}\n(configurations decoded alike)"
    for ax, label in ((ax1, "pass@1 (%)"), (ax2, throughput)):
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=0)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    tops = [100 * r.pass1.high for r in rows]
    ax1.set_ylim(0, min(100.0, max(10.0, 1.15 * max(tops, default=0.0))))
    ax1.set_title("pass@1 (95% CI)")
    ax2.set_title("Throughput")
    ax2.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    # Below both panels, so long configuration names never cover the bars.
    handles, labels = ax1.get_legend_handles_labels()
    columns = max(1, min(len(labels), 3))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8)
    rows_of_legend = -(-len(labels) // columns)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""The decisive comparison of issue 15: a tuned recipe against every baseline, paired.

Reads one engine result directory (base, probability-trend, greedy, the recipe and, when it
was decoded there, ``beam:2``: all decoded together in the same batches, so their wall times
come from the same run) and, optionally, another directory holding ``beam:2`` (e.g. the
transformers run), plus the same directories re-scored on HumanEval+ (``backtrack rescore``).
Prints one Markdown table per dataset: every configuration's pass@1 with its CI, and the
recipe's paired difference to each of the others on the problems and runs both have (the
deterministic configurations' runs are copies of run 0, so their pairing is by problem).
``--learned SPEC`` adds a learned operator's row (issue 18); it may have been decoded later into
the same directory (the same seeds, its own batches), and its HumanEval+ verdicts may come from
another ``backtrack rescore`` directory (``--plus`` is repeatable).
``--baseline CONFIG`` (repeatable) adds a configuration decoded in the engine directory, e.g.
the filtering baselines at equal compute ``sample-filter:n=4`` and ``beam:2+filter`` (issue
29): their forward passes per token and wall time per problem count every sample or beam
decoded and every check of the visible examples (``evaluation/generation/filtering.py``).
``--plot`` draws the Figure-1-style chart of the same numbers: pass@1 with its CI per
dataset, and the cost in forward passes (batch rows fed) per accepted token.

``--versus CONFIG`` (issue 29) compares every row with CONFIG instead of the recipe (e.g.
``beam:2``, the bar to beat), each pair on the problems x runs both have, so a configuration
decoded later with fewer runs does not shrink the others' rows; it is repeatable (``--versus
base --versus beam:2``: a pair of columns each), and with it ``--recipe`` is optional (a model
with no tuned recipe). ``--frontier`` then draws the Pareto chart: pass@1 with its 95% CI
against forward passes per final token, one panel per dataset, the non-dominated
configurations joined, the first ``--versus`` configuration's cost marked as the budget.
``--baseline`` takes ``LABEL=CONFIG`` to name a row (``examples (tuned)=examples:max_repairs=1,
target=token``).

    python scripts/decisive_table.py results/humaneval-decisive \\
        --recipe recipe:qwen2.5-coder-0.5b-instruct --versus beam:2 \\
        --baseline 'examples (tuned)=examples:max_repairs=1,target=token' \\
        --out results/humaneval-decisive/signals.md \\
        --frontier results/humaneval-decisive/frontier.png

    python scripts/decisive_table.py results/humaneval-decisive \\
        --recipe recipe:qwen2.5-coder-0.5b-instruct --plus results/humaneval-decisive-plus \\
        --out results/humaneval-decisive/table.md --plot results/humaneval-decisive/pass_at_1.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from backtrack.evaluation.reporting.metrics import compare, forward_passes_per_token, mean_pass1
from backtrack.evaluation.reporting.report import batch_rows, load_results, paired_subset
from backtrack.recipes import expand

BEAM = "beam:2"


@dataclass
class Line:
    """One configuration's figures on one dataset."""

    label: str
    mean: float
    low: float
    high: float
    passes_per_token: float
    wall_s: float
    row_s: float | None  # wall time x batch rows held; None outside the batch


def records_of(directory: Path, configs: list[str], label: str = "") -> list[dict]:
    result = load_results(directory)
    if result.notes:
        raise SystemExit(f"{directory}: {result.notes[0]}")
    return [{**r, "config": label + r["config"]} for r in result.records if r["config"] in configs]


def restrict(records: list[dict], a: str, b: str) -> list[dict]:
    """The records of ``a`` and ``b`` on a problems x runs rectangle both have."""
    return paired_subset([r for r in records if r["config"] in (a, b)])[0]


def label_of(
    config: str,
    recipe: str | None,
    greedy: str,
    learned: str | None = None,
    names: dict[str, str] | None = None,
) -> str:
    known = {greedy: "greedy", **(names or {})}
    if recipe:
        known[recipe] = "recipe"
    if learned:
        known[learned] = "learned"
    return known.get(config, config)


def table(
    records: list[dict],
    configs: list[str],
    recipe: str | None,
    greedy: str,
    dataset: str,
    learned: str | None = None,
    versus: list[str] | None = None,
    names: dict[str, str] | None = None,
) -> tuple[list[str], list[Line]]:
    """One dataset's table. Without ``versus`` the recipe minus each row, on the rectangle the
    caller restricted every configuration to; with it, each row minus each configuration of
    ``versus`` (a pair of columns each) on the pair's own rectangle (and each row's pass@1 on
    all its own records)."""
    if versus:
        head = "".join(
            f"| this minus {label_of(v, recipe, greedy, learned, names)} [95% CI] "
            "| problems this better / worse "
            for v in versus
        )
        pairs = [(None, v) for v in versus]
    else:
        head = "| recipe minus this [95% CI] | problems recipe better / worse "
        pairs = [(recipe, None)]
    lines = [
        f"**{dataset}**",
        "",
        "| configuration | problems x runs | pass@1 [95% CI] "
        + head
        + "| forward passes per token | wall s per problem | row-s per problem |",
        "|---|---|---|" + "---|---|" * len(pairs) + "---|---|---|",
    ]
    figures = []
    for config in configs:
        mine = [r for r in records if r["config"] == config]
        if versus:
            mine = paired_subset(mine)[0]  # its complete runs, not a run in progress
        if not mine:
            continue
        estimate = mean_pass1(mine, config)
        runs = len({r["run"] for r in mine})
        problems = len({r["task_id"] for r in mine})
        decoded = [r for r in mine if "reused_from_run" not in r]
        fwd = forward_passes_per_token(
            [int(r["forward_passes"]) for r in decoded],
            [max(1, int(r["final_tokens"])) for r in decoded],
        )
        wall = sum(float(r["wall_time_s"]) for r in decoded) / len(decoded)
        held = batch_rows(decoded[0])
        row_s = wall * held if held else None
        cells = []
        for first, second in pairs:
            a, b = first or config, second or config  # this minus versus / recipe minus this
            if a == b:
                cells += ["-", "-"]
                continue
            result = compare(restrict(records, a, b), a, b)
            d = result.diff
            cells.append(f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
            cells.append(f"{len(result.gained)} / {len(result.lost)}")
        name = label_of(config, recipe, greedy, learned, names)
        lines.append(
            f"| {name} | {problems} x {runs} | {100 * estimate.mean:.1f} [{100 * estimate.low:.1f}"
            f", {100 * estimate.high:.1f}] | {' | '.join(cells)} | {fwd:.2f} | {wall:.1f} "
            f"| {f'{row_s:.1f}' if row_s is not None else 'n/a (not batched)'} |"
        )
        figures.append(Line(name, estimate.mean, estimate.low, estimate.high, fwd, wall, row_s))
    return lines, figures


def plot(by_dataset: dict[str, list[Line]], path: Path) -> None:
    """pass@1 with its 95% CI, one group per dataset, and forward passes per token."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(by_dataset)
    labels = list(dict.fromkeys(line.label for lines in by_dataset.values() for line in lines))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [len(datasets) * 1.6, 1.2]}
    )
    width = 0.8 / len(labels)
    x = np.arange(len(datasets))
    for j, label in enumerate(labels):
        means, lows, highs = [], [], []
        for dataset in datasets:
            line = next((li for li in by_dataset[dataset] if li.label == label), None)
            means.append(100 * line.mean if line else np.nan)
            lows.append(100 * (line.mean - line.low) if line else 0)
            highs.append(100 * (line.high - line.mean) if line else 0)
        offsets = x - 0.4 + width * (j + 0.5)
        bars = ax1.bar(offsets, means, width, yerr=[lows, highs], capsize=3, label=label,
                       color=colors[j % len(colors)])  # fmt: skip
        ax1.bar_label(bars, fmt="%.1f", padding=2, fontsize=7, label_type="center")
    ax1.set_xticks(x)
    ax1.set_xticklabels(datasets)
    ax1.set_ylabel("pass@1 (%)")
    ax1.set_title("pass@1 (95% CI)")
    ax1.grid(axis="y", alpha=0.3)
    first = by_dataset[datasets[0]]
    ax2.bar(range(len(first)), [li.passes_per_token for li in first],
            color=[colors[labels.index(li.label) % len(colors)] for li in first])  # fmt: skip
    ax2.set_xticks(range(len(first)))
    ax2.set_xticklabels([li.label for li in first], rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("forward passes (batch rows) per token")
    ax2.set_title("Cost")
    ax2.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax2.grid(axis="y", alpha=0.3)
    fig.legend(*ax1.get_legend_handles_labels(), loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto(lines: list[Line]) -> list[Line]:
    """The non-dominated configurations: no other is at least as good for less or equal cost."""
    front: list[Line] = []
    for line in sorted(lines, key=lambda li: (li.passes_per_token, -li.mean)):
        if not front or line.mean > front[-1].mean:
            front.append(line)
    return front


def frontier_plot(by_dataset: dict[str, list[Line]], path: Path, budget: float | None) -> None:
    """pass@1 (95% CI) against forward passes per final token, one panel per dataset, the
    Pareto frontier joined and ``budget`` (the reference's cost) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(line.label for lines in by_dataset.values() for line in lines))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>p"
    fig, axes = plt.subplots(
        1, len(by_dataset), figsize=(5.6 * len(by_dataset), 4.6), sharey=True, squeeze=False
    )
    for ax, (dataset, lines) in zip(axes[0], by_dataset.items(), strict=True):
        for line in lines:
            j = labels.index(line.label)
            ax.errorbar(
                line.passes_per_token,
                100 * line.mean,
                yerr=[[100 * (line.mean - line.low)], [100 * (line.high - line.mean)]],
                fmt=markers[j % len(markers)],
                color=colors[j % len(colors)],
                capsize=3,
                label=line.label,
            )
        front = pareto(lines)
        ax.plot(
            [li.passes_per_token for li in front],
            [100 * li.mean for li in front],
            color="gray",
            linewidth=1,
            linestyle=":",
            zorder=0,
            label="Pareto frontier",
        )
        if budget is not None:
            ax.axvline(budget, color="gray", linewidth=0.8, linestyle="--")
        ax.set_title(dataset)
        ax.set_xlabel("forward passes (batch rows) per final token")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pass@1 (%), 95% CI")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", type=Path, help="result directory: base, trend, greedy, recipe")
    parser.add_argument(
        "--recipe",
        default=None,
        help="the recipe's configuration or alias (optional with --versus: e.g. a model with "
        "no tuned recipe)",
    )
    parser.add_argument("--greedy", default="never@temperature=0")
    parser.add_argument("--beam", type=Path, default=None, help="another directory with beam:2")
    parser.add_argument(
        "--plus",
        type=Path,
        action="append",
        default=None,
        help="the engine directory re-scored on HumanEval+ (repeatable: e.g. one per rescore)",
    )
    parser.add_argument(
        "--learned", default=None, help="a learned operator's configuration, shown as 'learned'"
    )
    parser.add_argument("--beam-plus", type=Path, default=None, help="beam, on HumanEval+")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="another configuration of the engine directory (repeatable), e.g. "
        "sample-filter:n=4 or beam:2+filter, or LABEL=CONFIG to name its row",
    )
    parser.add_argument(
        "--versus",
        action="append",
        default=None,
        help="compare every row with this configuration (e.g. beam:2), each pair on its own "
        "problems x runs, instead of the recipe with every row (repeatable: a pair of columns "
        "each; the first one's cost is the frontier's budget)",
    )
    parser.add_argument(
        "--frontier", type=Path, default=None, help="the Pareto chart (.png), with --versus"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="the chart (.png)")
    args = parser.parse_args()

    if args.recipe is None and args.versus is None:
        parser.error("give --recipe (the row every other is compared with) or --versus")
    recipe = expand(args.recipe) if args.recipe else None
    configs = ["base", args.greedy, "probability-trend", *([recipe] if recipe else [])]
    if args.learned:
        configs.append(args.learned)
    names: dict[str, str] = {}
    for item in args.baseline:
        label, eq, config = item.partition("=")
        # A configuration has "=" in its parameters and settings (sample-filter:n=2,
        # never@temperature=0); the part before the first "=" is a label only without ":"/"@".
        if eq and not {":", "@"} & set(label):
            names[config] = label
        else:
            config = item
        if config not in configs:
            configs.append(config)
    if args.frontier and not args.versus:
        parser.error("--frontier needs --versus (the configuration whose cost is the budget)")
    lines: list[str] = []
    figures: dict[str, list[Line]] = {}
    for dataset, engines, beam in (
        ("HumanEval", [args.engine], args.beam),
        ("HumanEval+", args.plus or [], args.beam_plus),
    ):
        if not engines:
            continue
        # The problems x runs every engine configuration has (a run in progress is left out).
        # beam:2 decoded in the same directory is deterministic: its run-0 records are copied
        # to every run, so it joins that rectangle.
        shown = list(configs)
        mine = [r for directory in engines for r in records_of(directory, [*configs, BEAM])]
        if any(r["config"] == BEAM for r in mine) and beam is None and BEAM not in shown:
            shown.append(BEAM)
        records = [r for r in mine if r["config"] in shown]
        if not args.versus:
            records = paired_subset(records)[0]
        if beam is not None:
            records += records_of(beam, [BEAM])
            shown.append(BEAM)
        text, figures[dataset] = table(
            records, shown, recipe, args.greedy, dataset, args.learned, args.versus, names
        )
        lines += text + [""]
    if recipe:
        lines.append(f"recipe: `{recipe}`")
    if args.learned:
        lines.append(f"learned: `{args.learned}`")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.plot:
        plot(figures, args.plot)
    if args.frontier:
        budget = label_of(args.versus[0], recipe, args.greedy, args.learned, names)
        costs = [li.passes_per_token for lines in figures.values() for li in lines
                 if li.label == budget]  # fmt: skip
        frontier_plot(figures, args.frontier, costs[0] if costs else None)


if __name__ == "__main__":
    main()

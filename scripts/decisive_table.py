"""The decisive comparison of issue 15: a tuned recipe against every baseline, paired.

Reads one engine result directory (base, probability-trend, greedy and the recipe, decoded
together, so their wall times come from the same run) and, optionally, a directory holding
``beam:2`` (transformers only; llama.cpp has no beam search), plus the same two directories
re-scored on HumanEval+ (``backtrack rescore``). Prints one Markdown table per dataset: every
configuration's pass@1 with its CI, and the recipe's paired difference to each of the others
on the problems and runs both have (the deterministic configurations' runs are copies of run
0, so their pairing is by problem).

    python scripts/decisive_table.py results/humaneval-decisive --beam results/humaneval-paper \\
        --recipe recipe:qwen2.5-coder-0.5b-instruct \\
        --plus results/humaneval-decisive-plus --beam-plus results/humaneval-paper-plus \\
        --out results/humaneval-decisive/table.md --plot results/humaneval-decisive/pass_at_1.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from backtrack.evaluation.metrics import compare, forward_passes_per_token, mean_pass1
from backtrack.evaluation.report import load_results, paired_subset
from backtrack.recipes import expand

BEAM = "beam:2"


def records_of(directory: Path, configs: list[str], label: str = "") -> list[dict]:
    result = load_results(directory)
    if result.notes:
        raise SystemExit(f"{directory}: {result.notes[0]}")
    return [{**r, "config": label + r["config"]} for r in result.records if r["config"] in configs]


def restrict(records: list[dict], a: str, b: str) -> list[dict]:
    """The records of ``a`` and ``b`` on a problems x runs rectangle both have."""
    return paired_subset([r for r in records if r["config"] in (a, b)])[0]


def table(records: list[dict], configs: list[str], recipe: str, dataset: str) -> list[str]:
    lines = [
        f"**{dataset}**",
        "",
        "| configuration | problems x runs | pass@1 [95% CI] | recipe minus this [95% CI] "
        "| problems recipe better / worse | forward passes per token | wall s per problem |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in configs:
        mine = [r for r in records if r["config"] == config]
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
        if config == recipe:
            versus, counts = "-", "-"
        else:
            result = compare(restrict(records, recipe, config), recipe, config)
            d = result.diff
            versus = f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
            counts = f"{len(result.gained)} / {len(result.lost)}"
        name = "recipe" if config == recipe else config
        lines.append(
            f"| {name} | {problems} x {runs} | {100 * estimate.mean:.1f} [{100 * estimate.low:.1f}"
            f", {100 * estimate.high:.1f}] | {versus} | {counts} | {fwd:.2f} | {wall:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", type=Path, help="result directory: base, trend, greedy, recipe")
    parser.add_argument("--recipe", required=True, help="the recipe's configuration or alias")
    parser.add_argument("--greedy", default="never@temperature=0")
    parser.add_argument("--beam", type=Path, default=None, help="a directory holding beam:2")
    parser.add_argument("--plus", type=Path, default=None, help="engine, on HumanEval+")
    parser.add_argument("--beam-plus", type=Path, default=None, help="beam, on HumanEval+")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    recipe = expand(args.recipe)
    configs = ["base", args.greedy, "probability-trend", recipe]
    lines: list[str] = []
    for dataset, engine, beam in (
        ("HumanEval", args.engine, args.beam),
        ("HumanEval+", args.plus, args.beam_plus),
    ):
        if engine is None:
            continue
        # The problems x runs every engine configuration has (a run in progress is left out).
        records = paired_subset(records_of(engine, configs))[0]
        shown = list(configs)
        if beam is not None:
            records += records_of(beam, [BEAM])
            shown.append(BEAM)
        lines += table(records, shown, recipe, dataset) + [""]
    lines.append(f"recipe: `{recipe}`")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

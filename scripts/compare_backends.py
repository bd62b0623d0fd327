"""Pass@1 of the same configurations decoded on two backends, paired by problem and seed.

Two result directories made with the same settings and seeds but different backends (for
example ``results/humaneval-paper``, transformers, and ``results/humaneval-llama-cpp``,
llama.cpp) hold the same cells (configuration, run, problem, seed); this pairs them and gives
each configuration's difference between the backends with its bootstrap 95% CI
(:func:`backtrack.evaluation.reporting.metrics.compare`), on the runs both directories have.

    python scripts/compare_backends.py results/humaneval-paper results/humaneval-llama-cpp \\
        --out results/humaneval-llama-cpp/vs_transformers.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backtrack.evaluation.reporting.metrics import compare
from backtrack.evaluation.store import RESULTS_FILE, read_records


def load(directory: Path) -> tuple[dict, list[dict]]:
    meta = json.loads((directory / "meta.json").read_text())
    records, problems = read_records(directory / RESULTS_FILE)
    if problems:
        raise SystemExit(f"{directory}: damaged records ({problems[0]}); repair it first")
    return meta, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", type=Path, help="result directory of the first backend")
    parser.add_argument("other", type=Path, help="result directory of the second backend")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args()

    ref_meta, ref = load(args.reference)
    other_meta, other = load(args.other)
    name_ref = ref_meta.get("backend_resolved", "transformers")
    name_other = other_meta.get("backend_resolved", "transformers")
    configs = [c["name"] for c in other_meta["configs"] if c["name"] in {r["config"] for r in ref}]
    runs = {int(r["run"]) for r in other} & {int(r["run"]) for r in ref}
    lines = [
        f"Pass@1 on `{name_other}` ({args.other}) against `{name_ref}` ({args.reference}): "
        f"same configurations, problems, runs {sorted(runs)} and seeds; paired bootstrap "
        "95% CI.",
        "",
        f"| configuration | problems x runs | {name_ref} | {name_other} | difference [95% CI] "
        "| problems better / worse |",
        "|---|---|---|---|---|---|",
    ]
    for config in configs:
        seeds_ref = {(r["run"], r["task_id"]): r["seed"] for r in ref if r["config"] == config}
        paired: list[dict] = []
        for record in other:
            key = (record["run"], record["task_id"])
            if record["config"] != config or int(record["run"]) not in runs or key not in seeds_ref:
                continue
            if seeds_ref[key] != record["seed"]:
                raise SystemExit(f"{config} {key}: seeds differ; the runs are not paired")
            paired.append({**record, "config": f"{name_other}:{config}"})
        keys = {(r["run"], r["task_id"]) for r in paired}
        paired += [
            {**r, "config": f"{name_ref}:{config}"}
            for r in ref
            if r["config"] == config and (r["run"], r["task_id"]) in keys
        ]
        result = compare(paired, f"{name_other}:{config}", f"{name_ref}:{config}")
        d = result.diff
        problems = len({t for _, t in keys})
        lines.append(
            f"| {config} | {problems} x {len(runs)} | {100 * result.baseline_mean:.1f} | "
            f"{100 * result.config_mean:.1f} | {100 * d.mean:+.1f} [{100 * d.low:+.1f}, "
            f"{100 * d.high:+.1f}] | {len(result.gained)} / {len(result.lost)} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

"""Summarise a `backtrack train` run from its monitor.csv: pass rate and deletions over time.

    .venv/bin/python scripts/summarize_training.py runs/train-default [--parts 4]

With the tests-only judge and no forward cost an episode's reward is
``pass_reward * passed - discard_cost * deleted``, so the tokens deleted per episode follow
exactly from the reward and the pass flag; the run's own config.yaml gives the weights.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import yaml


def load_episodes(run: Path) -> list[dict]:
    with (run / "monitor.csv").open(encoding="utf-8") as fh:
        header = json.loads(fh.readline().lstrip("#"))  # sb3's first line: metadata
        del header
        rows = list(csv.DictReader(fh))
    return [
        {"r": float(x["r"]), "l": int(x["l"]), "t": float(x["t"]), "passed": x["passed"] == "True"}
        for x in rows
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--parts", type=int, default=4)
    args = ap.parse_args()
    config = yaml.safe_load((args.run / "config.yaml").read_text(encoding="utf-8"))
    dense = config.get("judge", "tests") != "tests" or config.get("forward_cost", 0) > 0
    episodes = load_episodes(args.run)
    if not episodes:
        raise SystemExit(f"{args.run}/monitor.csv has no finished episodes yet")
    n = len(episodes)
    print(
        f"{args.run}: {n} episodes, {sum(e['l'] for e in episodes)} agent steps, "
        f"{episodes[-1]['t'] / 60:.1f} min"
    )
    print()
    print("| episodes | steps | pass rate | deleted tokens / episode | steps / episode |")
    print("|---|---|---|---|---|")
    bounds = [round(i * n / args.parts) for i in range(args.parts + 1)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = episodes[lo:hi]
        if not part:
            continue
        rate = sum(e["passed"] for e in part) / len(part)
        steps = sum(e["l"] for e in part)
        if dense:
            deleted = "n/a (dense reward)"
        else:
            cost, win = float(config["discard_cost"]), float(config["pass_reward"])
            per = [(win * e["passed"] - e["r"]) / cost for e in part]
            deleted = f"{sum(per) / len(per):.2f}"
        print(
            f"| {lo + 1}-{hi} | {sum(e['l'] for e in episodes[:lo]) + 1}-"
            f"{sum(e['l'] for e in episodes[:lo]) + steps} | {rate:.3f} | {deleted} | "
            f"{steps / len(part):.1f} |"
        )


if __name__ == "__main__":
    main()

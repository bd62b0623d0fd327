"""Summarise a `backtrack train` run from its monitor.csv: pass rate and deletions over time.

    .venv/bin/python scripts/summarize_training.py runs/train-default [--parts 4] [--plot F.png]

With the tests-only judge and no forward cost an episode's reward is
``pass_reward * passed - discard_cost * deleted``, so the tokens deleted per episode follow
exactly from the reward and the pass flag; the run's own config.yaml gives the weights.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import yaml


def load_episodes(run: Path) -> list[dict]:
    with (run / "monitor.csv").open(encoding="utf-8") as fh:
        fh.readline()  # sb3's first line: a JSON comment with the start time
        rows = list(csv.DictReader(fh))
    return [
        {"r": float(x["r"]), "l": int(x["l"]), "t": float(x["t"]), "passed": x["passed"] == "True"}
        for x in rows
    ]


def deleted_tokens(episode: dict, config: dict) -> float:
    """Tokens deleted in an episode, from its reward (tests-only judge, no forward cost)."""
    win, cost = float(config["pass_reward"]), float(config["discard_cost"])
    return (win * episode["passed"] - episode["r"]) / cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--plot", type=Path, help="also draw pass rate and deletions (PNG)")
    ap.add_argument("--smooth", type=int, default=50, help="episodes per moving average")
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
    steps_before = list(itertools.accumulate((e["l"] for e in episodes), initial=0))
    bounds = [round(i * n / args.parts) for i in range(args.parts + 1)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = episodes[lo:hi]
        if not part:
            continue
        rate = sum(e["passed"] for e in part) / len(part)
        steps = steps_before[hi] - steps_before[lo]
        if dense:
            deleted = "n/a (dense reward)"
        else:
            deleted = f"{sum(deleted_tokens(e, config) for e in part) / len(part):.2f}"
        print(
            f"| {lo + 1}-{hi} | {steps_before[lo] + 1}-{steps_before[hi]} | {rate:.3f} | "
            f"{deleted} | {steps / len(part):.1f} |"
        )

    if args.plot:
        plot(episodes, config, dense, args.plot, args.smooth)
        print(f"\nwrote {args.plot}")


def plot(episodes: list[dict], config: dict, dense: bool, path: Path, smooth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.cumsum([e["l"] for e in episodes])
    window = max(1, min(smooth, len(episodes)))
    kernel = np.ones(window) / window

    def moving(values: list[float]) -> np.ndarray:
        return np.convolve(values, kernel, mode="valid")

    x = steps[window - 1 :]
    panels = 1 if dense else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.4), squeeze=False)
    axes[0][0].plot(x, moving([float(e["passed"]) for e in episodes]))
    axes[0][0].set(
        xlabel="agent steps (tokens)",
        ylabel="unit-test pass rate",
        title=f"pass rate ({window}-episode mean)",
    )
    if not dense:
        deleted = [deleted_tokens(e, config) for e in episodes]
        axes[0][1].plot(x, moving(deleted), color="tab:red")
        axes[0][1].set(
            xlabel="agent steps (tokens)",
            ylabel="tokens deleted per episode",
            title=f"deletions ({window}-episode mean)",
        )
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{config.get('model')} on MBPP {config.get('split')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

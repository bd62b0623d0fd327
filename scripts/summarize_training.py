"""Summarise a `backtrack train` run from its monitor.csv: pass rate and deletions over time.

    .venv/bin/python scripts/summarize_training.py runs/train-default [--parts 4] [--plot F.png]

Tokens deleted per episode come from monitor.csv's ``tokens_discarded`` column. Runs written
before that column existed: with the tests-only judge and no forward cost an episode's reward is
``pass_reward * passed - discard_cost * deleted``, so deletions follow exactly from the reward
(the run's config.yaml gives the weights); with a dense reward they are not known per episode.
With a teacher judge, its cost per episode and per judgement is summarised too.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import yaml

from backtrack.rl.env import JUDGE_COST_KEYS


def load_episodes(run: Path) -> list[dict]:
    with (run / "monitor.csv").open(encoding="utf-8") as fh:
        fh.readline()  # sb3's first line: a JSON comment with the start time
        rows = list(csv.DictReader(fh))
    episodes = []
    for x in rows:
        episode = {
            "r": float(x["r"]),
            "l": int(x["l"]),
            "t": float(x["t"]),
            "passed": x["passed"] == "True",
        }
        for key in ("tokens_discarded", *JUDGE_COST_KEYS):
            if x.get(key) not in (None, ""):
                episode[key] = float(x[key])
        episodes.append(episode)
    return episodes


def wall_seconds(episodes: list[dict]) -> tuple[float, int]:
    """The run's wall time up to its last finished episode, and how many sessions it ran in.

    sb3's ``t`` counts from the start of the session that wrote the row, so it starts again
    from zero after ``--resume``; each session's time is its last row's ``t``.
    """
    total, sessions, previous = 0.0, 1, 0.0
    for e in episodes:
        if e["t"] < previous:  # a resumed session's first episode
            total += previous
            sessions += 1
        previous = e["t"]
    return total + previous, sessions


def deleted_tokens(episode: dict, config: dict, dense: bool) -> float | None:
    """Tokens deleted in an episode: logged, or from its reward (tests-only judge, no forward
    cost); None when neither is possible."""
    if "tokens_discarded" in episode:
        return episode["tokens_discarded"]
    if dense:
        return None
    win, cost = float(config["pass_reward"]), float(config["discard_cost"])
    return (win * episode["passed"] - episode["r"]) / cost


def judge_summary(episodes: list[dict]) -> str | None:
    """The teacher's cost over the run: per episode, per judgement, and its cache hit rate."""
    judged = [e for e in episodes if e.get("judge_requests", 0) > 0]
    if not judged:
        return None
    requests = sum(e["judge_requests"] for e in judged)
    seconds = sum(e["judge_seconds"] for e in judged)
    tokens = sum(e["judge_tokens"] for e in judged)
    hits = sum(e["judge_hits"] for e in judged)
    wall, _ = wall_seconds(episodes)
    return (
        f"teacher: {requests:.0f} judgements in {len(judged)} episodes "
        f"({requests / len(judged):.1f} per episode, {seconds / len(judged):.1f} s per episode); "
        f"{seconds / requests:.2f} s and {tokens / requests:.0f} prompt tokens per judgement; "
        f"cache hit rate {hits / requests:.1%}; {seconds / wall:.0%} of the run's wall time"
    )


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
    wall, sessions = wall_seconds(episodes)
    resumed = f" in {sessions} sessions (resumed)" if sessions > 1 else ""
    print(
        f"{args.run}: {n} episodes, {sum(e['l'] for e in episodes)} agent steps, "
        f"{wall / 60:.1f} min{resumed}"
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
        counts = [deleted_tokens(e, config, dense) for e in part]
        if None in counts:
            deleted = "n/a (dense reward, not logged)"
        else:
            deleted = f"{sum(counts) / len(part):.2f}"
        print(
            f"| {lo + 1}-{hi} | {steps_before[lo] + 1}-{steps_before[hi]} | {rate:.3f} | "
            f"{deleted} | {steps / len(part):.1f} |"
        )

    cost = judge_summary(episodes)
    if cost:
        print()
        print(cost)
    if args.plot:
        plot(args.run, episodes, config, dense, args.plot, args.smooth)
        print(f"\nwrote {args.plot}")


def tensorboard_scalar(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar in the run's TensorBoard logs (all of its runs, resumed ones
    too), or [] when there is none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for directory in sorted(p for p in (run / "tb").glob("*") if p.is_dir()):
        events = EventAccumulator(str(directory))
        events.Reload()
        if tag in events.Tags().get("scalars", []):
            points.update((e.step, e.value) for e in events.Scalars(tag))
    return sorted(points.items())


def plot(
    run: Path, episodes: list[dict], config: dict, dense: bool, path: Path, smooth: int
) -> None:
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
    deleted = [deleted_tokens(e, config, dense) for e in episodes]
    known = None not in deleted
    # Not known per episode: PPO's own per-rollout means, from the run's TensorBoard log.
    logged = [] if known else tensorboard_scalar(run, "rollout/tokens_discarded")
    panels = 2 if known or logged else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.4), squeeze=False)
    axes[0][0].plot(x, moving([float(e["passed"]) for e in episodes]))
    axes[0][0].set(
        xlabel="agent steps (tokens)",
        ylabel="unit-test pass rate",
        title=f"pass rate ({window}-episode mean)",
    )
    if known:
        axes[0][1].plot(x, moving(deleted), color="tab:red")
        axes[0][1].set(
            xlabel="agent steps (tokens)",
            ylabel="tokens deleted per episode",
            title=f"deletions ({window}-episode mean)",
        )
    elif logged:
        axes[0][1].plot(*zip(*logged, strict=True), color="tab:red", marker=".")
        axes[0][1].set(
            xlabel="agent steps (tokens)",
            ylabel="tokens deleted per episode",
            title="deletions (mean per PPO rollout, TensorBoard)",
        )
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{config.get('model')} on MBPP {config.get('split')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

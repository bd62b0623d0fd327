"""What a rollback window costs in pass@1, measured paired on an evaluation's own cells.

Usage::

    python scripts/rollback_window_cost.py DIR --config "probability-trend:k=4" --windows 16 32

``DIR`` is a ``backtrack eval`` result directory in which ``--config`` was decoded without a
window. A window ``W`` changes a generation only if one of its rollbacks reached more than
``W`` tokens behind the furthest position (``deepest_rollback > W`` in its record): otherwise
every decision, draw and cache state is the same, token for token
(``tests/test_rollback_window.py::test_a_window_that_never_binds_changes_nothing``). So the
script decodes again, with the window (configuration ``CONFIG@rollback_window=W``, same seeds,
with the directory's own settings into it, resumable), only the problems that have such
a cell, and compares paired over *all* cells: the windowed verdict where a rollback reached
beyond ``W``, the unbounded one elsewhere. Cells of those problems that the window did not
touch are decoded too; how many of them came out different is printed as the noise of batched
bf16 decoding (another batch composition rounds differently), for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backtrack.evaluation.generation.runner import run_eval
from backtrack.evaluation.reporting import metrics
from backtrack.evaluation.settings import EvalSettings
from backtrack.evaluation.store import read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--config", required=True, help="the unbounded configuration's name")
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    meta = json.loads((args.directory / "meta.json").read_text())
    records, problems = read_records(args.directory / "results.jsonl")
    if problems:
        sys.exit(f"error: {args.directory}: {len(problems)} damaged lines; resume the eval first")
    unbounded = {(r["task_id"], r["run"]): r for r in records if r["config"] == args.config}
    if not unbounded:
        sys.exit(f"error: no records of {args.config!r} in {args.directory}")
    depths = sorted(r.get("deepest_rollback", 0) for r in unbounded.values())
    print(
        f"{args.config}: {len(unbounded)} cells, deepest rollback: "
        f"median {depths[len(depths) // 2]}, max {depths[-1]}, "
        f"cells > 16: {sum(d > 16 for d in depths)}, > 32: {sum(d > 32 for d in depths)}"
    )
    rows = []
    for window in args.windows:
        name = f"{args.config}@rollback_window={window}"
        affected = {key for key, r in unbounded.items() if r.get("deepest_rollback", 0) > window}
        tasks = sorted({task for task, _ in affected}, key=lambda t: int(t.split("/")[-1]))
        if tasks and args.decode:
            _decode(meta, args.directory, name, tasks)
            records, _ = read_records(args.directory / "results.jsonl")
        windowed = {(r["task_id"], r["run"]): r for r in records if r["config"] == name}
        missing = affected - set(windowed)
        if missing:
            sys.exit(f"error: {len(missing)} affected cells of {name} are not decoded yet")
        untouched_decoded = [k for k in windowed if k in unbounded and k not in affected]
        noise = sum(
            windowed[k]["completion"] != unbounded[k]["completion"] for k in untouched_decoded
        )
        combined = [
            {
                **r,
                "config": name,
                "passed": windowed[key]["passed"] if key in affected else r["passed"],
            }
            for key, r in unbounded.items()
        ]
        comparison = metrics.compare([*unbounded.values(), *combined], name, args.config)
        changed = sum(windowed[k]["passed"] != unbounded[k]["passed"] for k in affected)
        rows.append((window, len(affected), changed, comparison, noise, len(untouched_decoded)))
    print(
        "| window | cells where it binds | verdicts changed | pass@1 | vs unbounded [95% CI] |"
        " untouched cells re-decoded (differ) |"
    )
    print("|---|---|---|---|---|---|")
    for window, n_affected, changed, c, noise, n_untouched in rows:
        d = c.diff
        print(
            f"| {window} | {n_affected} / {len(unbounded)} | {changed} |"
            f" {100 * c.config_mean:.1f} |"
            f" {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] |"
            f" {n_untouched} ({noise}) |"
        )
    print(f"unbounded pass@1: {100 * rows[0][3].baseline_mean:.1f}" if rows else "")


def _decode(meta: dict, directory: Path, name: str, tasks: list[str]) -> None:
    """Evaluate configuration ``name`` on ``tasks`` into ``directory``, with its settings."""
    settings = EvalSettings.from_meta(
        meta, out=str(directory), operators=[name], baselines=[], problems=",".join(tasks)
    )
    print(f"decoding {name} on {len(tasks)} problems x {settings.runs} runs", flush=True)
    run_eval(settings)


if __name__ == "__main__":
    main()

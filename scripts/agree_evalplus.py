"""Do our HumanEval / HumanEval+ verdicts agree with EvalPlus's own evaluator (issue 30)?

Reads a result directory of ``backtrack eval`` (``meta.json``, ``results.jsonl``), writes each
unique (task, program) once as an EvalPlus samples file (the ``solution`` is the very code we
ran before the tests: prompt + completion), runs ``evalplus.evaluate`` on it and prints how
many verdicts agree and every one that does not. A HumanEval directory is compared with
EvalPlus's base verdict, a HumanEval+ directory with base and plus both passing. ``--rescore``
compares verdicts computed now with our current scoring (the problems' own time limits)
instead of the ones stored in the directory.

EvalPlus is an optional dev dependency; keep it out of the project's venv::

    python3 -m venv /work/evalplus-venv && /work/evalplus-venv/bin/pip install evalplus==0.3.1
    python scripts/agree_evalplus.py results/humaneval-decisive-plus \\
        --evalplus-python /work/evalplus-venv/bin/python --limit-tasks 15,94,59,36,83,0-9 --rescore

EvalPlus reads the dataset from ``HUMANEVAL_OVERRIDE_PATH``: an uncompressed copy of the
HumanEval+ file holding only the selected tasks (its evaluator insists on a sample for every
task of the file), in a temporary directory (``--keep DIR`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backtrack.evaluation.data import (
    HUMANEVAL_PLUS_FILE,
    Problem,
    dataset_key,
    load_humaneval,
    load_humaneval_plus,
    parse_problem_ids,
    read_jsonl,
    sandbox_config_for,
)
from backtrack.evaluation.prompts import build_program
from backtrack.evaluation.scoring.score import score
from backtrack.evaluation.store import read_directory
from backtrack.execution.sandbox import SandboxConfig

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PLUS_DATA = REPO.parent / "shared" / "data" / HUMANEVAL_PLUS_FILE

Key = tuple[str, str]  # (task_id, completion)


def stored_verdicts(records: list[dict]) -> tuple[dict[Key, dict], Counter]:
    """The first stored verdict of each unique (task, completion), and how many records each."""
    verdicts: dict[Key, dict] = {}
    weight: Counter = Counter()
    for record in records:
        key = (record["task_id"], record["completion"])
        weight[key] += 1
        verdicts.setdefault(key, record)
    return verdicts, weight


def rescore(
    problems: dict[str, Problem], keys: list[Key], mode: str, timeout_s: float, workers: int
):
    """Our current verdict of every key, each problem under its own limit when it has one."""
    base = SandboxConfig(timeout_s=timeout_s)

    def one(key: Key):
        problem = problems[key[0]]
        result = score(problem, key[1], mode, sandbox_config_for(problem, base))
        return {"passed": result.passed, "status": result.status, "detail": result.detail}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(keys, pool.map(one, keys), strict=True))


def run_evalplus(
    python: str, plus_data: Path, tasks: set[str], samples: list[dict], workdir: Path, workers: int
) -> dict[tuple[str, str], tuple[str, str]]:
    """EvalPlus's (base_status, plus_status) for every (task_id, solution) of ``samples``."""
    override = workdir / "HumanEvalPlus-selected.jsonl"
    with override.open("w", encoding="utf-8") as out:
        for record in read_jsonl(plus_data):
            if record["task_id"] in tasks:
                out.write(json.dumps(record) + "\n")
    samples_path = workdir / "samples.jsonl"
    samples_path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    command = [python, "-m", "evalplus.evaluate", "--dataset", "humaneval",
               "--samples", str(samples_path), "--parallel", str(workers)]  # fmt: skip
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(override)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"evalplus.evaluate failed ({done.returncode}):\n{done.stderr[-3000:]}")
    results = json.loads((workdir / "samples_eval_results.json").read_text(encoding="utf-8"))
    verdicts = {}
    for task_id, entries in results["eval"].items():
        for entry in entries:
            verdicts[(task_id, entry["solution"])] = (entry["base_status"], entry["plus_status"])
    return verdicts


def print_agreement(
    label: str,
    source: str,
    keys: list[Key],
    ours: dict[Key, dict],
    theirs: dict[Key, tuple[bool, str, str]],
    weight: Counter,
) -> int:
    """Print the agreement count and every disagreement; returns how many disagree."""
    agree = [key for key in keys if bool(ours[key]["passed"]) == theirs[key][0]]
    records = sum(weight[k] for k in agree)
    print(
        f"{label} ({source} verdicts): {len(agree)} of {len(keys)} unique completions agree "
        f"with EvalPlus; {records} of {sum(weight[k] for k in keys)} records"
    )
    for key in keys:
        if key in agree:
            continue
        mine, (_, base_status, plus_status) = ours[key], theirs[key]
        first = key[1].strip().splitlines()[0][:60] if key[1].strip() else "<empty>"
        print(
            f"  {key[0]} x{weight[key]}: ours {mine['status']} ({mine['detail'] or '-'}); "
            f"EvalPlus base {base_status}, plus {plus_status}; {first!r}"
        )
    return len(keys) - len(agree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "directory", type=Path, help="a result directory (meta.json, results.jsonl)"
    )
    parser.add_argument("--evalplus-python", default="python3", help="an interpreter with evalplus")
    parser.add_argument("--plus-data", type=Path, help="the HumanEval+ file (default: the run's, "
                        f"else {DEFAULT_PLUS_DATA})")  # fmt: skip
    parser.add_argument("--limit-tasks", help="only these tasks, e.g. 15,94,0-9")
    parser.add_argument("--rescore", action="store_true", help="compare our verdicts of now")
    parser.add_argument("--workers", type=int, default=2, help="programs scored in parallel")
    parser.add_argument("--keep", type=Path, help="keep EvalPlus's files in this directory")
    args = parser.parse_args(argv)

    meta, records, _ = read_directory(args.directory)
    dataset = dataset_key(meta.get("dataset") or "humaneval")
    if dataset not in ("humaneval", "humaneval+"):
        sys.exit(f"{args.directory}: dataset {meta.get('dataset')!r} is not HumanEval(+)")
    plus = dataset == "humaneval+"
    plus_data = args.plus_data or (Path(meta["data_path"]) if plus else DEFAULT_PLUS_DATA)
    if not plus_data.is_file():
        sys.exit(f"HumanEval+ data file not found: {plus_data} (pass --plus-data)")
    mode = meta.get("mode") or "completion"
    problems = {
        p.task_id: p for p in (load_humaneval_plus(plus_data) if plus else load_humaneval())
    }

    verdicts, weight = stored_verdicts(records)
    if args.limit_tasks:
        wanted = set(parse_problem_ids(args.limit_tasks))
        verdicts = {k: v for k, v in verdicts.items() if k[0] in wanted}
    keys = sorted(verdicts, key=lambda k: (int(k[0].rsplit("/", 1)[1]), k[1]))
    compared = {"stored": verdicts}
    if args.rescore:
        timeout_s = float(meta.get("timeout_s") or 3.0)
        compared["rescored now"] = rescore(problems, keys, mode, timeout_s, args.workers)
    solutions = {key: build_program(problems[key[0]], key[1], mode) for key in keys}
    samples = [{"task_id": key[0], "solution": solutions[key]} for key in keys]

    with tempfile.TemporaryDirectory(prefix="agree-evalplus-") as scratch:
        workdir = args.keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        theirs = run_evalplus(
            args.evalplus_python, plus_data, {k[0] for k in keys}, samples, workdir, args.workers
        )
    their_verdicts = {}
    for key in keys:
        base_status, plus_status = theirs[(key[0], solutions[key])]
        passed = base_status == "pass" and (plus_status == "pass" or not plus)
        their_verdicts[key] = (passed, base_status, plus_status)
    label = "HumanEval+" if plus else "HumanEval"
    disagreeing = 0
    for source, ours in compared.items():
        disagreeing = print_agreement(label, source, keys, ours, their_verdicts, weight)
    return 0 if not disagreeing else 1


if __name__ == "__main__":
    raise SystemExit(main())

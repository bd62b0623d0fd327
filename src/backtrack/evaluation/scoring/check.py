"""Functions behind ``backtrack check``: run one completion (or every canonical solution).

They return process exit codes so the CLI can pass them straight through: 0 = passed, 1 = failed,
2 = usage error (unknown problem, unreadable file).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from backtrack.evaluation.data import DataError, Problem, load_humaneval
from backtrack.evaluation.scoring.score import score, score_many
from backtrack.execution.sandbox import ExecResult, SandboxConfig

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
JSON_OUTPUT_CAP = 2000


def _find(task_id: str, problems: list[Problem]) -> Problem | None:
    """Look a problem up by id; accepts ``HumanEval/N`` or just ``N``."""
    wanted = task_id if "/" in task_id else f"HumanEval/{task_id}"
    return next((p for p in problems if p.task_id == wanted), None)


def result_json(task_id: str, result: ExecResult, cap: int = JSON_OUTPUT_CAP) -> dict:
    """The ``--json`` payload: verdict, timing and the (further truncated) captured output."""
    payload = asdict(result)
    payload["task_id"] = task_id
    for key in ("stdout", "stderr"):
        payload[key] = payload[key][:cap]
    return payload


def check_one(
    task_id: str,
    completion_text: str,
    as_json: bool = False,
    config: SandboxConfig | None = None,
    out: TextIO | None = None,
) -> int:
    """``backtrack check --problem ID --completion-file F``: run the HumanEval problem's prompt
    + ``completion_text`` against its tests, print the verdict, return the exit code."""
    out = out or sys.stdout
    problem = _find(task_id, load_humaneval())
    if problem is None:
        print(f"error: unknown problem {task_id!r} (expected HumanEval/0..163)", file=sys.stderr)
        return EXIT_USAGE
    result = score(problem, completion_text, "completion", config)
    if as_json:
        print(json.dumps(result_json(problem.task_id, result)), file=out)
    else:
        print(f"{problem.task_id}: {result.status} ({result.duration_s:.2f} s)", file=out)
        if not result.passed and result.stderr:
            print(result.stderr.rstrip()[-JSON_OUTPUT_CAP:], file=out)
    return EXIT_PASS if result.passed else EXIT_FAIL


def check_file(
    task_id: str, completion_file: str | Path, as_json: bool = False, out: TextIO | None = None
) -> int:
    """Like :func:`check_one`, reading the completion from a file (usage error if unreadable)."""
    try:
        text = Path(completion_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read completion file {completion_file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return check_one(task_id, text, as_json, out=out)


def check_canonical(
    workers: int = 2,
    as_json: bool = False,
    config: SandboxConfig | None = None,
    out: TextIO | None = None,
    problems: list[Problem] | None = None,
) -> int:
    """``backtrack check --canonical``: every HumanEval canonical solution must pass."""
    out = out or sys.stdout
    try:
        problems = problems if problems is not None else load_humaneval()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    start = time.monotonic()
    results = score_many(
        [(p, p.canonical_solution, "completion") for p in problems], config, workers
    )
    elapsed = time.monotonic() - start
    failed = [(p.task_id, r) for p, r in zip(problems, results, strict=True) if not r.passed]
    if as_json:
        summary = {
            "total": len(problems),
            "passed": len(problems) - len(failed),
            "elapsed_s": elapsed,
            "failed": [result_json(t, r) for t, r in failed],
        }
        print(json.dumps(summary), file=out)
    else:
        print(f"{len(problems) - len(failed)}/{len(problems)} passed in {elapsed:.1f} s", file=out)
        for task_id, result in failed:
            print(f"  {task_id}: {result.status} {result.detail}", file=out)
    return EXIT_PASS if not failed else EXIT_FAIL

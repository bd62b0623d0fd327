"""Re-scoring stored completions: run the sandbox again on a result directory's completions,
in place (a new time limit: :func:`rescore`) or against another dataset's tests into a new
result directory (HumanEval completions on HumanEval+: :func:`rescore_as`). Nothing is decoded.

Behind ``backtrack report --rescore`` and ``backtrack rescore``; the tables are
:mod:`~backtrack.evaluation.reporting.report`'s, which reads the directories written here like
any other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from backtrack.evaluation.data import Problem, load_dataset
from backtrack.evaluation.evalplus_check import SCORING_RULE
from backtrack.evaluation.scoring.score import score_many
from backtrack.evaluation.store import (
    DETAIL_CAP,
    META_FILE,
    RESULTS_FILE,
    ResultStore,
    read_directory,
    write_meta,
)
from backtrack.execution.sandbox import SandboxConfig


def _execute(
    records: list[dict],
    problems: dict,
    workers: int,
    limit: float,
    keep_previous: str | None = None,
) -> int:
    """Run every record's completion against ``problems`` (by task id); update its verdict
    fields in place. Returns how many verdicts changed.

    ``keep_previous``: the scoring rule the stored verdicts were made under; each record then
    keeps its old verdict, readable, as ``previous_verdict`` (with that rule)."""
    # A program's limit is the run's, or its problem's own (HumanEval+, MBPP+: EvalPlus's
    # per-input limits, see evaluation/evalplus_check.py).
    verdicts = score_many(
        [(problems[r["task_id"]], r["completion"], r.get("mode", "completion")) for r in records],
        SandboxConfig(timeout_s=limit),
        workers,
    )
    changed = 0
    for rec, verdict in zip(records, verdicts, strict=True):
        changed += int(bool(rec["passed"]) != verdict.passed)
        if keep_previous is not None:
            rec["previous_verdict"] = {
                "passed": rec["passed"],
                "status": rec.get("status"),
                "detail": rec.get("detail"),
                "scoring": keep_previous,
            }
        rec.update(
            passed=verdict.passed,
            status=verdict.status,
            detail=verdict.detail[:DETAIL_CAP],
            exec_time_s=verdict.duration_s,
            sandbox=asdict(verdict.sandbox),
        )
    return changed


PROGRAM_RULE = "one wall-clock limit per program (timeout_s)"


def scoring_rule(problems: Iterable[Problem]) -> str:
    """How the verdicts of these problems are timed, as meta.json records it."""
    if any(p.time_limit_s is not None for p in problems):
        return SCORING_RULE
    return PROGRAM_RULE


def rescore(path: str | Path, workers: int = 2, timeout_s: float | None = None) -> tuple[int, int]:
    """Re-run the sandbox on every stored completion (e.g. after changing the time limit).

    Updates ``passed``/``status``/``detail``/``exec_time_s``/``sandbox`` in place, keeping
    each record's old verdict as ``previous_verdict`` (atomic
    rewrite; records written before ``sandbox`` existed gain it) and records the limit used in
    meta.json. Returns (records rescored, verdicts changed).
    """
    path = Path(path)
    meta, records, _ = read_directory(path)
    dataset = str(meta.get("dataset", "humaneval"))
    problems = {p.task_id: p for p in load_dataset(dataset, meta.get("data_path"))}
    old_limit = float(meta.get("timeout_s", 3.0))
    limit = float(timeout_s if timeout_s is not None else old_limit)
    old_rule = str(meta.get("scoring", f"{PROGRAM_RULE} ({old_limit:g} s)"))
    changed = _execute(records, problems, workers, limit, keep_previous=old_rule)
    ResultStore(path).rewrite(records)
    if meta:
        meta.update(
            timeout_s=limit,
            scoring=scoring_rule(problems.values()),
            rescored=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        write_meta(path, meta)
    return len(records), changed


def rescore_as(
    source: str | Path,
    out: str | Path,
    dataset: str,
    data_path: str | None = None,
    workers: int = 2,
    timeout_s: float | None = None,
    configs: Sequence[str] = (),
) -> tuple[int, int, list[str]]:
    """Score the completions of the result directory ``source`` against another dataset's
    tests (HumanEval completions against HumanEval+, as EvalPlus does: the new dataset's prompt
    plus the stored completion) into a new result directory ``out``; ``source`` is untouched.

    Every problem must exist in ``dataset``. Problems whose prompt differs between the two
    datasets (HumanEval+ moved an import in HumanEval/115) are listed in the new meta.json
    (``prompt_differs``), since their completions were written for the other prompt. ``out``
    appears whole or not at all. ``configs``: only these configurations (default all).
    Returns (records, verdicts changed, prompts that differ).
    """
    source, out = Path(source), Path(out)
    if (out / RESULTS_FILE).exists() or (out / META_FILE).exists():
        raise ValueError(f"{out} already holds results; give a new --out")
    meta, stored, _ = read_directory(source)
    if configs:
        unknown = sorted(set(configs) - {r["config"] for r in stored})
        if unknown:
            raise ValueError(f"{source} has no configuration {', '.join(unknown)}")
        stored = [r for r in stored if r["config"] in set(configs)]
    if not stored:
        raise ValueError(f"{source}: no records to score")
    old_name = str(meta.get("dataset", "humaneval"))
    old = {p.task_id: p for p in load_dataset(old_name, meta.get("data_path"))}
    new = {p.task_id: p for p in load_dataset(dataset, data_path)}
    missing = sorted({r["task_id"] for r in stored} - set(new))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} problems of {source} are not in {dataset}: {shown}")
    tasks = sorted({r["task_id"] for r in stored})
    differ = [t for t in tasks if t in old and old[t].prompt != new[t].prompt]
    limit = float(timeout_s if timeout_s is not None else meta.get("timeout_s", 3.0))
    # The output's place is made (and so checked) before the sandbox runs anything.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        records = [dict(r) for r in stored]
        changed = _execute(records, new, workers, limit)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    meta.update(
        dataset=dataset,
        data_path=str(data_path) if data_path else None,
        timeout_s=limit,
        scoring=scoring_rule(new.values()),
        rescored_from={"directory": str(source), "dataset": old_name, "configs": list(configs)},
        prompt_differs=differ,
        rescored=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    ResultStore(staging).rewrite(records)
    write_meta(staging, meta)
    if out.exists():
        out.rmdir()  # empty (checked above that it holds no results); fails if anything else
    os.replace(staging, out)
    return len(records), changed, differ

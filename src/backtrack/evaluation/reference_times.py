"""The canonical solution's time on every input of an EvalPlus dataset, measured once per machine.

EvalPlus gives each input a time limit scaled from the reference solution's own time on it
(:mod:`backtrack.evaluation.evalplus_check`). Those times depend on the machine, so we measure
them here, in our sandbox (``run_program``), with ``time.perf_counter`` around
``fn(*copy.deepcopy(args))``, and cache them under
``$BACKTRACK_CACHE/reference-times/`` (default ``platformdirs.user_cache_dir("backtrack")``, the
weight store's root), keyed by the data file's sha256 and the machine (CPU model, Python
implementation and version). The file is written atomically (a temporary file, then a rename).

The dataset is timed in :data:`TIMING_PROGRAMS` sandbox programs run side by side; each prints
one JSON line per task as it finishes, so a reference that hangs is named by the first task
without a line. A reference that cannot be timed (it raises, its canonical solution is missing,
it runs past :data:`TASK_LIMIT_S`) is a :class:`ReferenceTimeError` naming the task, raised
before anything is scored.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backtrack.evaluation.evalplus_check import CONVERT_SOURCE, input_kind, reference_source
from backtrack.execution.sandbox import SandboxConfig, run_many
from backtrack.models.hardware import cpu_name  # imports no torch

CACHE_ENV = "BACKTRACK_CACHE"  # the same variable the weight store reads
CACHE_SUBDIR = "reference-times"
FORMAT_VERSION = 1
TIMING_PROGRAMS = 2  # the project's machines have 2+ cores: HumanEval+ takes ~10 s, not ~20 s
# One task's reference on all its inputs: the slowest (Mbpp/599) took 59 s on a loaded 2-core
# machine; a reference past this is named as the one that cannot be timed.
TASK_LIMIT_S = 300.0
PROGRAM_LIMIT_S = 1800.0  # a whole timing program (the parent's backstop)
OUTPUT_CAP_BYTES = 64 * 1024**2  # ~125k inputs' times as JSON take ~2.5 MB


class ReferenceTimeError(ValueError):
    """A canonical solution could not be timed (the message is one line, naming the task)."""


@dataclass(frozen=True)
class TaskTimes:
    """Seconds the canonical solution took on each base and each plus input."""

    base: tuple[float, ...]
    plus: tuple[float, ...]


def cache_root() -> Path:
    """``$BACKTRACK_CACHE``, else the user cache directory for ``backtrack``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("backtrack"))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def machine_fingerprint() -> dict[str, str]:
    """What the times depend on besides the data: the CPU and the interpreter."""
    return {
        "cpu": cpu_name(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def cache_path(data_sha256: str, fingerprint: dict[str, str]) -> Path:
    machine = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    return cache_root() / CACHE_SUBDIR / f"{data_sha256[:16]}-{machine[:12]}.json"


_TIMING_MAIN = """
import copy, json, signal, sys, time


class _TaskTooSlow(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _TaskTooSlow()


def _time_task(task):
    namespace = {}
    exec(compile(task["reference"], "<reference of " + task["task_id"] + ">", "exec"), namespace)
    fn = namespace[task["entry_point"]]
    times = {}
    for group in ("base", "plus"):
        times[group] = []
        for args in _bt_convert(task[group], task["kind"]):
            args = copy.deepcopy(args)
            start = time.perf_counter()
            fn(*args)
            times[group].append(round(time.perf_counter() - start, 7))
    return times


signal.signal(signal.SIGALRM, _on_alarm)
for task in json.loads(TASKS):
    line = {"task_id": task["task_id"]}
    signal.setitimer(signal.ITIMER_REAL, TASK_LIMIT_S)
    try:
        line.update(_time_task(task))
    except _TaskTooSlow:
        line["error"] = f"ran past {TASK_LIMIT_S:g} s on its inputs"
    except BaseException as exc:
        line["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    print(json.dumps(line), flush=True)
"""


def _timing_program(tasks: list[dict]) -> str:
    return (
        CONVERT_SOURCE
        + f"\nTASKS = {json.dumps(tasks)!r}\nTASK_LIMIT_S = {TASK_LIMIT_S!r}\n"
        + _TIMING_MAIN
    )


def _task_spec(record: dict, dataset: str) -> dict:
    task_id = str(record.get("task_id"))
    if not record.get("canonical_solution") or not record.get("entry_point"):
        raise ReferenceTimeError(f"{task_id}: no canonical solution to time")
    try:
        return {
            "task_id": task_id,
            "reference": reference_source(record, dataset),
            "entry_point": record["entry_point"],
            "kind": input_kind(task_id, dataset),
            "base": list(record["base_input"]),
            "plus": list(record["plus_input"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceTimeError(f"{task_id}: not an EvalPlus record ({exc})") from exc


def measure(
    records: Sequence[dict], dataset: str, programs: int = TIMING_PROGRAMS
) -> dict[str, TaskTimes]:
    """Time every record's canonical solution in the sandbox (no cache)."""
    specs = [_task_spec(r, dataset) for r in records]
    chunks = [specs[i::programs] for i in range(max(1, programs))]
    chunks = [c for c in chunks if c]
    config = SandboxConfig(
        timeout_s=PROGRAM_LIMIT_S,
        output_cap_bytes=OUTPUT_CAP_BYTES,
        max_file_bytes=OUTPUT_CAP_BYTES,
    )
    results = run_many([_timing_program(c) for c in chunks], len(chunks), config)
    times: dict[str, TaskTimes] = {}
    for chunk, result in zip(chunks, results, strict=True):
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        for line in lines:
            if "error" in line:
                raise ReferenceTimeError(
                    f"{line['task_id']}: the canonical solution cannot be timed ({line['error']})"
                )
            times[line["task_id"]] = TaskTimes(tuple(line["base"]), tuple(line["plus"]))
        if len(lines) < len(chunk) or not result.passed:
            stuck = chunk[min(len(lines), len(chunk) - 1)]["task_id"]
            raise ReferenceTimeError(
                f"{stuck}: the canonical solution cannot be timed "
                f"(timing program {result.status}: {result.detail})"
            )
    return times


def _read_cache(path: Path, data_sha256: str) -> dict[str, TaskTimes] | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("version") != FORMAT_VERSION or stored.get("data_sha256") != data_sha256:
            return None
        return {
            k: TaskTimes(tuple(v["base"]), tuple(v["plus"])) for k, v in stored["tasks"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent or unreadable: measure again


def _write_cache(path: Path, payload: dict) -> None:
    """Write atomically; a cache that cannot be written only costs a re-measure next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(payload, out)
        os.replace(temporary, path)
    except OSError as exc:
        print(f"warning: cannot cache reference times in {path}: {exc}", file=sys.stderr)


def reference_times(
    data_path: str | Path, records: Sequence[dict], dataset: str
) -> dict[str, TaskTimes]:
    """Every record's reference times: from the cache when this file was timed on this machine,
    else measured now and cached. ``dataset``: ``humaneval`` or ``mbpp`` (EvalPlus's names)."""
    data_sha256 = file_sha256(data_path)
    fingerprint = machine_fingerprint()
    path = cache_path(data_sha256, fingerprint)
    cached = _read_cache(path, data_sha256)
    wanted = {str(r.get("task_id")) for r in records}
    if cached is not None and wanted <= cached.keys():
        return cached
    times = measure(records, dataset)
    payload = {
        "version": FORMAT_VERSION,
        "data_sha256": data_sha256,
        "machine": fingerprint,
        "tasks": {k: {"base": v.base, "plus": v.plus} for k, v in times.items()},
    }
    _write_cache(path, payload)
    return times

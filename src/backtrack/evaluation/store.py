"""The result directory of ``backtrack eval``: ``meta.json`` and the resumable JSONL store.

Layout of a result directory ``DIR``:

* ``meta.json``: the whole configuration (model, dtype, every generation setting, mode,
  dataset, configurations, runs, problems) plus machine information. A re-run into the same
  directory must agree on everything that changes the *meaning* of a record
  (:data:`META_KEYS`); adding operators, runs or problems is allowed and simply extends the
  experiment.
* ``results.jsonl``: one JSON object per (configuration, run, problem), see :data:`RECORD_FIELDS`.
  Each line is appended, flushed and fsynced on its own, so a crash or Ctrl-C loses at most the
  items in flight; a re-run skips every finished (config, run, task_id) and a corrupted or
  truncated line is reported and redone.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtrack.engine.settings import GENERATION_KEYS
from backtrack.evaluation.cells import Generated, WorkItem
from backtrack.evaluation.settings import SEED_STRIDE, Configuration, EvalError, EvalSettings
from backtrack.models.hardware import cpu_name, cpu_supports_bf16, resolve_load_plan

if TYPE_CHECKING:
    from backtrack.execution.sandbox import ExecResult

RESULTS_FILE = "results.jsonl"
META_FILE = "meta.json"
DETAIL_CAP = 500
# Fields of meta.json that must match when resuming: they change what a record means.
META_KEYS = (
    "model",
    "dataset",
    "mode",
    "dtype",
    "quantize",
    "seed",
    "split",
    "visible_tests",
    "timeout_s",
    # What "auto" became on the machine that decoded: a result directory resumed on a CPU
    # without native bf16 would otherwise silently mix bf16 and fp32 records.
    "dtype_resolved",
    "device_resolved",
    # The backend that decoded (transformers or llama.cpp): other weights, other numbers.
    "backend_resolved",
    # Every generation setting (temperature, top_k, ..., stop, ban, budget), flat. A meta.json
    # written before some of them were recorded simply lacks them; only keys present in both
    # are compared.
    *GENERATION_KEYS,
)
RECORD_FIELDS = (
    "config",
    "run",
    "task_id",
    "problem_index",
    "passed",
    "status",
    "detail",
    "completion",
    "raw_completion",
    "finish_reason",
    "final_tokens",
    "forward_passes",
    "tokens_sampled",
    "tokens_discarded",
    "backtracks",
    "deepest_rollback",
    "wall_time_s",
    "rows",
    "exec_time_s",
    "sandbox",
    "seed",
    "mode",
    "model",
    "kind",
    "spec",
)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured (throughput is only comparable on the same machine)."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": cpu_name(),
        "cpu_native_bf16": cpu_supports_bf16(),
    }
    return info


# meta.json written before a key existed means this value (a resumed run is compared with it).
# What a key meant before it was recorded (older meta.json files lack it).
META_DEFAULTS = {"backend_resolved": "transformers", "visible_tests": None}


def resolved_plan(settings: EvalSettings) -> dict[str, str]:
    """The backend, device and dtype ``settings`` resolve to here (``auto`` depends on the
    machine and on what is installed)."""
    from backtrack.models import ModelLoadError, resolve_backend  # loads torch

    try:
        backend = resolve_backend(
            settings.model, settings.backend, settings.dtype, settings.device, settings.quantize
        )
        if backend == "llama.cpp":
            # GGUF weights keep their own quantization; llama.cpp computes on the CPU.
            return {"backend_resolved": backend, "dtype_resolved": "gguf", "device_resolved": "cpu"}
        device, dtype, _ = resolve_load_plan(settings.dtype, settings.device, settings.quantize)
    except (ValueError, ModelLoadError) as exc:
        raise EvalError(str(exc)) from exc
    return {
        "backend_resolved": backend,
        "dtype_resolved": str(dtype).removeprefix("torch."),
        "device_resolved": device.type,
    }


def build_meta(settings: EvalSettings, configs: Sequence[Configuration], tasks: list[str]) -> dict:
    """The meta.json payload for this invocation."""
    meta = asdict(settings)
    meta.pop("force")
    meta.pop("generation")
    meta.update(settings.generation.to_flat())  # flat, as meta.json always had them
    meta.update(resolved_plan(settings))
    meta.update(
        timeout_s=settings.resolved_timeout(),
        configs=[asdict(c) for c in configs],
        task_ids=tasks,
        seed_rule=f"seed + {SEED_STRIDE} * run + problem_index (index in the full dataset)",
        machine=machine_info(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    return meta


def merge_meta(old: dict, new: dict, force: bool) -> dict:
    """Check an existing meta.json against this invocation; return the one to write.

    Configurations (and the operators and baselines named), runs and problems are merged
    (union); any :data:`META_KEYS` difference is an error unless ``force``.
    """

    def old_value(key: str) -> Any:
        return old.get(key, META_DEFAULTS.get(key))

    diffs = [
        k
        for k in META_KEYS
        if (k in old or k in META_DEFAULTS) and k in new and old_value(k) != new.get(k)
    ]
    if diffs and not force:
        detail = "; ".join(f"{k}: {old_value(k)!r} -> {new.get(k)!r}" for k in diffs)
        raise EvalError(
            f"the result directory was made with other settings ({detail}); use another --out "
            "or --force to mix them"
        )
    merged = dict(new)
    names = [c["name"] for c in new["configs"]]
    merged["configs"] = [c for c in old.get("configs", []) if c["name"] not in names] + list(
        new["configs"]
    )
    # Every invocation's operators and baselines, not the last one's: the directory holds them all.
    for key in ("operators", "baselines"):
        merged[key] = list(dict.fromkeys([*(old.get(key) or []), *(new.get(key) or [])]))
    merged["task_ids"] = list(dict.fromkeys(old.get("task_ids", []) + new["task_ids"]))
    merged["runs"] = max(int(old.get("runs", 0)), int(new["runs"]))
    merged["created"] = old.get("created", new["created"])
    if diffs:
        merged["forced_over"] = {k: old_value(k) for k in diffs}
    return merged


def read_meta(directory: Path) -> dict | None:
    """The result directory's meta.json, or None when it has none; ValueError when it is not
    valid JSON."""
    path = directory / META_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically (a temporary file, fsynced, then renamed over it), so a
    crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_meta(directory: Path, meta: dict) -> None:
    """Replace the result directory's meta.json atomically; the runner and re-scoring both
    write it here."""
    replace_file(directory / META_FILE, json.dumps(meta, indent=1))


def read_directory(directory: Path) -> tuple[dict, list[dict], list[str]]:
    """A result directory's meta.json (``{}`` without one), its records and the damage found
    reading them (see :func:`read_records`); FileNotFoundError when it holds no results."""
    results = directory / RESULTS_FILE
    if not results.exists():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {directory}")
    records, problems = read_records(results)
    return read_meta(directory) or {}, records, problems


# --------------------------------------------------------------------------- records


def make_record(
    item: WorkItem, gen: Generated, completion: str, result: ExecResult, s: EvalSettings
) -> dict:
    """One results.jsonl line (fields: :data:`RECORD_FIELDS`; a filtering baseline's also
    ``samples``, ``selected`` and ``candidates``, see :mod:`~.filtering`)."""
    record = {
        "config": item.config.name,
        "run": item.run,
        "task_id": item.problem.task_id,
        "problem_index": item.problem_index,
        "passed": result.passed,
        "status": result.status,
        "detail": result.detail[:DETAIL_CAP],
        "completion": completion,
        "raw_completion": gen.raw,
        "finish_reason": gen.finish_reason,
        "final_tokens": gen.final_tokens,
        "forward_passes": gen.forward_passes,
        "tokens_sampled": gen.tokens_sampled,
        "tokens_discarded": gen.tokens_discarded,
        "backtracks": gen.backtracks,
        "deepest_rollback": gen.deepest_rollback,
        "checks": gen.checks,
        "check_wait_s": gen.check_wait_s,
        "wall_time_s": gen.wall_time_s,
        "rows": gen.rows,
        "exec_time_s": result.duration_s,
        "sandbox": asdict(result.sandbox),
        "seed": item.seed,
        "mode": s.mode,
        "model": s.model,
        "kind": item.config.kind,
        "spec": item.config.spec,
    }
    if gen.candidates is not None:
        record.update(samples=len(gen.candidates), selected=gen.selected, candidates=gen.candidates)
    return record


def read_records(path: Path) -> tuple[list[dict], list[str]]:
    """Parse a results file, tolerating damage: returns (records, problems found).

    A line that is not a JSON object with ``config``/``run``/``task_id`` (e.g. one cut short by
    a crash) is skipped and reported; a second record for the same key is ignored (first wins).
    """
    records: list[dict] = []
    problems: list[str] = []
    seen: set[tuple] = set()
    if not path.exists():
        return records, problems
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = (str(rec["config"]), int(rec["run"]), str(rec["task_id"]))
            except (ValueError, KeyError, TypeError):
                problems.append(f"{path}:{lineno}: corrupted line skipped ({line[:60]!r}...)")
                continue
            if key in seen:
                problems.append(f"{path}:{lineno}: duplicate record {key} ignored")
                continue
            seen.add(key)
            records.append(rec)
    return records, problems


class ResultStore:
    """Append-only JSONL of records, one fsynced line each (durable per record)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / RESULTS_FILE
        self._handle = None
        self._lock = threading.Lock()

    def load(self) -> tuple[list[dict], list[str]]:
        """Read finished records; a damaged file is rewritten clean so appends stay parseable."""
        records, problems = read_records(self.path)
        if problems:
            self.rewrite(records)
        return records, problems

    def rewrite(self, records: Sequence[dict]) -> None:
        """Replace the file atomically (see :func:`replace_file`)."""
        replace_file(self.path, "".join(json.dumps(rec) + "\n" for rec in records))

    def append(self, record: dict) -> None:
        """Write one record as one line and force it to disk before returning."""
        with self._lock:
            if self._handle is None:
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

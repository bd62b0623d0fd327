"""The benchmark runner behind ``backtrack eval``: generate, execute, record, resume.

Layout of a result directory ``DIR``:

* ``meta.json``: the whole configuration (model, dtype, sampling, stop strings, mode, dataset,
  configurations, runs, problems) plus machine information. A re-run into the same directory
  must agree on everything that changes the *meaning* of a record (:data:`META_KEYS`); adding
  operators, runs or problems is allowed and simply extends the experiment.
* ``results.jsonl``: one JSON object per (configuration, run, problem), see :data:`RECORD_FIELDS`.
  Each line is appended, flushed and fsynced on its own, so a crash or Ctrl-C loses at most the
  items in flight; a re-run skips every finished (config, run, task_id) and a corrupted or
  truncated line is reported and redone.

Pairing and seeds: the seed of (run ``r``, problem ``i``) is ``seed + SEED_STRIDE * r + i`` where
``i`` is the problem's index in the *full* dataset (so it does not depend on ``--limit`` or
``--problems``), identical for every configuration. Configurations therefore differ only by the
operator, and comparisons against ``base`` are paired on the same seeds.

Order of work: runs outermost, then problems, then configurations, so after any interruption
every configuration has been run on (almost) the same (run, problem) cells and a report on the
partial directory is already a paired comparison.

Configurations: ``base`` is the ``never`` operator through our engine (always included);
every ``--operator SPEC`` is named by its spec; optional baselines through transformers'
``model.generate``: ``beam:N`` (deterministic, decoded once in run 0 and copied to the other
runs with ``reused_from_run=0``) and ``hf-sample`` (plain sampling seeded like ours).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backtrack.evaluation.data import DataError, Problem, load_dataset, select_problems
from backtrack.evaluation.prompts import EVALPLUS_STOP, build_prompt, postprocess, program_for
from backtrack.evaluation.sandbox import ExecResult, SandboxConfig, run_program

BASE = "base"
SEED_STRIDE = 10_000  # > number of problems in any dataset we load (MBPP: 974)
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
    "temperature",
    "top_k",
    "top_p",
    "max_new_tokens",
    "seed",
    "stop",
    "period",
    "timeout_s",
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
    "wall_time_s",
    "exec_time_s",
    "sandbox",
    "seed",
    "mode",
    "model",
    "kind",
    "spec",
)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"temperature": 0.5, "top_k": 50, "mode": "completion"},
}


class EvalError(RuntimeError):
    """A usage problem (bad spec, meta mismatch, bad problem ids): the CLI exits with code 2."""


@dataclass(frozen=True)
class Configuration:
    """One decoding configuration: ``kind`` is ``engine``, ``beam`` or ``hf-sample``."""

    name: str
    kind: str
    spec: str
    beams: int = 1


def seed_for(base_seed: int, run: int, problem_index: int) -> int:
    """The seed of one (run, problem) cell, shared by every configuration (paired design)."""
    return base_seed + SEED_STRIDE * run + problem_index


def build_configurations(operators: Sequence[str], baselines: Sequence[str] = ()) -> list:
    """``base`` first, then each distinct operator spec, then the transformers baselines.

    Specs are parsed now so a typo fails before the model is loaded.
    """
    from backtrack.operators import OperatorSpecError, parse_operator

    configs = [Configuration(BASE, "engine", "never")]
    seen = {BASE, "never"}
    for spec in operators:
        spec = spec.strip()
        try:
            parse_operator(spec)
        except OperatorSpecError as exc:
            raise EvalError(f"bad operator {spec!r}: {exc}") from exc
        if spec in seen:
            continue
        seen.add(spec)
        configs.append(Configuration(spec, "engine", spec))
    for spec in baselines:
        spec = spec.strip()
        if spec == "hf-sample":
            configs.append(Configuration(spec, "hf-sample", spec))
        elif spec.startswith("beam"):
            _, _, n = spec.partition(":")
            if not (n or "2").isdigit() or int(n or "2") < 1:
                raise EvalError(f"bad baseline {spec!r}: use beam:N with N >= 1")
            beams = int(n or "2")
            configs.append(Configuration(f"beam:{beams}", "beam", spec, beams))
        else:
            raise EvalError(f"unknown baseline {spec!r}; use beam:N or hf-sample")
    return configs


@dataclass
class EvalSettings:
    """Everything ``backtrack eval`` was asked to do (stored in meta.json)."""

    model: str
    out: str
    operators: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    dataset: str = "humaneval"
    data_path: str | None = None
    runs: int = 1
    temperature: float = 0.5
    top_k: int | None = 50
    top_p: float | None = None
    max_new_tokens: int = 512
    seed: int = 0
    problems: str | None = None
    limit: int | None = None
    mode: str = "completion"
    stop: list[str] | None = None  # None: EvalPlus stops in completion mode, none in chat mode
    period: int = 1
    dtype: str = "auto"
    device: str = "auto"
    quantize: str | None = None
    batch_size: int = 1
    workers: int = 2
    timeout_s: float | None = None  # None: the dataset's recommended limit
    force: bool = False

    def resolved_stop(self) -> list[str]:
        """Chat replies are cut by code extraction, so they get no default stop strings."""
        if self.stop is not None:
            return list(self.stop)
        return list(EVALPLUS_STOP) if self.mode == "completion" else []

    def resolved_timeout(self) -> float:
        from backtrack.evaluation.data import RECOMMENDED_TIMEOUT_S

        if self.timeout_s is not None:
            return float(self.timeout_s)
        key = self.dataset.lower().replace("plus", "+").replace("-", "")
        return RECOMMENDED_TIMEOUT_S.get(key, 3.0)


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
    }
    return info


def build_meta(settings: EvalSettings, configs: Sequence[Configuration], tasks: list[str]) -> dict:
    """The meta.json payload for this invocation."""
    meta = asdict(settings)
    meta.pop("force")
    meta.update(
        stop=settings.resolved_stop(),
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

    Configurations, runs and problems are merged (union); any :data:`META_KEYS` difference is
    an error unless ``force``.
    """
    diffs = [k for k in META_KEYS if k in old and old.get(k) != new.get(k)]
    if diffs and not force:
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diffs)
        raise EvalError(
            f"the result directory was made with other settings ({detail}); use another --out "
            "or --force to mix them"
        )
    merged = dict(new)
    names = [c["name"] for c in new["configs"]]
    merged["configs"] = [c for c in old.get("configs", []) if c["name"] not in names] + list(
        new["configs"]
    )
    merged["task_ids"] = list(dict.fromkeys(old.get("task_ids", []) + new["task_ids"]))
    merged["runs"] = max(int(old.get("runs", 0)), int(new["runs"]))
    merged["created"] = old.get("created", new["created"])
    if diffs:
        merged["forced_over"] = {k: old.get(k) for k in diffs}
    return merged


# --------------------------------------------------------------------------- the store


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
        """Replace the file atomically (write a temporary file, fsync, rename)."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for rec in records:
                handle.write(json.dumps(rec) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

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


# --------------------------------------------------------------------------- generation


@dataclass
class Generated:
    """A decoded completion plus its work counts, before execution."""

    raw: str
    finish_reason: str
    final_tokens: int
    forward_passes: int
    tokens_sampled: int
    tokens_discarded: int
    backtracks: int
    wall_time_s: float


@dataclass(frozen=True)
class WorkItem:
    """One (configuration, run, problem) cell to fill."""

    config: Configuration
    run: int
    problem: Problem
    problem_index: int
    seed: int


def _from_result(result) -> Generated:
    c = result.counts
    return Generated(
        raw=result.text,
        finish_reason=result.finish_reason,
        final_tokens=len(result.token_ids),
        forward_passes=c.forward_passes,
        tokens_sampled=c.tokens_sampled,
        tokens_discarded=c.tokens_discarded,
        backtracks=c.backtracks,
        wall_time_s=c.wall_time_s,
    )


class Generator:
    """Decodes work items with the engine (single or batched) or transformers' ``generate``."""

    def __init__(self, model, tokenizer, settings: EvalSettings) -> None:
        from backtrack.engine import Decoder

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.stop = tuple(settings.resolved_stop())
        self.decoder = Decoder(model, tokenizer)
        self._batch = None
        self._prompts: dict[str, str] = {}

    def prompt(self, problem: Problem) -> str:
        if problem.task_id not in self._prompts:
            self._prompts[problem.task_id] = build_prompt(
                problem, self.settings.mode, self.tokenizer
            )
        return self._prompts[problem.task_id]

    def engine_config(self, seed: int):
        from backtrack.engine import GenerationConfig

        s = self.settings
        return GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            stop=self.stop,
            seed=seed,
            period=s.period,
        )

    def engine(self, items: Sequence[WorkItem]) -> Iterator[tuple[WorkItem, Generated]]:
        """Decode engine items: batched through BatchDecoder when batch_size > 1.

        Every item gets a fresh operator instance (operators carry per-generation state).
        """
        from backtrack.operators import parse_operator

        if self.settings.batch_size <= 1:
            for item in items:
                op = parse_operator(item.config.spec)
                config = self.engine_config(item.seed)
                result = self.decoder.generate(self.prompt(item.problem), op, config)
                yield item, _from_result(result)
            return
        from backtrack.engine.batch import BatchDecoder

        if self._batch is None:
            self._batch = BatchDecoder(self.model, self.tokenizer)
        requests = [
            (self.prompt(i.problem), parse_operator(i.config.spec), self.engine_config(i.seed))
            for i in items
        ]
        for index, result in self._batch.generate_many(requests, self.settings.batch_size):
            yield items[index], _from_result(result)

    def hf(self, item: WorkItem) -> Generated:
        """Plain transformers decoding (beam search or sampling), stop strings post-hoc."""
        import torch

        s, tok = self.settings, self.tokenizer
        enc = tok(self.prompt(item.problem), return_tensors="pt", add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens}
        if item.config.kind == "beam":
            kwargs.update(num_beams=item.config.beams, do_sample=False, early_stopping=True)
        elif s.temperature == 0:  # transformers rejects sampling at temperature 0: greedy
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_k=s.top_k or 0)
            kwargs["top_p"] = s.top_p if s.top_p is not None else 1.0
        if self.stop:
            kwargs.update(stop_strings=list(self.stop), tokenizer=tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        torch.manual_seed(item.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, pad_token_id=pad, **kwargs)
        wall = time.perf_counter() - start
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        eos = set(_eos_ids(self.model, tok))
        cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
        ids = new[:cut]
        raw = tok.decode(ids, skip_special_tokens=True)
        finish = "eos" if cut < len(new) or (ids and ids[-1] in eos) else "max_new_tokens"
        if any(st in raw for st in self.stop):
            finish = "stop_string"
        return Generated(raw, finish, len(ids), len(ids), len(ids), 0, 0, wall)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


# --------------------------------------------------------------------------- the runner


@dataclass
class RunSummary:
    """What one invocation did: cells already done, cells decoded now, records written."""

    total: int
    already_done: int
    generated: int
    written: int
    warnings: list[str]
    out: Path


def make_record(
    item: WorkItem, gen: Generated, completion: str, result: ExecResult, s: EvalSettings
) -> dict:
    """One results.jsonl line (fields: :data:`RECORD_FIELDS`)."""
    return {
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
        "wall_time_s": gen.wall_time_s,
        "exec_time_s": result.duration_s,
        "sandbox": asdict(result.sandbox),
        "seed": item.seed,
        "mode": s.mode,
        "model": s.model,
        "kind": item.config.kind,
        "spec": item.config.spec,
    }


def score(
    problem: Problem, completion: str, mode: str, config: SandboxConfig | None = None
) -> ExecResult:
    """Run one post-processed completion against the problem's tests in the sandbox."""
    return run_program(program_for(problem, completion, mode), config)


def load_problems(settings: EvalSettings) -> tuple[list[Problem], dict[str, int]]:
    """The selected problems, and every problem's index in the full dataset (for seeds)."""
    from backtrack.evaluation.data import parse_problem_ids

    name = settings.dataset.lower().replace("-", "")
    try:
        everything = load_dataset(name, settings.data_path)
        prefix = everything[0].task_id.split("/")[0] if everything else "HumanEval"
        ids = parse_problem_ids(settings.problems, prefix) if settings.problems else None
        chosen = select_problems(everything, ids, settings.limit)
    except (DataError, OSError) as exc:
        raise EvalError(str(exc)) from exc
    if not chosen:
        raise EvalError("no problems selected")
    return chosen, {p.task_id: i for i, p in enumerate(everything)}


def plan(
    configs: Sequence[Configuration],
    problems: Sequence[Problem],
    index: dict[str, int],
    runs: int,
    base_seed: int,
) -> list[WorkItem]:
    """Every cell, runs outermost, then problems, then configurations (see module docs)."""
    return [
        WorkItem(c, r, p, index[p.task_id], seed_for(base_seed, r, index[p.task_id]))
        for r in range(runs)
        for p in problems
        for c in configs
    ]


def prepare(settings: EvalSettings) -> tuple[list[Configuration], list[Problem], dict, dict]:
    """Validate everything that needs no model: configurations, problems, meta.json."""
    if settings.runs < 1:
        raise EvalError("--runs must be >= 1")
    if settings.batch_size < 1 or settings.workers < 1:
        raise EvalError("--batch-size and --workers must be >= 1")
    if settings.mode not in ("completion", "chat"):
        raise EvalError(f"unknown mode {settings.mode!r}; use completion or chat")
    try:
        from backtrack.engine import GenerationConfig

        GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            stop=tuple(settings.resolved_stop()),
            period=settings.period,
        )
    except ValueError as exc:
        raise EvalError(str(exc)) from exc
    configs = build_configurations(settings.operators, settings.baselines)
    problems, index = load_problems(settings)
    out = Path(settings.out)
    meta = build_meta(settings, configs, [p.task_id for p in problems])
    meta_path = out / META_FILE
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise EvalError(f"{meta_path} is not valid JSON: {exc}") from exc
        meta = merge_meta(old, meta, settings.force)
    return configs, problems, index, meta


def run_eval(
    settings: EvalSettings,
    model=None,
    tokenizer=None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run (or resume) an evaluation into ``settings.out``; see the module docstring.

    ``model``/``tokenizer`` may be passed in (tests, notebooks); otherwise they are loaded once
    here. ``on_record`` is called after each record is durably written (progress hooks, tests).
    """
    configs, problems, index, meta = prepare(settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out)
    records, problems_found = store.load()
    for message in problems_found:
        log(f"warning: {message} (will be redone)")
    done = {(r["config"], int(r["run"]), r["task_id"]) for r in records}
    items = plan(configs, problems, index, settings.runs, settings.seed)
    todo = [i for i in items if (i.config.name, i.run, i.problem.task_id) not in done]
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / META_FILE)
    summary = RunSummary(len(items), len(items) - len(todo), 0, 0, problems_found, out)
    if not todo:
        return summary
    if model is None:
        from backtrack.models import load_model

        kwargs: dict[str, Any] = {"dtype": settings.dtype, "device": settings.device}
        if settings.quantize:
            kwargs["quantize"] = settings.quantize
        model, tokenizer = load_model(settings.model, **kwargs)
    generator = Generator(model, tokenizer, settings)
    try:  # e.g. chat mode with a tokenizer that has no chat template
        generator.prompt(todo[0].problem)
    except ValueError as exc:
        raise EvalError(f"cannot build prompts: {exc}") from exc
    sandbox = SandboxConfig(timeout_s=settings.resolved_timeout())
    # beam:N is deterministic: run 0's record is reused for the other runs.
    beam_done = {
        (r["config"], r["task_id"]): r for r in records if r.get("kind") == "beam" and r["run"] == 0
    }
    _execute(todo, generator, settings, sandbox, store, summary, beam_done, on_record, progress)
    return summary


def _execute(
    todo: list[WorkItem],
    generator: Generator,
    settings: EvalSettings,
    sandbox: SandboxConfig,
    store: ResultStore,
    summary: RunSummary,
    beam_done: dict,
    on_record: Callable[[dict], None] | None,
    progress: bool,
) -> None:
    """Decode in the main thread while a pool runs programs; records are written in order of
    completion by the main thread (so hooks and interrupts happen there)."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="eval", unit="item", disable=not progress, smoothing=0.05)
    pool = ThreadPoolExecutor(max_workers=settings.workers)
    pending: list[tuple[WorkItem, Generated, str, Future]] = []

    def write(record: dict) -> None:
        store.append(record)
        summary.written += 1
        bar.update(1)
        if on_record is not None:
            on_record(record)

    def drain(block: bool) -> None:
        while pending and (block or pending[0][3].done()):
            item, gen, completion, future = pending.pop(0)
            record = make_record(item, gen, completion, future.result(), settings)
            if item.config.kind == "beam" and item.run == 0:
                beam_done[(item.config.name, item.problem.task_id)] = record
            write(record)

    def submit(item: WorkItem, gen: Generated) -> None:
        summary.generated += 1
        completion = postprocess(item.problem, gen.raw, settings.mode, generator.stop)
        future = pool.submit(score, item.problem, completion, settings.mode, sandbox)
        pending.append((item, gen, completion, future))
        drain(block=False)

    try:
        # Chunks of problems (one run at a time) keep the run > problem > config order while
        # giving the batch decoder enough rows to fill its batch.
        chunk = max(1, settings.batch_size)
        for group in _chunks(todo, chunk):
            engine_items = [i for i in group if i.config.kind == "engine"]
            for item, gen in generator.engine(engine_items):
                submit(item, gen)
            for item in group:
                if item.config.kind == "engine":
                    continue
                if item.config.kind == "beam" and item.run > 0:
                    drain(block=True)
                    first = beam_done.get((item.config.name, item.problem.task_id))
                    if first is not None:
                        write({**first, "run": item.run, "seed": item.seed, "reused_from_run": 0})
                        continue
                submit(item, generator.hf(item))
        drain(block=True)
    except BaseException:
        # Interrupted (Ctrl-C) or failed: keep every cell whose program already finished.
        for item, gen, completion, future in pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                store.append(make_record(item, gen, completion, future.result(), settings))
                summary.written += 1
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        store.close()


def _chunks(items: list[WorkItem], problems_per_chunk: int) -> Iterator[list[WorkItem]]:
    """Consecutive items grouped by (run, problem), ``problems_per_chunk`` problems per group."""
    group: list[WorkItem] = []
    keys: list[tuple[int, str]] = []
    for item in items:
        key = (item.run, item.problem.task_id)
        if key not in keys:
            if len(keys) == problems_per_chunk or (keys and keys[-1][0] != item.run):
                yield group
                group, keys = [], []
            keys.append(key)
        group.append(item)
    if group:
        yield group

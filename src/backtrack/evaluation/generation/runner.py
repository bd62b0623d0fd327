"""The benchmark runner behind ``backtrack eval``: plan the cells, generate, execute, record,
resume.

The rest of an evaluation lives beside it, one job a module: :mod:`~.settings` (what was asked:
settings, configurations, the seed rule), :mod:`~.cells` (the cells and what decoding them
gave), :mod:`~.sources` (completions from the engine or the transformers baselines),
:mod:`~.sandbox` (running programs), :mod:`~.store` (meta.json and the resumable JSONL
records), :mod:`~.report` (tables, plots) and :mod:`~.rescore` (scoring stored completions
again).

Order of work: runs outermost, then problems, then configurations, so after any interruption
every configuration has been run on (almost) the same (run, problem) cells and a report on the
partial directory is already a paired comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from backtrack.evaluation.cells import Generated, WorkItem, cell_key
from backtrack.evaluation.data import (
    DataError,
    Problem,
    load_dataset,
    mbpp_problems,
    select_problems,
)
from backtrack.evaluation.generation.sources import CompletionSource, load_model_for
from backtrack.evaluation.prompts import postprocess
from backtrack.evaluation.scoring.score import score
from backtrack.evaluation.settings import (
    Configuration,
    EvalError,
    EvalSettings,
    build_configurations,
    seed_for,
)
from backtrack.evaluation.store import (
    ResultStore,
    build_meta,
    make_record,
    merge_meta,
    read_meta,
    write_meta,
)
from backtrack.execution.sandbox import SandboxConfig
from backtrack.paths import OutputPathError, ensure_writable_directory


@dataclass
class RunSummary:
    """What one invocation did: cells already done, cells decoded now, records written."""

    total: int
    already_done: int
    generated: int
    written: int
    warnings: list[str]
    out: Path


def load_problems(settings: EvalSettings) -> tuple[list[Problem], dict[str, int]]:
    """The selected problems, and every problem's index in the full dataset (for seeds)."""
    from backtrack.evaluation.data import hide_examples, parse_problem_ids

    try:
        everything = load_dataset(settings.dataset, settings.data_path)
        prefix = everything[0].task_id.split("/")[0] if everything else "HumanEval"
        ids = parse_problem_ids(settings.problems, prefix) if settings.problems else None
        pool = mbpp_problems(everything, settings.split) if settings.split else everything
        chosen = select_problems(pool, ids, settings.limit)
        if settings.visible_tests is not None:
            chosen = [hide_examples(p, settings.visible_tests) for p in chosen]
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
    configs = build_configurations(settings.operators, settings.baselines)
    problems, index = load_problems(settings)
    out = Path(settings.out)
    check_output_dir(out)
    meta = build_meta(settings, configs, [p.task_id for p in problems])
    baselines = [c.name for c in configs if c.kind != "engine"]
    if settings.ray and baselines:
        raise EvalError(
            f"--ray decodes engine configurations only; run {', '.join(baselines)} without --ray "
            "(in the same --out: the records add up)"
        )
    generate_only = [c.name for c in configs if c.kind == "hf-sample"]
    if meta["backend_resolved"] != "transformers" and generate_only:
        raise EvalError(
            f"{', '.join(generate_only)} runs transformers' model.generate, which the "
            f"{meta['backend_resolved']} backend cannot run; evaluate it with --backend "
            "transformers (in another --out: one result directory holds one backend)"
        )
    if baselines and settings.generation.bans() is not None:
        raise EvalError(
            f"{', '.join(baselines)} cannot enforce banned strings (baselines decode without "
            "the engine's bans); evaluate it without --ban-string/--ban-regex"
        )
    try:
        old = read_meta(out)
    except ValueError as exc:
        raise EvalError(str(exc)) from exc
    if old is not None:
        meta = merge_meta(old, meta, settings.force)
    return configs, problems, index, meta


def check_output_dir(out: Path) -> None:
    """The result directory exists (created now, with its parents) and can be written."""
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} is a file, not a directory")
    try:
        ensure_writable_directory(out, f"the result directory {out}")
    except OutputPathError as exc:
        raise EvalError(str(exc)) from exc


def run_eval(
    settings: EvalSettings,
    model=None,
    tokenizer=None,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    pool=None,
) -> RunSummary:
    """Run (or resume) an evaluation into ``settings.out``; see the module docstring.

    ``model``/``tokenizer`` may be passed in (tests, notebooks); otherwise they are loaded once
    here, by :func:`~.sources.load_model_for`, after every check that needs no model.
    ``on_record`` is called after each record is durably written (progress hooks, tests).
    With ``settings.ray`` the cells are decoded by a :class:`~.distributed.RayPool` (``pool``,
    or one started here and closed at the end) and no model is loaded here.
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
    todo = [i for i in items if cell_key(i) not in done]
    # A deterministic configuration (beam search, greedy decoding) is decoded in run 0 only;
    # its other runs reuse that record (``reused_from_run``), so paired comparisons with
    # sampled configurations keep every run and no compute goes to identical decodes.
    once = {c.name for c in configs if c.deterministic(settings.generation)}
    firsts = {
        (r["config"], r["task_id"]): r for r in records if r["config"] in once and r["run"] == 0
    }
    copies = [i for i in todo if i.config.name in once and i.run > 0]
    decode = [i for i in todo if not (i.config.name in once and i.run > 0)]
    if decode and model is None and not settings.ray:
        # Before meta.json is written: a model that does not load leaves no settings behind
        # that a corrected command would then be refused for.
        model, tokenizer = load_model_for(settings)
    write_meta(out, meta)
    summary = RunSummary(len(items), len(items) - len(todo), 0, 0, problems_found, out)
    if not todo:
        return summary
    writer = _Writer(store, summary, on_record, once, firsts)
    try:
        if decode:
            _decode(decode, settings, model, tokenizer, pool, writer, progress)
    finally:
        # Also after Ctrl-C: every copy whose run 0 exists is written (they cost nothing).
        try:
            for item in copies:
                first = firsts.get((item.config.name, item.problem.task_id))
                if first is not None:
                    copy = {**first, "run": item.run, "seed": item.seed, "reused_from_run": 0}
                    writer.write(copy)
        finally:
            store.close()
    return summary


def _decode(
    todo: list[WorkItem],
    settings: EvalSettings,
    model,
    tokenizer,
    pool,
    writer: _Writer,
    progress: bool,
) -> None:
    """Decode and execute ``todo`` (locally or on Ray)."""
    sandbox = SandboxConfig(timeout_s=settings.resolved_timeout())
    if settings.ray:
        from backtrack.evaluation.generation.distributed import RayPool

        own = pool is None
        pool = pool or RayPool(settings, settings.ray, settings.ray_actors)
        try:
            _execute_on_ray(todo, pool, settings, sandbox, writer, progress)
        finally:
            if own:
                pool.close()
        return
    source = CompletionSource(model, tokenizer, settings)
    try:  # e.g. chat mode with a tokenizer that has no chat template
        source.prompt(todo[0].problem)
    except ValueError as exc:
        raise EvalError(f"cannot build prompts: {exc}") from exc
    _execute(todo, source, settings, sandbox, writer, progress)


class _Writer:
    """Appends records durably and counts them; calls the ``on_record`` hook after each, and
    keeps in ``firsts`` the run-0 records of the deterministic configurations (``once``), which
    their other runs copy."""

    def __init__(
        self,
        store: ResultStore,
        summary: RunSummary,
        on_record: Callable[[dict], None] | None,
        once: set[str],
        firsts: dict[tuple[str, str], dict],
    ) -> None:
        self.store, self.summary, self.on_record = store, summary, on_record
        self.once, self.firsts = once, firsts
        self.bar = None

    def write(self, record: dict, hook: bool = True) -> None:
        if record["config"] in self.once and record["run"] == 0:
            self.firsts[(record["config"], record["task_id"])] = record
        self.store.append(record)
        self.summary.written += 1
        if self.bar is not None:
            self.bar.update(1)
        if hook and self.on_record is not None:
            self.on_record(record)


class _Recorder:
    """Writes each decoded cell's record once its program has run, in the order the cells
    were decoded; only the calling (main) thread writes, so hooks and interrupts happen there.

    ``score_async(problem, completion, mode, sandbox)`` runs a program and returns a
    ``concurrent.futures.Future`` of its result (a thread pool locally, a Ray task on Ray).
    """

    def __init__(
        self,
        settings: EvalSettings,
        sandbox: SandboxConfig,
        writer: _Writer,
        score_async: Callable[..., Future],
    ) -> None:
        self.settings, self.sandbox, self.writer = settings, sandbox, writer
        self.score_async = score_async
        self.pending: list[tuple[WorkItem, Generated, str, Future]] = []

    def submit(self, item: WorkItem, gen: Generated) -> None:
        """Post-process a decoded cell and start its program."""
        self.writer.summary.generated += 1
        mode = self.settings.mode
        completion = postprocess(item.problem, gen.raw, mode, self.settings.generation.stop)
        future = self.score_async(item.problem, completion, mode, self.sandbox)
        self.pending.append((item, gen, completion, future))
        self.drain(block=False)

    def drain(self, block: bool) -> None:
        """Write the records whose programs finished (all of them, waiting, if ``block``)."""
        while self.pending and (block or self.pending[0][3].done()):
            item, gen, completion, future = self.pending.pop(0)
            record = make_record(item, gen, completion, future.result(), self.settings)
            self.writer.write(record)

    def salvage(self) -> None:
        """Interrupted (Ctrl-C) or failed: keep every cell whose program already finished."""
        for item, gen, completion, future in self.pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                record = make_record(item, gen, completion, future.result(), self.settings)
                self.writer.write(record, hook=False)


def _execute(
    todo: list[WorkItem],
    source: CompletionSource,
    settings: EvalSettings,
    sandbox: SandboxConfig,
    writer: _Writer,
    progress: bool,
) -> None:
    """Decode in the main thread while a pool runs programs; records are written in order of
    completion by the main thread (so hooks and interrupts happen there)."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="eval", unit="item", disable=not progress, smoothing=0.05)
    writer.bar = bar
    pool = ThreadPoolExecutor(max_workers=settings.workers)
    recorder = _Recorder(settings, sandbox, writer, lambda *a: pool.submit(score, *a))
    try:
        # Chunks of problems (one run at a time) keep the run > problem > config order while
        # giving the batch decoder enough rows to fill its batch.
        for group in _chunks(todo, max(1, settings.batch_size)):
            engine_items = [i for i in group if source.batched(i)]
            for item, gen in source.engine(engine_items):
                recorder.submit(item, gen)
            for item in group:
                if not source.batched(item):
                    recorder.submit(item, source.hf(item))
        recorder.drain(block=True)
    except BaseException:
        recorder.salvage()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        writer.bar = None


def _execute_on_ray(
    todo: list[WorkItem],
    pool,
    settings: EvalSettings,
    sandbox: SandboxConfig,
    writer: _Writer,
    progress: bool,
) -> None:
    """:func:`_execute` with the decoding on the pool's actors and the programs as Ray tasks;
    the records are still written here, by this process alone."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="eval (ray)", unit="item", disable=not progress)
    writer.bar = bar
    recorder = _Recorder(settings, sandbox, writer, pool.score)
    try:
        for item, gen in pool.decode(list(_chunks(todo, max(1, settings.batch_size)))):
            recorder.submit(item, gen)
        recorder.drain(block=True)
    except BaseException:
        recorder.salvage()
        raise
    finally:
        bar.close()
        writer.bar = None


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

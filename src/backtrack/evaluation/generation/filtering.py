"""Baselines at equal compute that filter candidates by the prompt's visible examples.

Backtracking with the ``examples`` operator spends extra forward passes repairing a completion
that fails the examples the prompt shows. The obvious rivals spend theirs on whole candidates:

* ``sample-filter:n=N``: draw up to ``N`` independent samples of base's decoding (the
  ``never`` operator, the evaluation's settings), *one after another*: sample ``i + 1`` is
  drawn only when sample ``i`` failed the visible examples. Keep the first that passes; if
  none passes, the most likely one: the highest mean log-probability of its final tokens (the
  earliest on ties; an empty completion counts as least likely). Sample ``j`` of the cell with
  seed ``s`` is drawn with seed ``s + SAMPLE_SEED_STRIDE * j`` (:func:`sample_seed`), so sample
  0 is the cell's own draw and ``sample-filter:n=1`` is ``base`` token for token.
* ``beam:N+filter``: the engine's beam search (:class:`~backtrack.engine.beam.BeamSearchDecoder`,
  on every backend: on transformers it equals ``model.generate``'s, tests/test_beam.py), which
  returns all ``N`` final beams; keep the best-scored beam that passes the visible examples,
  checking them best first, else the best beam.

The check is the examples operator's (:func:`~backtrack.execution.examples.run_examples`, in
the sandbox with the evaluation's timeout) on the solution the evaluation scores (the
post-processed completion made into a program by :func:`~.prompts.build_program`); the hidden
tests are never used. A prompt without parseable examples keeps the first candidate, unchecked.

Compute accounting (the record of the cell): ``forward_passes`` sums every sample actually
drawn (beam search: the search's own, one per row fed), ``tokens_sampled`` likewise,
``final_tokens`` is the kept candidate's, ``tokens_discarded`` is everything drawn but not kept;
``checks`` counts the candidates checked and ``check_wait_s`` the seconds their example runs
took; ``wall_time_s`` is the decoding time of every sample drawn (beam search: the search's)
plus those check seconds, as if the cell's samples and checks ran back to back. The record
also has ``samples`` (candidates decoded), ``selected`` (the index of the kept one) and
``candidates`` (each one's ``raw`` text, ``passed``, ``passed_count``, ``mean_logprob``,
``final_tokens``, ``forward_passes`` and, for samples, ``seed``), so the choice can be audited.

Batching: a cell's samples are sequential, but the cells of a chunk share one continuous batch
(:meth:`~backtrack.engine.batch.BatchDecoder.open`): a failed sample's successor joins the
batch while the other cells' rows keep decoding, so the rows stay full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any

from backtrack.engine.results import GenerationResult
from backtrack.evaluation.cells import Generated, WorkItem
from backtrack.evaluation.data import Problem
from backtrack.evaluation.prompts import build_program, postprocess
from backtrack.evaluation.settings import EvalSettings
from backtrack.execution.examples import Example, ExamplesRun, check_pool, parse_examples
from backtrack.execution.examples import run_examples as run_examples_in_sandbox
from backtrack.execution.sandbox import SandboxConfig

# Sample j of a cell is seeded cell_seed + SAMPLE_SEED_STRIDE * j: far above every cell's
# seed offset (SEED_STRIDE * runs + problem index < 1e9 for fewer than 100,000 runs), so no
# extra sample reuses another cell's draw.
SAMPLE_SEED_STRIDE = 1_000_000_000


def sample_seed(cell_seed: int, index: int) -> int:
    """The seed of sample ``index`` of a cell seeded ``cell_seed`` (sample 0: the cell's)."""
    return cell_seed + SAMPLE_SEED_STRIDE * index


def mean_logprob(result: GenerationResult) -> float | None:
    """The mean log-probability of a result's final tokens; None when it has none."""
    return sum(result.logprobs) / len(result.logprobs) if result.logprobs else None


def most_likely(results: Sequence[GenerationResult]) -> int:
    """The index of the highest mean log-probability (earliest on ties; empty ones last)."""
    means = [mean_logprob(r) for r in results]
    return max(range(len(means)), key=lambda i: (means[i] is not None, means[i] or 0.0, -i))


class ExampleChecker:
    """Runs a problem's visible examples on a raw completion, as the evaluation builds it."""

    def __init__(self, settings: EvalSettings) -> None:
        self.mode, self.stop = settings.mode, settings.generation.stop
        self.sandbox = SandboxConfig(timeout_s=settings.resolved_timeout())
        self._examples: dict[str, tuple[Example, ...]] = {}

    def examples(self, problem: Problem) -> tuple[Example, ...]:
        """The examples ``problem``'s prompt shows (parsed once per problem)."""
        if problem.task_id not in self._examples:
            self._examples[problem.task_id] = parse_examples(problem.prompt).examples
        return self._examples[problem.task_id]

    def run(self, problem: Problem, raw: str) -> ExamplesRun:
        completion = postprocess(problem, raw, self.mode, self.stop)
        program = build_program(problem, completion, self.mode)
        return run_examples_in_sandbox(program, self.examples(problem), self.sandbox)


@dataclass
class _Cell:
    """One cell's candidates so far and their checks (None: not checked)."""

    item: WorkItem
    examples: tuple[Example, ...]
    results: list[GenerationResult] = field(default_factory=list)
    runs: list[ExamplesRun | None] = field(default_factory=list)

    def finished(self) -> bool:
        """A candidate passed, nothing can be checked, or every sample was drawn."""
        last = self.runs[-1] if self.runs else None
        return (
            bool(self.results)
            and len(self.runs) == len(self.results)
            and (last is None or last.passed or len(self.results) >= self.item.config.samples)
        )


def _candidates(
    results: Sequence[GenerationResult], runs: Sequence[ExamplesRun | None], seeds: Sequence | None
) -> list[dict]:
    rows = []
    for j, result in enumerate(results):
        run = runs[j] if j < len(runs) else None
        row: dict[str, Any] = {
            "raw": result.text,
            "passed": None if run is None else run.passed,
            "passed_count": None if run is None else run.passed_count,
            "mean_logprob": mean_logprob(result),
            "final_tokens": len(result.token_ids),
            "forward_passes": result.counts.forward_passes,
            "exec_time_s": None if run is None else run.duration_s,
        }
        if seeds is not None:
            row["seed"] = seeds[j]
        rows.append(row)
    return rows


def _selected(runs: Sequence[ExamplesRun | None], fallback: int) -> int:
    """The first candidate that passed, else ``fallback``."""
    return next((j for j, run in enumerate(runs) if run is not None and run.passed), fallback)


def _sample_generated(cell: _Cell) -> Generated:
    """The record's figures for a finished sample-filter cell (see the module docstring)."""
    results, runs = cell.results, cell.runs
    kept = _selected(runs, most_likely(results) if any(runs) else 0)
    chosen = results[kept]
    exec_s = sum(run.duration_s for run in runs if run is not None)
    sampled = sum(r.counts.tokens_sampled for r in results)
    return Generated(
        raw=chosen.text,
        finish_reason=chosen.finish_reason,
        final_tokens=len(chosen.token_ids),
        forward_passes=sum(r.counts.forward_passes for r in results),
        tokens_sampled=sampled,
        tokens_discarded=sampled - len(chosen.token_ids),
        backtracks=sum(r.counts.backtracks for r in results),
        wall_time_s=sum(r.counts.wall_time_s for r in results) + exec_s,
        deepest_rollback=max(r.counts.deepest_rollback for r in results),
        checks=sum(run is not None for run in runs),
        check_wait_s=exec_s,
        rows=1,
        candidates=_candidates(
            results, runs, [sample_seed(cell.item.seed, j) for j in range(len(results))]
        ),
        selected=kept,
    )


class _Queue:
    """A :class:`~backtrack.engine.batch_run.RequestSource` the filter pushes samples into."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, Any]] = deque()
        self.exhausted = False

    def push(self, index: int, request: Any) -> None:
        self.items.append((index, request))

    def next_request(self) -> tuple[int, Any] | None:
        return self.items.popleft() if self.items else None

    def waiting(self) -> int:
        return len(self.items)


def sample_filter(source, items: Sequence[WorkItem]) -> Iterator[tuple[WorkItem, Generated]]:
    """Decode ``sample-filter:n=N`` cells (``source``: the evaluation's
    :class:`~.sources.CompletionSource`); yield each cell as it is decided."""
    from backtrack.operators import parse_operator

    if not items:
        return
    checker = ExampleChecker(source.settings)
    cells = [_Cell(item, checker.examples(item.problem)) for item in items]

    def request(cell: _Cell):
        config = source.engine_config(cell.item)
        config = replace(config, seed=sample_seed(cell.item.seed, len(cell.results)))
        return (source.prompt(cell.item.problem), parse_operator(cell.item.config.spec), config)

    def receive(cell: _Cell, result: GenerationResult) -> Future | None:
        """Record a sample; start its check (None: nothing to check, it is kept)."""
        cell.results.append(result)
        if not cell.examples:
            cell.runs.append(None)
            return None
        return check_pool().submit(checker.run, cell.item.problem, result.text)

    if source.settings.batch_size <= 1:  # one sequence at a time: check right after each
        for cell in cells:
            while not cell.finished():
                result = source.decoder.generate(*request(cell))
                future = receive(cell, result)
                if future is not None:
                    cell.runs.append(future.result())
            yield cell.item, _sample_generated(cell)
        return

    queue, owner = _Queue(), {}

    def enqueue(cell: _Cell) -> None:
        owner[len(owner)] = cell
        queue.push(len(owner) - 1, request(cell))

    for cell in cells:
        enqueue(cell)
    run = source.batch_decoder().open(source.settings.batch_size, queue)
    checks: dict[Future, _Cell] = {}
    unresolved = len(cells)
    while unresolved:
        if run.idle:  # every undecided cell waits for a check: wait for the first
            if not checks:
                raise RuntimeError("sample-filter: a cell has no sample decoding or checking")
            wait(list(checks), return_when=FIRST_COMPLETED)
        decided = []
        for row in run.turn():
            cell = owner[row.index]
            future = receive(cell, row.result())
            if future is None:
                decided.append(cell)
            else:
                checks[future] = cell
        for future in [f for f in checks if f.done()]:
            cell = checks.pop(future)
            cell.runs.append(future.result())
            if cell.finished():
                decided.append(cell)
            else:
                enqueue(cell)  # sequential: the next sample only after this one failed
        for cell in decided:
            unresolved -= 1
            yield cell.item, _sample_generated(cell)
    queue.exhausted = True


def _filter_beams(
    checker: ExampleChecker, problem: Problem, results: list[GenerationResult], beams: int
) -> Generated:
    """Check the final beams best first until one passes; the figures of the kept one."""
    runs: list[ExamplesRun | None] = []
    if checker.examples(problem):
        for result in results:
            runs.append(checker.run(problem, result.text))
            if runs[-1].passed:
                break
    kept = _selected(runs, 0)
    chosen = results[kept]
    exec_s = sum(run.duration_s for run in runs if run is not None)
    counts = results[0].counts  # the search's: every beam shares them
    return Generated(
        raw=chosen.text,
        finish_reason=chosen.finish_reason,
        final_tokens=len(chosen.token_ids),
        forward_passes=counts.forward_passes,
        tokens_sampled=len(chosen.token_ids),
        tokens_discarded=0,
        backtracks=0,
        wall_time_s=counts.wall_time_s + exec_s,
        checks=len(runs),
        check_wait_s=exec_s,
        rows=beams,
        candidates=_candidates(results, runs, None),
        selected=kept,
    )


def beam_filter(source, items: Sequence[WorkItem]) -> Iterator[tuple[WorkItem, Generated]]:
    """Decode ``beam:N+filter`` cells with the engine's beam search, each width's together
    (``batch_size // N`` prompts of N beams), checking each search's beams in the check pool
    while the search goes on."""
    checker = ExampleChecker(source.settings)
    for group, decoder, search in source.beam_groups(items):
        pending: deque[tuple[WorkItem, Future]] = deque()
        for index, results in decoder.search_many(**search):
            item = group[index]
            future = check_pool().submit(
                _filter_beams, checker, item.problem, results, decoder.beams
            )
            pending.append((item, future))
            while pending and pending[0][1].done():
                item, future = pending.popleft()
                yield item, future.result()
        for item, future in pending:
            yield item, future.result()

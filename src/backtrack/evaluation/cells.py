"""The plain data an evaluation passes around: a cell to fill (:class:`WorkItem`), what decoding
it gave (:class:`Generated`) and the key that names a cell (:func:`cell_key`).

A module of its own so that the runner, the completion sources, the store and the Ray pool
all share these types without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtrack.evaluation.data import Problem
from backtrack.evaluation.settings import Configuration


@dataclass(frozen=True)
class WorkItem:
    """One (configuration, run, problem) cell to fill."""

    config: Configuration
    run: int
    problem: Problem
    problem_index: int
    seed: int


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
    deepest_rollback: int = 0  # see Counts.deepest_rollback
    # Checks of the finished completion by a verifying operator (examples: runs of the
    # prompt's visible examples; 0 when it had none to run) and the seconds spent waiting.
    checks: int = 0
    check_wait_s: float = 0.0
    # Batch rows the decoding occupied (beam search: one per beam); None when it ran outside
    # the batch (transformers' model.generate), so its speed does not compare with the rows'.
    rows: int | None = 1
    # A filtering baseline (sample-filter, beam:N+filter): the candidates it decoded, in the
    # order it checked them (each a dict: raw, passed, mean_logprob, ...) and the index of
    # the one kept; None for every other configuration.
    candidates: list[dict] | None = None
    selected: int | None = None


def cell_key(item: WorkItem) -> tuple[str, int, str]:
    """``(configuration, run, task_id)``: a cell's name in results.jsonl and across processes."""
    return (item.config.name, item.run, item.problem.task_id)

"""Scoring completions: build each one's program and run it in the sandbox, under its
problem's own time limit where it has one.

Kept apart from the runner so that a process that only scores (a Ray sandbox task) imports
neither torch nor the engine: this module needs only the prompts and the sandbox.
"""

from __future__ import annotations

from collections.abc import Sequence

from backtrack.evaluation.data import Problem, sandbox_config_for
from backtrack.evaluation.prompts import program_for
from backtrack.execution.sandbox import ExecResult, SandboxConfig, run_many, run_program


def score(
    problem: Problem, completion: str, mode: str, config: SandboxConfig | None = None
) -> ExecResult:
    """Run one post-processed completion against the problem's tests in the sandbox (under the
    problem's own wall-clock limit where it has one: HumanEval+, MBPP+)."""
    return run_program(program_for(problem, completion, mode), sandbox_config_for(problem, config))


def score_many(
    completions: Sequence[tuple[Problem, str, str]],
    config: SandboxConfig | None = None,
    workers: int = 2,
) -> list[ExecResult]:
    """:func:`score` for each ``(problem, completion, mode)``, ``workers`` programs at a time;
    identical programs (the copies of a deterministic configuration's runs, completions that
    happen to agree) run once. The results keep the order of ``completions``."""
    programs = [program_for(problem, text, mode) for problem, text, mode in completions]
    config_of = {
        program: sandbox_config_for(problem, config)
        for program, (problem, _, _) in zip(programs, completions, strict=True)
    }
    distinct = list(config_of)
    ran = dict(
        zip(distinct, run_many(distinct, workers, [config_of[p] for p in distinct]), strict=True)
    )
    return [ran[program] for program in programs]

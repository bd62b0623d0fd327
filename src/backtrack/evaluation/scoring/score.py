"""Scoring one completion: build its program and run it in the sandbox.

Kept apart from the runner so that a process that only scores (a Ray sandbox task) imports
neither torch nor the engine: this module needs only the prompts and the sandbox.
"""

from __future__ import annotations

from backtrack.evaluation.data import Problem, sandbox_config_for
from backtrack.evaluation.prompts import program_for
from backtrack.execution.sandbox import ExecResult, SandboxConfig, run_program


def score(
    problem: Problem, completion: str, mode: str, config: SandboxConfig | None = None
) -> ExecResult:
    """Run one post-processed completion against the problem's tests in the sandbox (under the
    problem's own wall-clock limit where it has one: HumanEval+, MBPP+)."""
    return run_program(program_for(problem, completion, mode), sandbox_config_for(problem, config))

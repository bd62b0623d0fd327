"""EvalPlus checks on tiny fake records: per-input time limits and comparison rules."""

from __future__ import annotations

import pytest

from backtrack.evaluation import evalplus_check as ec
from backtrack.evaluation.data import DataError, Problem, build_plus_test, sandbox_config_for
from backtrack.evaluation.prompts import program_for
from backtrack.execution.sandbox import ExecResult, SandboxConfig, run_many


def fake_record(
    canonical: str = "    return x * 2\n",
    base: list | None = None,
    plus: list | None = None,
    entry: str = "f",
    task_id: str = "HumanEval/900",
    atol: float = 0,
    prompt: str | None = None,
) -> dict:
    return {
        "task_id": task_id,
        "prompt": f"def {entry}(x):\n" if prompt is None else prompt,
        "canonical_solution": canonical,
        "entry_point": entry,
        "base_input": [[1], [2]] if base is None else base,
        "plus_input": [[3]] if plus is None else plus,
        "atol": atol,
    }


def problem_of(record: dict, dataset: str = "humaneval", times=None) -> Problem:
    test = build_plus_test(record, dataset, times)
    limit = ec.program_time_limit(*times) if times is not None else None
    return Problem(
        record["task_id"],
        record["prompt"],
        record["canonical_solution"],
        test,
        record["entry_point"],
        limit,
    )


def run_all(cases: list[tuple[Problem, str]]) -> list[ExecResult]:
    programs = [program_for(problem, completion) for problem, completion in cases]
    return run_many(programs, workers=2, config=SandboxConfig(timeout_s=20))


def test_limits_follow_evalplus_constants() -> None:
    assert ec.input_limits([0.0, 0.1, 0.5]) == [1.0, 1.0, 2.0]
    assert ec.group_budget([1.0, 2.0]) == 4.0
    assert ec.group_budget([2.0] * 100) == 61.0  # capped at 60 s, plus 1 s
    limit = ec.program_time_limit([0.5], [0.1, 0.1])
    assert limit == pytest.approx(2 * 0.7 + 3.0 + 3.0 + ec.START_UP_SLACK_S)
    problem = problem_of(fake_record(), times=([0.0, 0.0], [0.0]))
    assert sandbox_config_for(problem, SandboxConfig(timeout_s=3)).timeout_s == problem.time_limit_s
    plain = Problem("HumanEval/1", "", "", "", "f")
    assert sandbox_config_for(plain, SandboxConfig(timeout_s=3)).timeout_s == 3


def test_per_input_timeout_fails_with_the_input_named() -> None:
    """Input 0 of plus sleeps past its 1 s limit: only that fails, named in the detail; an
    input whose reference took 0.5 s may take 1.2 s (its limit is 4 x 0.5 s)."""
    record = fake_record()
    slow_on_3 = "    import time\n    if x == 3:\n        time.sleep(1.2)\n    return x * 2\n"
    tight = problem_of(record, times=([0.0, 0.0], [0.0]))
    roomy = problem_of(record, times=([0.0, 0.0], [0.5]))
    results = run_all(
        [(tight, slow_on_3), (roomy, slow_on_3), (tight, record["canonical_solution"])]
    )
    assert results[0].status == "failed"
    assert results[0].detail == "timeout on plus input 0 (limit 1.00 s)"
    assert results[1].status == "passed", results[1].stderr
    assert results[2].status == "passed", results[2].stderr


def test_timeout_cannot_be_swallowed_and_loops_are_cut() -> None:
    record = fake_record(base=[[1]])
    problem = problem_of(record, times=([0.0], [0.0]))
    swallow = (
        "    while True:\n        try:\n            while True:\n                pass\n"
        "        except Exception:\n            pass\n"
    )
    (result,) = run_all([(problem, swallow)])
    assert result.status == "failed"
    assert result.detail == "timeout on base input 0 (limit 1.00 s)"
    assert result.duration_s < 10


def test_float_rules_match_np_allclose() -> None:
    def floats(value: str, candidate: str, atol: float = 0) -> tuple[Problem, str]:
        record = fake_record(f"    return {value}\n", base=[[0]], plus=[], atol=atol)
        return problem_of(record), f"    return {candidate}\n"

    cases = [
        floats("0.1 + 0.2", "0.3"),  # within the 1e-6 tolerance EvalPlus sets for floats
        floats("0.1 + 0.2", "0.30001"),  # outside it
        floats("1e9", "1e9 + 50.0"),  # rtol 1e-7 of 1e9 = 100
        floats("1e9", "1e9 + 200.0"),
        floats("[0.1 + 0.2]", "(0.3,)"),  # type must match
        floats("[0.1 + 0.2, 1.0]", "[0.3]"),  # length must match
        floats("float('nan')", "float('nan')"),  # NaN is never close (equal_nan=False)
        floats("float('inf')", "float('inf')"),  # exactly equal
        floats("2", "2.0000001", atol=1e-3),  # a task tolerance; types differ
        floats("[1.0, [2.0, 3.0]]", "[1.0, [2.0, 3.0000001]]"),  # not "floats": exact only
        floats("[1.0, [2.0, 3.0]]", "[1.0, [2.0, 3.0000001]]", atol=1e-6),
    ]
    results = [r.status for r in run_all(cases)]
    assert results == [
        "passed",
        "failed",
        "passed",
        "failed",
        "failed",
        "failed",
        "failed",
        "passed",
        "failed",
        "failed",
        "passed",
    ]


def test_special_oracles() -> None:
    find_zero = {
        **fake_record("    return 1.0\n", base=[[[-1.0, 1.0]]], plus=[], entry="find_zero"),
        "atol": 1e-6,
        "prompt": "def find_zero(xs):\n",
    }

    def mbpp(entry: str, canonical_result: str, args: list, candidate: str, task: int = 900):
        params = ", ".join(f"a{i}" for i in range(len(args)))
        record = fake_record(
            f"def {entry}({params}):\n    return {canonical_result}\n",
            base=[args],
            plus=[],
            entry=entry,
            task_id=f"Mbpp/{task}",
            prompt='"""\nWrite a function.\n"""\n',
        )
        problem = problem_of(record, "mbpp")
        return problem, f"def {entry}({params}):\n    return {candidate}\n"

    cases = [
        (problem_of(find_zero), "    return 1.0000001\n"),
        (problem_of(find_zero), "    return 1.1\n"),
        mbpp("are_equivalent", "True", [1, 2], "'anything'"),
        mbpp("sum_div", "5", [1], "0"),
        mbpp("sum_div", "5", [1], "4"),
        mbpp("surface_Area", "0", [3, 4], "33"),  # 9 + 2*3*sqrt(18.25) = 34.6 -> 35
        mbpp("surface_Area", "0", [3, 4], "35"),
        mbpp("digit_distance_nums", "0", [123, 256], "7"),  # 1 + 3 + 3
        mbpp("digit_distance_nums", "0", [5, 123], "5"),  # 005 vs 123: 1 + 2 + 2
        mbpp("digit_distance_nums", "0", [5, 123], "2"),
        mbpp("similar_elements", "[1, 2]", [0], "[2, 1]"),
        mbpp("check_str", "'match'", [0], "True"),
        mbpp("check_str", "'match'", [0], "'other'"),
        mbpp("check_str", "'match'", [0], "False"),
        mbpp("check_str", "None", [0], "None"),
    ]
    results = [r.status for r in run_all(cases)]
    assert results == [
        "passed",
        "failed",
        "passed",
        "passed",
        "failed",
        "failed",
        "passed",
        "passed",
        "passed",
        "failed",
        "passed",
        "passed",
        "passed",
        "failed",
        "passed",
    ]


def test_reference_times_must_match_the_inputs() -> None:
    with pytest.raises(DataError, match=r"HumanEval/900: .*1 base and 1 plus reference times"):
        build_plus_test(fake_record(), "humaneval", ([0.1], [0.1]))

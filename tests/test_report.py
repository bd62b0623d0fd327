"""The report on synthetic result directories: numbers against hand computation, partial
directories, damaged lines, the PNG, re-scoring and the CLI.

Float comparisons use ``pytest.approx``'s default (relative 1e-6) against hand-computed
fractions: the code computes them in float64, whose rounding (1e-16 relative) is the same on
every IEEE-754 CPU, so the default is already a wide margin; bootstrap intervals are seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtrack.cli import app
from backtrack.evaluation.data import load_humaneval
from backtrack.evaluation.reporting.report import (
    load_results,
    markdown_table,
    paired_subset,
    plot,
    short_label,
    summarize,
)
from backtrack.evaluation.scoring.rescore import rescore, rescore_as

# base passes P0 in both runs, P1 never -> 0.5; op passes P0 twice and P1 once -> 0.75.
PASSED = {
    ("base", "T/0"): [True, True],
    ("base", "T/1"): [False, False],
    ("op", "T/0"): [True, True],
    ("op", "T/1"): [True, False],
}
OP_BACKTRACKS = [1, 2, 3, 2]  # mean 2.0
OP_DISCARDED = [4, 0, 2, 2]  # mean 2.0


def synthetic_records() -> list[dict]:
    """base: 10 tokens in 1 s per cell (10 tok/s); op: 10 tokens in 2 s, 15 passes (5 tok/s)."""
    records = []
    k = 0
    for (config, task), passes in PASSED.items():
        for run, passed in enumerate(passes):
            is_op = config == "op"
            records.append(
                {
                    "config": config,
                    "run": run,
                    "task_id": task,
                    "passed": passed,
                    "status": "passed" if passed else "failed",
                    "completion": "",
                    "final_tokens": 10,
                    "forward_passes": 15 if is_op else 10,
                    "tokens_discarded": OP_DISCARDED[k % 4] if is_op else 0,
                    "backtracks": OP_BACKTRACKS[k % 4] if is_op else 0,
                    "wall_time_s": 2.0 if is_op else 1.0,
                    "seed": run * 10_000 + int(task[-1]),
                    "mode": "completion",
                    "model": "m",
                }
            )
            k += int(is_op)
    return records


def write_dir(path: Path, records: list[dict], model: str = "m", extra: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "configs": [{"name": "base"}, {"name": "op"}]}
    (path / "meta.json").write_text(json.dumps(meta))
    lines = "".join(json.dumps({**r, "model": model}) + "\n" for r in records)
    (path / "results.jsonl").write_text(lines + extra)
    return path


def test_numbers_match_hand_computation(tmp_path: Path) -> None:
    rows = summarize(load_results(write_dir(tmp_path, synthetic_records())), resamples=500)
    base, op = rows
    assert (base.config, op.config) == ("base", "op")
    assert (base.n_problems, base.n_runs) == (2, 2)
    assert base.pass1.mean == pytest.approx(0.5) and op.pass1.mean == pytest.approx(0.75)
    assert base.diff is None and op.diff is not None
    assert op.diff.mean == pytest.approx(0.25)
    assert op.diff.low <= 0.25 <= op.diff.high and 0.0 <= op.pass1.low <= 0.75 <= op.pass1.high
    assert (op.gained, op.lost) == (1, 0)
    assert base.tokens_per_s == pytest.approx(10.0) and op.tokens_per_s == pytest.approx(5.0)
    assert base.throughput_ratio == pytest.approx(1.0) and op.throughput_ratio == 0.5
    assert base.passes_per_token == pytest.approx(1.0) and op.passes_per_token == 1.5
    assert op.backtracks == pytest.approx(2.0) and op.discarded == pytest.approx(2.0)
    table = markdown_table(rows)
    assert "| m | op | 2 x 2 | 75.0 [" in table and "+25.0 [" in table and "+1/-0" in table
    assert "| 10.0 | 1.00 | 1.00 |" in table and "| 5.0 | 0.50 | 1.50 |" in table


def test_differences_against_another_configuration(tmp_path: Path) -> None:
    """--against op: base is now the row compared, with the sign and the speed ratio flipped."""
    directory = write_dir(tmp_path, synthetic_records())
    base, op = summarize(load_results(directory), baseline="op", resamples=500)
    assert op.diff is None and base.diff is not None
    assert base.diff.mean == pytest.approx(-0.25) and (base.gained, base.lost) == (0, 1)
    assert base.throughput_ratio == pytest.approx(2.0) and op.throughput_ratio == 1.0
    table = markdown_table([base, op], against="op")
    assert "| vs ref [95% CI] |" in table and "| x ref |" in table and "`op`" in table
    assert "-25.0 [" in table and "+0/-1" in table
    with pytest.raises(ValueError, match="no configuration 'nope'.*base, op"):
        summarize(load_results(directory), baseline="nope", resamples=50)
    result = CliRunner().invoke(app, ["report", str(directory), "--no-plot", "--against", "nope"])
    assert result.exit_code != 0 and "no configuration 'nope'" in result.output
    result = CliRunner().invoke(app, ["report", str(directory), "--no-plot", "--against", "op"])
    assert result.exit_code == 0 and "-25.0 [" in result.output


def test_against_a_recipe_by_its_name(tmp_path: Path) -> None:
    """A recipe is recorded under its configuration; --against recipe:NAME finds it."""
    from backtrack.recipes import expand

    name = "recipe:qwen2.5-coder-0.5b-instruct"
    records = synthetic_records()
    for record in records:
        if record["config"] == "op":
            record["config"] = expand(name)
    directory = write_dir(tmp_path, records)
    result = CliRunner().invoke(app, ["report", str(directory), "--no-plot", "--against", name])
    assert result.exit_code == 0 and "-25.0 [" in result.output
    result = CliRunner().invoke(app, ["report", str(directory), "--no-plot", "--against",
                                      "recipe:nope"])  # fmt: skip
    assert result.exit_code != 0 and "unknown recipe 'recipe:nope'" in result.output


def test_partial_directory_is_cut_to_paired_cells(tmp_path: Path) -> None:
    records = synthetic_records()
    # An interrupted run 2: base got T/0, op did not -> those cells are left out.
    records.append({**records[0], "run": 2})
    kept, excluded = paired_subset(records)
    assert excluded == 1 and len(kept) == 8
    result = load_results(write_dir(tmp_path, records))
    rows = summarize(result, resamples=200)
    assert rows[0].n_runs == 2 and rows[1].pass1.mean == pytest.approx(0.75)
    assert any("left out" in n for n in result.notes)


def test_damaged_line_is_a_note_not_an_error(tmp_path: Path) -> None:
    path = write_dir(tmp_path, synthetic_records(), extra='{"config": "base", "ru')
    result = load_results(path)
    assert len(result.records) == 8
    assert any("corrupted" in n for n in result.notes)
    assert summarize(result, resamples=100)[1].pass1.mean == pytest.approx(0.75)


def test_plot_combines_models_into_a_png(tmp_path: Path) -> None:
    rows = summarize(
        load_results(write_dir(tmp_path / "a", synthetic_records(), "m1")), resamples=100
    )
    rows += summarize(
        load_results(write_dir(tmp_path / "b", synthetic_records(), "m2")), resamples=100
    )
    out = plot(rows, tmp_path / "fig.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_humaneval_completions_rescored_on_humaneval_plus(tmp_path: Path, shared_data) -> None:
    # HumanEval/22 (filter_integers): `isinstance(v, int)` passes HumanEval's tests, but
    # HumanEval+ also feeds booleans (bool is a subclass of int), so it fails there. The
    # completion is one the default model wrote (results/humaneval-llama-cpp, base run 0).
    problem = next(p for p in load_humaneval() if p.task_id == "HumanEval/22")
    rec = {**synthetic_records()[0], "task_id": problem.task_id, "run": 0, "passed": True}
    loose = "    return [value for value in values if isinstance(value, int)]\n"
    # HumanEval's own canonical solution is the loose one; HumanEval+ fixed it to this.
    assert "isinstance(x, int)" in problem.canonical_solution
    strict = "    return [value for value in values if type(value) is int]\n"
    records = [
        {**rec, "config": "base", "completion": strict},
        {**rec, "config": "op", "completion": loose},
    ]
    source = write_dir(tmp_path / "he", records)
    before = (source / "results.jsonl").read_bytes()
    plus = shared_data / "evalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    out = tmp_path / "he-plus"
    assert rescore_as(source, out, "humaneval-plus", str(plus), timeout_s=10.0) == (2, 1, [])
    assert [r["passed"] for r in load_results(out).records] == [True, False]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "humaneval-plus" and meta["rescored_from"]["dataset"] == "humaneval"
    assert (source / "results.jsonl").read_bytes() == before  # the source is untouched
    with pytest.raises(ValueError, match="already holds results"):
        rescore_as(source, out, "humaneval-plus", str(plus))
    # One configuration only; the program the two records share runs once.
    only = rescore_as(source, tmp_path / "op", "humaneval-plus", str(plus), configs=["op"])
    assert only == (1, 1, []) and len(load_results(tmp_path / "op").records) == 1
    with pytest.raises(ValueError, match="has no configuration nope"):
        rescore_as(source, tmp_path / "y", "humaneval-plus", str(plus), configs=["nope"])
    mbpp = shared_data / "mbpp" / "mbpp_release_v1.jsonl"
    with pytest.raises(ValueError, match="1 problems of .* are not in mbpp: HumanEval/22"):
        rescore_as(source, tmp_path / "x", "mbpp", str(mbpp))
    assert not (tmp_path / "x").exists()
    # The CLI: the same, with one-line errors.
    runner = CliRunner()
    args = ["rescore", str(source), "--dataset", "humaneval-plus", "--data-path", str(plus)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert [r["passed"] for r in load_results(tmp_path / "cli").records] == [True, False]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cli")])
    assert result.exit_code != 0 and "already holds results" in result.output
    # --config takes a recipe by its name, as report's --against does.
    result = runner.invoke(app, [*args, "--config", "recipe:nope", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "unknown recipe 'recipe:nope'" in result.output
    result = runner.invoke(app, [*args, "--config", "recipe:qwen2.5-coder-0.5b-instruct",
                                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code != 0 and "has no configuration line-restart:" in result.output


def test_rescore_flips_verdicts_from_stored_completions(tmp_path: Path) -> None:
    problem = load_humaneval()[0]
    rec = {**synthetic_records()[0], "task_id": problem.task_id, "run": 0}
    good = {**rec, "config": "base", "completion": problem.canonical_solution, "passed": False}
    bad = {**rec, "config": "op", "completion": "    return None\n", "passed": True}
    path = write_dir(tmp_path, [good, bad])
    assert rescore(path, workers=2, timeout_s=5.0) == (2, 2)
    records = load_results(path).records
    assert [r["passed"] for r in records] == [True, False]
    assert records[0]["status"] == "passed"
    # The synthetic records predate the sandbox field: re-scoring adds it.
    assert all(
        set(r["sandbox"]) == {"network", "pid", "filesystem", "privileges_dropped"} for r in records
    )
    assert json.loads((path / "meta.json").read_text())["timeout_s"] == 5.0
    # The old verdicts stay readable, with the rule they were made under.
    assert [r["previous_verdict"]["passed"] for r in records] == [False, True]
    assert records[0]["previous_verdict"]["scoring"] == (
        "one wall-clock limit per program (timeout_s) (3 s)"
    )


def test_cli_report(tmp_path: Path) -> None:
    a = write_dir(tmp_path / "a", synthetic_records(), "m1")
    b = write_dir(tmp_path / "b", synthetic_records(), "m2")
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    args = ["report", str(a), str(b), "--markdown", str(md), "--plot", str(png)]
    result = CliRunner().invoke(app, [*args, "--resamples", "100"])
    assert result.exit_code == 0, result.output
    assert "| m2 | op | 2 x 2 | 75.0 [" in result.output
    # 2 header lines, 4 rows, then a blank line and how throughput is compared.
    assert md.read_text().count("\n") == 8 and png.stat().st_size > 0
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no results.jsonl" in missing.output


def test_legend_labels_cut_paths_to_file_names() -> None:
    spec = "rl:path=policies/qwen2.5-coder-0.5b-instruct/policy.zip,deterministic=false"
    assert short_label(spec) == "rl:path=policy.zip,deterministic=false"
    assert short_label("probability-trend:window=10,drop=0.5") == (
        "probability-trend:window=10,drop=0.5"
    )
    assert short_label("beam:2") == "beam:2" and short_label("base") == "base"


def write_meta(path: Path, **fields) -> None:
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **fields}))


def test_several_directories_of_one_model_stay_apart(tmp_path: Path) -> None:
    """One model on two datasets: a row names its dataset and directory, the plot has a
    group of bars per directory, and the PNG is written next to the table by default."""
    from backtrack.evaluation.reporting.report import plot_groups

    he = write_dir(tmp_path / "he", synthetic_records(), "m")
    mb = write_dir(tmp_path / "mb", synthetic_records(), "m")
    write_meta(he, dataset="humaneval")
    write_meta(mb, dataset="mbpp", split="test")
    rows = [*summarize(load_results(he), resamples=50), *summarize(load_results(mb), resamples=50)]
    assert [(r.dataset, r.directory) for r in rows] == [
        ("humaneval", str(he)),
        ("humaneval", str(he)),
        ("mbpp:test", str(mb)),
        ("mbpp:test", str(mb)),
    ]
    assert plot_groups(rows) == [("humaneval", "m", str(he)), ("mbpp:test", "m", str(mb))]
    md = tmp_path / "out" / "table.md"
    args = ["report", str(he), str(mb), "--markdown", str(md), "--resamples", "50"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"| mbpp:test | {mb} | m | op |" in md.read_text()
    assert (tmp_path / "out" / "pass_at_1.png").stat().st_size > 0  # next to the table
    alone = CliRunner().invoke(app, ["report", str(he), "--resamples", "50"])
    assert alone.exit_code == 0 and (he / "pass_at_1.png").is_file()  # in the directory


def test_throughput_is_compared_only_between_alike_decodings(tmp_path: Path) -> None:
    """A batched run's engine rows against an unbatched beam baseline: no 'x base'."""
    records = synthetic_records()
    beam = [{**r, "config": "beam:2", "kind": "beam"} for r in records if r["config"] == "base"]
    path = write_dir(tmp_path / "batched", [*records, *beam], "m")
    write_meta(path, batch_size=16)
    result = load_results(path)
    rows = {r.config: r for r in summarize(result, resamples=50)}
    assert rows["op"].throughput_ratio == 0.5  # engine vs engine, same batch: comparable
    assert rows["beam:2"].throughput_ratio is None and rows["beam:2"].tokens_per_s == 10.0
    assert any("no 'x base' for beam:2" in note for note in result.notes)
    unbatched = write_dir(tmp_path / "unbatched", [*records, *beam], "m")
    rows = {r.config: r for r in summarize(load_results(unbatched), resamples=50)}
    assert rows["beam:2"].throughput_ratio == 1.0


def test_plus_rescoring_limits_each_input_not_the_program(tmp_path: Path, shared_data) -> None:
    # EvalPlus limits every input (max(1 s, 4x the reference's time)), not the whole program:
    # a correct completion that sleeps 6 ms per call spends ~4.7 s on HumanEval/4's 788 inputs,
    # past the 3 s the source run used for its programs, yet no input comes near 1 s, so
    # EvalPlus passes it. One that sleeps 1.5 s on its first call fails by that input.
    problem = next(p for p in load_humaneval() if p.task_id == "HumanEval/4")
    body = problem.canonical_solution
    slow = "    import time\n    time.sleep(0.006)\n" + body
    stuck = "    import time\n    time.sleep(1.5)\n" + body
    rec = {**synthetic_records()[0], "task_id": problem.task_id, "run": 0, "passed": True}
    records = [
        {**rec, "config": "base", "completion": slow},
        {**rec, "config": "op", "completion": stuck},
    ]
    source = write_dir(tmp_path / "he", records)
    # The source records no limit: rescore_as's program limit would be 3 s (HumanEval's).
    plus = shared_data / "evalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    rescore_as(source, tmp_path / "plus", "humaneval-plus", str(plus))
    base, op = load_results(tmp_path / "plus").records
    assert base["passed"] and base["exec_time_s"] > 3.0, base
    assert not op["passed"] and "timeout on base input 0 (limit 1.00 s)" in op["detail"], op
    meta = json.loads((tmp_path / "plus" / "meta.json").read_text())
    assert meta["scoring"].startswith("EvalPlus 0.3.1 per-input limits")

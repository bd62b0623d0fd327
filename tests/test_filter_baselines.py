"""The filtering baselines at equal compute (``sample-filter:n=N``, ``beam:N+filter``) through
``backtrack eval`` on tiny-random-qwen2, with the real sandbox.

The tiny model writes noise, so the problems are built for it: ``f`` measures the comment its
own program has after the ``#@`` marker that ends the prompt (the completion, when it has no
newline) and its visible example says ``f()`` is ``True`` when that length is a multiple of
three. Whether a candidate passes is thus a function of its text that only running it tells;
the tests check every decision by running the examples again themselves. Problem 0 expects
``None`` instead, which no completion gives: every candidate fails there (the fallback).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from backtrack.engine import Decoder
from backtrack.engine.beam import BeamSearchDecoder
from backtrack.evaluation.data import load_dataset
from backtrack.evaluation.generation.filtering import sample_seed
from backtrack.evaluation.generation.runner import run_eval
from backtrack.evaluation.prompts import build_program, postprocess
from backtrack.evaluation.reporting.report import load_results, summarize
from backtrack.evaluation.settings import BASE, EvalError, EvalSettings, build_configurations
from backtrack.evaluation.store import read_records
from backtrack.execution.examples import parse_examples, run_examples
from backtrack.operators import parse_operator

QUOTES = '"' * 3
# Problems whose outcomes cover every case on this model (found by decoding them once; the
# rule checks below hold on any problem): 0 fails everything, 1 passes with its third sample,
# 6 with its first, 9 with its second beam after the best one failed.
PROBLEMS = "0,1,6,9"
# Batch rows and a single sequence round differently: test_batch.py's bound for log-probs.
FP32_TOL = 1e-3


def _prompt(k: int) -> str:
    want = "None" if k == 0 else "True"
    return (
        f"def f():\n    {QUOTES}Variant {k}: is the comment after the marker a multiple of "
        f"three long?\n    >>> f()\n    {want}\n    {QUOTES}\n"
        '    text = open("program.py", encoding="utf-8", errors="replace").read()\n'
        "    return len(text.split(chr(35) + chr(64))[1].split(chr(10))[0]) % 3 == 0  #@"
    )


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("filter-data") / "problems.jsonl"
    rows = [
        {
            "task_id": f"HumanEval/{k}",
            "prompt": _prompt(k),
            "entry_point": "f",
            "canonical_solution": "",
            "test": "def check(candidate):\n    assert candidate()\n",
        }
        for k in range(10)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _settings(out: Path, data_file: Path, **overrides) -> EvalSettings:
    values = dict(
        model="tiny-random-qwen2",
        out=str(out),
        data_path=str(data_file),
        problems=PROBLEMS,
        baselines=["sample-filter:n=1", "sample-filter:n=3", "beam:2+filter"],
        runs=1,
        max_new_tokens=6,
        workers=2,
        batch_size=8,
    )
    values.update(overrides)
    return EvalSettings.from_flat(values)


@pytest.fixture(scope="module")
def evaluated(tiny, data_file, tmp_path_factory):
    model, tok = tiny
    out = tmp_path_factory.mktemp("filter-eval")
    settings = _settings(out, data_file)
    summary = run_eval(settings, model, tok, progress=False)
    records, problems = read_records(out / "results.jsonl")
    assert not problems
    return settings, summary, {(r["config"], r["task_id"]): r for r in records}


def _passes(problem, raw: str, settings: EvalSettings) -> bool:
    """The visible examples run again here, on the solution the evaluation scores."""
    completion = postprocess(problem, raw, settings.mode, settings.generation.stop)
    shown = parse_examples(problem.prompt).examples
    return run_examples(build_program(problem, completion, settings.mode), shown).passed


def _problems(settings: EvalSettings) -> dict:
    return {p.task_id: p for p in load_dataset("humaneval", settings.data_path)}


def test_sample_filter_n1_is_base(evaluated) -> None:
    settings, summary, records = evaluated
    assert summary.written == 4 * 4
    for k in PROBLEMS.split(","):
        base = records[(BASE, f"HumanEval/{k}")]
        one = records[("sample-filter:n=1", f"HumanEval/{k}")]
        for key in ("raw_completion", "completion", "forward_passes", "final_tokens", "seed"):
            assert one[key] == base[key], key
        assert one["samples"] == 1 and one["selected"] == 0 and one["checks"] == 1


def test_sample_filter_keeps_the_first_passing_sample(tiny, evaluated) -> None:
    """Every decision checked by running the examples again; the samples and their counts
    checked against decoding each seed alone."""
    model, tok = tiny
    settings, _, records = evaluated
    problems = _problems(settings)
    decoder = Decoder(model, tok)
    seen = set()
    for k in PROBLEMS.split(","):
        rec = records[("sample-filter:n=3", f"HumanEval/{k}")]
        problem, candidates = problems[rec["task_id"]], rec["candidates"]
        verdicts = [_passes(problem, c["raw"], settings) for c in candidates]
        assert verdicts == [c["passed"] for c in candidates]
        assert rec["samples"] == len(candidates) == rec["checks"]
        if any(verdicts):  # sequential: nothing drawn after the first passing sample
            assert verdicts.index(True) == rec["selected"] == len(candidates) - 1
            seen.add("passed" if rec["selected"] == 0 else "passed later")
        else:  # all 3 drawn, the most likely kept
            means = [c["mean_logprob"] for c in candidates]
            assert len(candidates) == 3 and rec["selected"] == means.index(max(means))
            seen.add("fallback")
        kept = candidates[rec["selected"]]
        assert rec["raw_completion"] == kept["raw"]
        assert rec["final_tokens"] == kept["final_tokens"]
        assert rec["forward_passes"] == sum(c["forward_passes"] for c in candidates)
        assert rec["tokens_sampled"] - rec["tokens_discarded"] == rec["final_tokens"]
        assert rec["check_wait_s"] == pytest.approx(sum(c["exec_time_s"] for c in candidates))
        assert rec["wall_time_s"] > rec["check_wait_s"]
        for j, candidate in enumerate(candidates):
            config = replace(settings.generation, seed=sample_seed(rec["seed"], j))
            alone = decoder.generate(problem.prompt, parse_operator("never"), config)
            assert candidate["seed"] == config.seed
            assert candidate["raw"] == alone.text
            assert candidate["forward_passes"] == alone.counts.forward_passes
            mean = sum(alone.logprobs) / len(alone.logprobs)
            assert abs(candidate["mean_logprob"] - mean) < FP32_TOL
    assert seen == {"passed", "passed later", "fallback"}


def test_beam_filter_keeps_the_best_passing_beam(tiny, evaluated) -> None:
    model, tok = tiny
    settings, _, records = evaluated
    problems = _problems(settings)
    prompts = [problems[f"HumanEval/{k}"].prompt for k in PROBLEMS.split(",")]
    searches = dict(
        BeamSearchDecoder(model, tok, beams=2).search_many(prompts, settings.generation, 8)
    )
    picked_second = False
    for i, k in enumerate(PROBLEMS.split(",")):
        rec = records[("beam:2+filter", f"HumanEval/{k}")]
        beams = searches[i]
        assert [c["raw"] for c in rec["candidates"]] == [b.text for b in beams]
        assert rec["forward_passes"] == beams[0].counts.forward_passes and rec["rows"] == 2
        verdicts = [_passes(problems[rec["task_id"]], b.text, settings) for b in beams]
        checked = [c["passed"] for c in rec["candidates"] if c["passed"] is not None]
        assert checked == verdicts[: len(checked)] and rec["checks"] == len(checked)
        expected = verdicts.index(True) if any(verdicts) else 0
        assert rec["selected"] == expected and rec["raw_completion"] == beams[expected].text
        picked_second |= expected == 1 and not verdicts[0]
    assert picked_second


def test_report_and_resume(tiny, evaluated, data_file) -> None:
    model, tok = tiny
    settings, _, records = evaluated
    rows = {r.config: r for r in summarize(load_results(settings.out), resamples=50)}
    for name in ("sample-filter:n=3", "beam:2+filter"):
        recs = [r for r in records.values() if r["config"] == name]
        fwd = sum(r["forward_passes"] for r in recs) / sum(r["final_tokens"] for r in recs)
        assert rows[name].passes_per_token == pytest.approx(fwd)
    again = run_eval(_settings(Path(settings.out), data_file), model, tok, progress=False)
    assert again.generated == 0 and again.already_done == again.total == 16


def test_one_sequence_at_a_time_draws_the_same_samples(tiny, evaluated, data_file, tmp_path):
    """batch_size 1 decodes and checks each sample in turn: the same samples and choices."""
    model, tok = tiny
    _, _, records = evaluated
    s = _settings(tmp_path, data_file, problems="1", baselines=["sample-filter:n=3"], batch_size=1)
    run_eval(s, model, tok, progress=False)
    alone = {r["config"]: r for r in read_records(tmp_path / "results.jsonl")[0]}
    batched = records[("sample-filter:n=3", "HumanEval/1")]
    mine = alone["sample-filter:n=3"]
    assert [c["raw"] for c in mine["candidates"]] == [c["raw"] for c in batched["candidates"]]
    assert mine["selected"] == batched["selected"]


@pytest.mark.parametrize(
    "spec", ["sample-filter:n=0", "beam:0+filter", "sample-filter:k=2", "beam:2+sort"]
)
def test_bad_specs_fail_before_decoding(spec: str, tmp_path: Path) -> None:
    with pytest.raises(EvalError) as caught:
        build_configurations([], [spec])
    assert "\n" not in str(caught.value) and spec in str(caught.value)
    settings = EvalSettings.from_flat(
        dict(model="no-such-model", out=str(tmp_path), baselines=[spec])
    )
    with pytest.raises(EvalError):  # before any model is loaded or anything written
        run_eval(settings, progress=False)
    assert not (tmp_path / "results.jsonl").exists()


def test_decisive_table_shows_the_filtering_baselines(evaluated) -> None:
    settings, _, records = evaluated
    script = Path(__file__).resolve().parents[1] / "scripts" / "decisive_table.py"
    shown = ["sample-filter:n=3", "beam:2+filter"]
    extra = [arg for name in shown for arg in ("--baseline", name)]
    done = subprocess.run(
        [sys.executable, str(script), settings.out, "--recipe", "base", *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in shown:
        (line,) = [row for row in done.stdout.splitlines() if row.startswith(f"| {name} |")]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        recs = [r for r in records.values() if r["config"] == name]
        fwd = sum(r["forward_passes"] for r in recs) / sum(r["final_tokens"] for r in recs)
        wall = sum(r["wall_time_s"] for r in recs) / len(recs)
        assert cells[5] == f"{fwd:.2f}" and cells[6] == f"{wall:.1f}"


def test_on_llama_cpp(tmp_path: Path) -> None:
    """On llama.cpp: sample-filter:n=1 is base, and beam:2+filter's best beam is beam:2's
    completion (both the engine's beam search there) with the same forward passes."""
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    from backtrack.models import SMOLLM2_MODEL, load_model

    model, tok = load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, progress=False)
    s = EvalSettings.from_flat(
        dict(model=SMOLLM2_MODEL, backend="llama.cpp", out=str(tmp_path), limit=2, runs=1,
             max_new_tokens=12, batch_size=4,
             baselines=["sample-filter:n=1", "beam:2", "beam:2+filter"])
    )  # fmt: skip
    run_eval(s, model, tok, progress=False)
    records = {(r["config"], r["task_id"]): r for r in read_records(tmp_path / "results.jsonl")[0]}
    for task in ("HumanEval/0", "HumanEval/1"):
        base, one = records[(BASE, task)], records[("sample-filter:n=1", task)]
        assert (one["raw_completion"], one["forward_passes"]) == (
            base["raw_completion"],
            base["forward_passes"],
        )
        beam, filtered = records[("beam:2", task)], records[("beam:2+filter", task)]
        assert filtered["candidates"][0]["raw"] == beam["raw_completion"]
        assert filtered["forward_passes"] == beam["forward_passes"]
        assert filtered["checks"] >= 1  # HumanEval/0 and /1 show doctest examples


def test_decisive_table_versus_and_frontier(evaluated, tmp_path: Path) -> None:
    """Issue 29's frontier: each row minus the reference, paired on the pair's own records,
    rows named by LABEL=CONFIG, and the Pareto chart written."""
    from backtrack.evaluation.reporting.metrics import compare

    settings, _, records = evaluated
    script = Path(__file__).resolve().parents[1] / "scripts" / "decisive_table.py"
    chart = tmp_path / "frontier.png"
    done = subprocess.run(
        [sys.executable, str(script), settings.out, "--recipe", "base",
         "--baseline", "filtered=sample-filter:n=3", "--baseline", "beam:2+filter",
         "--versus", "beam:2+filter", "--frontier", str(chart)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "this minus beam:2+filter" in done.stdout
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("| filtered |")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    recs = [r for r in records.values() if r["config"] in ("sample-filter:n=3", "beam:2+filter")]
    d = compare(recs, "sample-filter:n=3", "beam:2+filter").diff
    assert cells[3] == f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_budget = subprocess.run(
        [sys.executable, str(script), settings.out, "--recipe", "base", "--frontier", str(chart)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert no_budget.returncode == 2 and "--frontier needs --versus" in no_budget.stderr


def test_decisive_table_two_references_without_a_recipe(evaluated) -> None:
    """``--versus`` twice: a pair of columns per reference, each pair's difference on its own
    records, and no ``--recipe`` needed (a model with no tuned recipe, as the 1.5B row)."""
    from backtrack.evaluation.reporting.metrics import compare

    settings, _, records = evaluated
    script = Path(__file__).resolve().parents[1] / "scripts" / "decisive_table.py"
    done = subprocess.run(
        [sys.executable, str(script), settings.out, "--baseline", "sample-filter:n=3",
         "--baseline", "beam:2+filter", "--versus", "base", "--versus", "beam:2+filter"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "this minus base" in done.stdout and "this minus beam:2+filter" in done.stdout
    assert "recipe" not in done.stdout
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("| sample-filter:n=3 |")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    for column, reference in ((3, BASE), (5, "beam:2+filter")):
        recs = [r for r in records.values() if r["config"] in ("sample-filter:n=3", reference)]
        d = compare(recs, "sample-filter:n=3", reference).diff
        assert cells[column] == f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
    neither = subprocess.run(
        [sys.executable, str(script), settings.out], capture_output=True, text=True
    )
    assert neither.returncode == 2 and "give --recipe" in neither.stderr


def test_pareto_keeps_the_non_dominated() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "decisive_table.py"
    spec = importlib.util.spec_from_file_location("decisive_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["decisive_table"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    Line = module.Line
    points = [Line("a", 0.40, 0, 1, 1.0, 1, 1), Line("b", 0.38, 0, 1, 1.1, 1, 1),
              Line("c", 0.45, 0, 1, 1.5, 1, 1), Line("d", 0.45, 0, 1, 2.0, 1, 1),
              Line("e", 0.52, 0, 1, 2.04, 1, 1), Line("f", 0.41, 0, 1, 1.0, 1, 1)]  # fmt: skip
    assert [li.label for li in module.pareto(points)] == ["f", "c", "e"]

"""The command line as a user meets it: flags reaching the engine, defaults, one-line errors
found before any model loads, the pasteable install command, --version."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtrack import __version__, cli
from backtrack.cli import app
from backtrack.engine import Budget, Decoder, GenerationConfig
from backtrack.models import load_model
from backtrack.operators import parse_operator

PROMPT = "def fib(n):\n    "
CHAOS = "chaos:p=0.3,max=3,seed=1"


def test_generate_flags_reach_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator", CHAOS,
            "--seed", "5",
            "--temperature", "0.8", "--top-k", "30", "--max-new-tokens", "16", "--ban", "next",
            "--max-discarded", "4", "--max-retries", "1", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    model, tokenizer = load_model("tiny-random-qwen2", dtype="float32")
    config = GenerationConfig(
        max_new_tokens=16,
        temperature=0.8,
        top_k=30,
        ban="next",
        max_retries_per_position=1,
        budget=Budget(max_discarded_tokens=4),
        seed=5,
    )
    reference = Decoder(model, tokenizer).generate(PROMPT, parse_operator(CHAOS), config)
    assert data["token_ids"] == reference.token_ids
    assert data["counts"]["tokens_discarded"] == reference.counts.tokens_discarded <= 4
    assert reference.counts.backtracks > 0


def test_generate_takes_a_whole_recipe_and_flags_override_it(tmp_path: Path) -> None:
    # The spelling `tune` and `eval` use: the recipe's settings apply, a flag given wins.
    out = tmp_path / "result.json"
    recipe = f"{CHAOS}@temperature=0,ban=next,period=2"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator",
            recipe, "--period", "1", "--max-new-tokens", "12", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model, tokenizer = load_model("tiny-random-qwen2", dtype="float32")
    config = GenerationConfig(max_new_tokens=12, temperature=0.0, top_k=50, ban="next", period=1)
    reference = Decoder(model, tokenizer).generate(PROMPT, parse_operator(CHAOS), config)
    assert json.loads(out.read_text())["token_ids"] == reference.token_ids
    bad = CliRunner().invoke(app, ["generate", "--prompt", "x", "--operator", "never@temprature=0"])
    assert "temprature" in one_line_error(bad)


def test_generate_rejects_a_bad_setting_before_loading_anything() -> None:
    result = CliRunner().invoke(app, ["generate", "--prompt", "x", "--top-p", "1.5"])
    assert result.exit_code == 2
    assert "top_p must be in (0, 1]" in result.output


def one_line_error(result) -> str:
    """The error a command printed: exit code 2 and exactly one line on the output."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_generate_defaults_are_the_default_model_and_the_evaluation_sampling(
    tmp_path: Path,
) -> None:
    from backtrack.models import DEFAULT_MODEL

    assert inspect.signature(cli.generate.generate).parameters["model"].default == DEFAULT_MODEL
    assert (
        inspect.signature(cli.evaluate.eval_benchmark).parameters["model"].default == DEFAULT_MODEL
    )
    out = tmp_path / "r.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator",
            "never", "--seed", "2", "--max-new-tokens", "12", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    model, tokenizer = load_model("tiny-random-qwen2", dtype="float32")
    config = GenerationConfig(max_new_tokens=12, temperature=0.5, top_k=50, seed=2)
    reference = Decoder(model, tokenizer).generate(PROMPT, None, config)
    assert json.loads(out.read_text())["token_ids"] == reference.token_ids


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"backtrack {__version__}"


def test_operators_list_has_no_markup() -> None:
    result = CliRunner().invoke(app, ["operators"])
    assert result.exit_code == 0 and "chaos:" in result.output
    assert "``" not in result.output


def test_missing_model_packages_give_one_pasteable_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backtrack.models import TEACHER_MODEL, builtin_spec
    from backtrack.models.packaged import missing_distributions
    from backtrack.models.weight_store import CACHE_ENV

    source = builtin_spec(TEACHER_MODEL).source
    if not missing_distributions(source):
        pytest.skip("the teacher model's packages are installed here")
    # An empty cache: a machine that once assembled the teacher would otherwise load it.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["generate", "--model", TEACHER_MODEL, "--prompt", "x"])
    assert result.exit_code == 2
    commands = [line for line in result.output.splitlines() if "-m pip install" in line]
    assert len(commands) == 1  # the whole command on one line, even at 80 columns
    assert commands[0].strip().startswith(f"{sys.executable} -m pip install --no-deps")
    assert all(f"{dist}==0.2.0" in commands[0] for dist in source.distributions)
    assert len(source.distributions) == 22


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt-file", "BINARY"], "is not UTF-8 text"),
        (["--prompt-file", "MISSING"], "cannot read prompt file"),
        (["--prompt", "x", "--json", "UNDER_A_FILE"], "cannot create the directory for --json"),
        (["--prompt", "x", "--json", "A_DIRECTORY"], "is a directory"),
    ],
)
def test_generate_path_and_prompt_errors_come_before_the_model(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    """A model name that does not exist: the error we see must come before it is looked up."""
    (tmp_path / "binary.txt").write_bytes(b"def f():\n    return '\xff\xfe'\n")
    (tmp_path / "a-file").write_text("x")
    places = {
        "BINARY": tmp_path / "binary.txt",
        "MISSING": tmp_path / "missing.txt",
        "UNDER_A_FILE": tmp_path / "a-file" / "out.json",
        "A_DIRECTORY": tmp_path,
    }
    extra = [str(places.get(arg, arg)) for arg in extra]
    result = CliRunner().invoke(app, ["generate", "--model", "no-such-model", *extra])
    assert message in one_line_error(result)


def test_generate_creates_the_json_directory(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "r.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT,
            "--max-new-tokens", "3", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())["token_ids"]) == 3


def test_eval_out_that_cannot_be_a_directory_fails_before_the_model(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    for out, message in [
        (tmp_path / "a-file", "is a file, not a directory"),
        (tmp_path / "a-file" / "sub", "cannot create the result directory"),
    ]:
        args = ["eval", "humaneval", "--model", "no-such-model", "--limit", "1", "--out", str(out)]
        assert message in one_line_error(CliRunner().invoke(app, args))


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("humaneval-plus", "needs a data file path (--data-path)"),
        ("mbpp-plus", "needs a data file path (--data-path)"),
        ("nope", "choose from humaneval, humaneval-plus, mbpp, mbpp-plus"),
    ],
)
def test_eval_dataset_names_match_the_help(tmp_path: Path, dataset: str, message: str) -> None:
    args = ["eval", dataset, "--model", "no-such-model", "--out", str(tmp_path / "o")]
    assert message in one_line_error(CliRunner().invoke(app, args))


def test_report_outputs_are_checked_before_reporting(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    greedy = str(Path(__file__).resolve().parents[1] / "results" / "humaneval-greedy")
    args = ["report", greedy, "--markdown", str(tmp_path / "a-file" / "t.md")]
    assert "cannot create the directory for --markdown" in one_line_error(
        CliRunner().invoke(app, args)
    )


@pytest.mark.parametrize(
    "split, expected", [(None, ["MBPP/11", "MBPP/12"]), ("validation", ["MBPP/511", "MBPP/512"])]
)
def test_eval_mbpp_defaults_to_the_test_split(
    tmp_path: Path, shared_data: Path, split: str | None, expected: list[str]
) -> None:
    args = ["eval", "mbpp", "--data-path", str(shared_data / "mbpp" / "mbpp_release_v1.jsonl"),
            "--model", "tiny-random-qwen2", "--limit", "2", "--max-new-tokens", "2",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    if split:
        args += ["--split", split]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted({r["task_id"] for r in records}) == expected
    assert json.loads((tmp_path / "meta.json").read_text())["split"] == (split or "test")


@pytest.mark.parametrize(
    "dataset, split, message",
    [
        ("humaneval", "test", "--split is for MBPP and MBPP+"),
        ("mbpp", "nope", "unknown MBPP split 'nope'"),
    ],
)
def test_eval_bad_split_is_a_one_line_error(
    tmp_path: Path, shared_data: Path, dataset: str, split: str, message: str
) -> None:
    args = ["eval", dataset, "--split", split, "--model", "no-such-model", "--out", str(tmp_path),
            "--data-path", str(shared_data / "mbpp" / "mbpp_release_v1.jsonl")]  # fmt: skip
    assert message in one_line_error(CliRunner().invoke(app, args))


def test_unreachable_hub_is_a_one_line_error_at_once(monkeypatch, tmp_path: Path) -> None:
    """A hub id the hub cannot serve (here: an endpoint where nothing listens) fails in one
    line instead of after about 50 s of transformers' retries."""
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    args = ["generate", "--model", "some-owner/surely-not-cached", "--prompt", "x"]
    message = one_line_error(CliRunner().invoke(app, args))
    assert "is unreachable" in message and "some-owner/surely-not-cached" in message


def test_rollback_window_flag_bounds_every_rollback(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["generate", "--model", "tiny-random-qwen2", "--prompt", PROMPT, "--operator",
            "chaos:p=0.6,max=8,seed=3", "--seed", "3", "--max-new-tokens", "40",
            "--rollback-window", "2", "--dtype", "float32", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    counts = json.loads(out.read_text())["counts"]
    assert counts["backtracks"] > 0 and 1 <= counts["deepest_rollback"] <= 2

"""Every generation and evaluation setting has one default, spelled once: GenerationConfig's
and EvalSettings' fields. The CLI reads its option defaults from there, its generation flags
name exactly the flat settings, and every loader gets llama.cpp's threads and context."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtrack.cli import app
from backtrack.cli.evaluate import eval_benchmark
from backtrack.cli.generate import generate
from backtrack.cli.serve import serve
from backtrack.engine.settings import (
    BUDGET_KEYS,
    GENERATION_KEYS,
    PER_CALL_KEYS,
    Budget,
    GenerationConfig,
)
from backtrack.evaluation.settings import LOADING_KEYS, PRESETS, EvalSettings, default_generation

# eval's option -> the EvalSettings field it sets (the same name unless listed).
EVAL_FIELD_OF_OPTION = {"timeout": "timeout_s"}
# Options of eval with no EvalSettings default: what the user names, or the command's own.
EVAL_OWN_OPTIONS = {"model", "operator", "baseline", "out", "preset", "data_path", "progress"}


def _defaults(command) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}


def _field_defaults(cls) -> dict[str, object]:
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }


def test_generation_keys_are_the_dataclass_fields() -> None:
    fields = [f.name for f in dataclasses.fields(GenerationConfig)]
    expected = [f for f in fields if f not in (*PER_CALL_KEYS, "budget")]
    expected += [f.name for f in dataclasses.fields(Budget)]
    assert list(GENERATION_KEYS) == expected
    assert set(BUDGET_KEYS) <= set(GENERATION_KEYS) and "budget" not in GENERATION_KEYS
    assert set(GenerationConfig().to_flat()) == set(GENERATION_KEYS)


def test_the_library_default_is_the_papers_sampling() -> None:
    # The project's protocol (the lead's decision, issue 32): one default, GenerationConfig's.
    config = GenerationConfig()
    assert (config.temperature, config.top_k, config.max_new_tokens) == (0.5, 50, 512)
    # The evaluation adds only its stop strings; the paper preset adds nothing.
    assert default_generation("chat") == config
    assert dataclasses.replace(default_generation("completion"), stop=()) == config
    assert dict(PRESETS["paper"]) == {}


@pytest.mark.parametrize("command", [generate, eval_benchmark])
def test_generation_flags_are_the_flat_settings_and_default_to_unset(command) -> None:
    """Each generation flag's parameter is named by its setting (the flag's spelling, e.g.
    --max-discarded, is declared with the option); unset, it keeps GenerationConfig's default
    or a recipe's, so no flag restates a default."""
    defaults = _defaults(command)
    flags = [name for name in GENERATION_KEYS if name in defaults]
    # Every setting has a flag, built from its declaration.
    assert set(GENERATION_KEYS) == set(flags)
    assert all(defaults[name] is None for name in flags)


def test_eval_option_defaults_are_eval_settings_defaults() -> None:
    defaults = _defaults(eval_benchmark)
    settings = _field_defaults(EvalSettings)
    checked = 0
    for option, default in defaults.items():
        field = EVAL_FIELD_OF_OPTION.get(option, option)
        if option in EVAL_OWN_OPTIONS or field in GENERATION_KEYS:
            continue
        assert field in settings, f"eval --{option} sets no EvalSettings field with a default"
        assert default == settings[field], option
        checked += 1
    assert checked >= 15
    assert (settings["backend"], settings["batch_size"]) == ("auto", 32)


@pytest.mark.parametrize("command", [generate, serve])
def test_loading_option_defaults_are_the_settings_defaults(command) -> None:
    defaults = _defaults(command)
    settings = _field_defaults(EvalSettings)
    assert len(LOADING_KEYS) == 6
    for option in LOADING_KEYS:
        assert defaults[option] == settings[option], option


def _serve_and_settings():
    from backtrack.cli.serve import serve
    from backtrack.serving.settings import ServeSettings

    return serve, ServeSettings, (["m"],)


def _label_and_settings():
    from backtrack.cli.train import label
    from backtrack.rl.label_settings import LabelSettings

    return label, LabelSettings, ()


@pytest.mark.parametrize("pair", [_serve_and_settings, _label_and_settings])
def test_declared_flags_are_the_settings_fields(pair) -> None:
    """serve's limits and label's labelling are their settings' declarations: one flag per
    declared field, with the field's default, so a command given no flag gets the settings'
    defaults."""
    command, settings_class, required = pair()
    defaults = _defaults(command)
    declared = [f.name for f in dataclasses.fields(settings_class) if "help" in f.metadata]
    assert len(declared) >= 4
    for name in declared:
        assert defaults[name] == _field_defaults(settings_class)[name], name
    given = {name: defaults[name] for name in declared}
    assert settings_class(*required, **given) == settings_class(*required)


def test_eval_settings_without_flags_equal_the_cli_without_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backtrack eval` given nothing builds EvalSettings() (out aside); --preset paper too."""
    import backtrack.evaluation.generation.runner as runner

    seen: list[EvalSettings] = []

    def record(settings: EvalSettings, **kwargs):
        seen.append(settings)
        raise runner.EvalError("stop here")

    monkeypatch.setattr(runner, "run_eval", record)
    out = str(tmp_path / "o")
    for extra in ([], ["--preset", "paper"]):
        result = CliRunner().invoke(app, ["eval", "--out", out, *extra])
        assert result.exit_code == 2 and "stop here" in result.output
    from backtrack.cli.options import DEFAULT_MODEL

    assert seen[0] == seen[1] == EvalSettings(model=DEFAULT_MODEL, out=out)


def test_threads_and_n_ctx_reach_every_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--threads/--n-ctx travel in EvalSettings to load_model_for, which the CLI's eval, the
    runner and the Ray actors all load through."""
    import backtrack.models

    calls: list[tuple[str, dict]] = []

    def fake_load(name: str, **kwargs):
        calls.append((name, kwargs))
        raise backtrack.models.ModelLoadError("not loading in this test")

    monkeypatch.setattr(backtrack.models, "load_model", fake_load)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    args = ["eval", "--model", str(gguf), "--backend", "llama.cpp", "--threads", "3",
            "--n-ctx", "2048", "--limit", "1", "--no-progress",
            "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "not loading in this test" in result.output
    assert calls == [
        (
            str(gguf),
            dict(
                dtype="auto",
                device="auto",
                quantize=None,
                backend="llama.cpp",
                threads=3,
                n_ctx=2048,
            ),  # fmt: skip
        )
    ]
    # A model that does not load leaves no meta.json for a corrected command to be refused by.
    assert not (tmp_path / "o" / "meta.json").exists()


def test_old_meta_without_threads_resumes_with_the_defaults() -> None:
    settings = EvalSettings.from_meta({"model": "m", "out": "o", "temperature": 0.5})
    assert settings.threads is None and settings.n_ctx is None
    # A meta.json from before the backend was a choice was decoded by transformers.
    assert settings.backend == "transformers"
    assert EvalSettings.from_meta({"model": "m", "out": "o", "backend": "auto"}).backend == "auto"


def test_help_imports_no_torch() -> None:
    code = "import sys, backtrack.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tune_option_defaults_are_tune_settings_defaults() -> None:
    from backtrack.cli.tune import tune
    from backtrack.tuning.settings import TuneSettings

    defaults = _defaults(tune)
    settings = _field_defaults(TuneSettings)
    generation = set(GENERATION_KEYS)  # unset flags: a trial's settings stay the search's
    shared = sorted(set(defaults) & set(settings) - {"rungs", "enqueue", "operators"} - generation)
    assert len(shared) >= 10, shared
    for option in shared:
        assert defaults[option] == settings[option], option
    # rungs are typed as "40,120,374" on the command line.
    assert tuple(int(r) for r in defaults["rungs"].split(",")) == tuple(settings["rungs"])


def test_workers_of_the_scoring_commands_is_evals_setting() -> None:
    """report --rescore, rescore and check run programs like eval does: one --workers, with
    EvalSettings' default and help."""
    from backtrack.cli.evaluate import check, report, rescore_command

    for command in (report, rescore_command, check):
        parameter = inspect.signature(command, eval_str=True).parameters["workers"]
        assert parameter.default == EvalSettings.default("workers")
        (option,) = parameter.annotation.__metadata__
        assert option.help == EvalSettings.declared("workers")["help"]

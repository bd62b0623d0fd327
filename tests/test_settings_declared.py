"""Every decoding setting is declared once (``backtrack.engine.settings``), and everything that
exposes settings is built from that declaration: this walks every declared field and checks
that the CLI (generate, eval, tune), the server's request schema and the evaluation's settings
expose it with the same default and the same bounds."""

from __future__ import annotations

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from backtrack.cli import app
from backtrack.engine.settings import (
    GENERATION_KEYS,
    UNSET,
    Declared,
    GenerationConfig,
    config_from_given,
    declared_settings,
)
from backtrack.evaluation.settings import EvalError, EvalSettings
from backtrack.serving.protocol import BacktrackOptions, CompletionRequest

DECLARED = declared_settings()
BOUNDED = [
    d for d in DECLARED if any(getattr(d.setting, b) is not None for b in ["ge", "gt", "le", "lt"])
]
COMMANDS = ("generate", "eval", "tune")


def _click_params(command: str) -> dict[str, object]:
    group = typer.main.get_group(app)
    return {p.name: p for p in group.commands[command].params}


def _outside(d: Declared) -> list[object]:
    """Values just outside each bound of ``d``."""
    s, integral = d.setting, d.integral
    step = 1 if integral else 1e-6
    out = []
    if s.ge is not None:
        out.append(s.ge - step)
    if s.gt is not None:
        out.append(s.gt)
    if s.le is not None:
        out.append(s.le + step)
    if s.lt is not None:
        out.append(s.lt)
    return [int(v) if integral else v for v in out]


def _edges(d: Declared) -> list[object]:
    """The values a closed bound allows (the bound itself)."""
    return [v for v in (d.setting.ge, d.setting.le) if v is not None]


def test_the_flat_keys_are_the_declared_settings():
    assert tuple(d.name for d in DECLARED) == GENERATION_KEYS
    assert all(d.setting.help.strip() for d in DECLARED)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setting_is_a_flag_of_every_decoding_command(command):
    params = _click_params(command)
    for d in DECLARED:
        assert d.name in params, f"{command} has no flag for {d.name}"
        param = params[d.name]
        assert d.flag in param.opts, (command, d.name, param.opts)
        # Unset keeps the config's (or a recipe's) default: no flag restates it.
        assert param.default is None, (command, d.name)
        assert param.help.startswith(d.setting.help), (command, d.name)


@pytest.mark.parametrize("d", DECLARED, ids=lambda d: d.name)
def test_every_setting_is_a_request_field_with_the_declared_bounds(d):
    place = d.setting.request
    if place is None:  # files on the server's disk: a request names the lists it loaded
        assert d.name == "ban_files" and "ban_lists" in BacktrackOptions.model_fields
        assert d.name not in CompletionRequest.model_fields
        return
    if place == "protocol":  # OpenAI's own fields, with their own rules
        assert {"max_new_tokens": "max_tokens", "stop": "stop"}[
            d.name
        ] in CompletionRequest.model_fields
        return
    model = CompletionRequest if place == "top" else BacktrackOptions
    schema = model.model_json_schema()["properties"][d.request_name]
    expected = None if d.setting.request_default is UNSET else d.setting.request_default
    assert schema.get("default") == expected, d.name
    assert schema["description"] == d.setting.help
    number = next(
        (a for a in schema.get("anyOf", [schema]) if a.get("type") in ("integer", "number")), {}
    )
    for bound, key in (
        ("ge", "minimum"),
        ("gt", "exclusiveMinimum"),
        ("le", "maximum"),
        ("lt", "exclusiveMaximum"),
    ):
        assert number.get(key) == getattr(d.setting, bound), (d.name, bound)


@pytest.mark.parametrize("d", BOUNDED, ids=lambda d: d.name)
def test_every_bound_is_enforced_alike_everywhere(d, tmp_path):
    for value in _edges(d):
        config_from_given({d.name: value})  # a closed bound is allowed
    for value in _outside(d):
        words = d.setting.bounds_text()
        with pytest.raises(
            ValueError,
            match=f"{d.name} must be {words}".replace("[", r"\[")
            .replace("(", r"\(")
            .replace(")", r"\)"),
        ):
            config_from_given({d.name: value})
        with pytest.raises(EvalError, match=d.name):
            EvalSettings.from_flat({"model": "m", "out": "o", d.name: value})
        place = d.setting.request
        if place in ("top", "backtrack"):
            fields = {d.request_name: value}
            body = fields if place == "top" else {"backtrack": fields}
            with pytest.raises(ValidationError):
                CompletionRequest(model="m", prompt="x", **body)
        # The command line refuses it before any model loads, with the same message.
        result = CliRunner().invoke(app, ["generate", "--prompt", "x", d.flag, str(value)])
        assert result.exit_code == 2, (d.name, value, result.output)
        assert d.name in result.output


def test_every_default_is_the_configs_in_the_evaluation_and_the_server():
    engine = GenerationConfig().to_flat()
    evaluation = EvalSettings(model="m", out="o", mode="chat").generation.to_flat()
    assert evaluation == engine  # chat mode adds no stop strings; nothing else differs
    served = config_from_given({})
    assert served.to_flat() == engine


@pytest.mark.parametrize(
    "d", [d for d in DECLARED if d.setting.off is not UNSET], ids=lambda d: d.name
)
def test_a_protocols_off_value_means_off_everywhere(d):
    assert config_from_given({d.name: d.setting.off}).to_flat()[d.name] is None
    request = CompletionRequest(model="m", prompt="x", **{d.request_name: d.setting.off})
    from backtrack.serving import ServeSettings
    from backtrack.serving.requests import request_config

    assert getattr(request_config(request, ServeSettings(["m"])), d.name) is None

"""Building a judge from a spec: :func:`make_judge` and the parsing of CLI spec strings.

A spec is a CLI string (``"tests"``, ``"local:MODEL"``, ``"local:MODEL?backend=llama.cpp"``,
``"openai:http://HOST:PORT/v1?model=M"``) or a YAML mapping with ``type`` and the judge's
options; query-string values are coerced to the constructor's types and unknown options are
rejected with the allowed ones listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from backtrack.rl.judges.base import Judge, JudgeConfigError
from backtrack.rl.judges.local import LocalJudge
from backtrack.rl.judges.openai_http import OpenAIJudge
from backtrack.rl.judges.tests_only import TestsOnlyJudge

_TESTS_NAMES = {"tests", "tests-only", "tests_only", "none", "off", ""}

_OPENAI_PARAMS: dict[str, type] = {
    "api_key_env": str,
    "timeout": float,
    "max_retries": int,
    "backoff": float,
    "max_backoff": float,
    "cache_size": int,
    "on_error": str,
    "max_tokens": int,
    "temperature": float,
}
_LOCAL_PARAMS: dict[str, type] = {
    "cache_size": int,
    "use_chat_template": bool,
    "max_prompt_tokens": int,
    "reuse_prefix": bool,
}
_LOAD_PARAMS: dict[str, type] = {
    "dtype": str,
    "device": str,
    "quantize": str,
    "backend": str,
    "threads": int,
    "n_ctx": int,
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Turn query-string text into the constructor's type; values from YAML pass through."""
    if not isinstance(value, str) or kind is str:
        return value
    try:
        if kind is bool:
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError as exc:
        raise JudgeConfigError(
            f"judge option {key}={value!r} is not a valid {kind.__name__}"
        ) from exc


def _check_keys(kind: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise JudgeConfigError(
            f"unknown option(s) {unknown} for the {kind!r} judge; allowed: {sorted(allowed)}"
        )


def _parse_spec_string(spec: str) -> dict[str, Any]:
    text = spec.strip()
    if text.lower() in _TESTS_NAMES:
        return {"type": "tests"}
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind == "local":
        name, _, query = rest.partition("?")
        config: dict[str, Any] = {"type": "local", **dict(parse_qsl(query))}
        if name:
            config["model"] = name
        return config
    if kind == "openai" and sep:
        parts = urlsplit(rest)
        if not parts.scheme or not parts.netloc:
            raise JudgeConfigError(
                f"judge spec {spec!r}: expected openai:http(s)://HOST:PORT/v1?model=NAME"
            )
        config = {"type": "openai", **dict(parse_qsl(parts.query))}
        config["base_url"] = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        return config
    raise JudgeConfigError(
        f"unknown judge spec {spec!r}; use 'tests', 'local:MODEL_NAME' or "
        "'openai:http://HOST:PORT/v1?model=NAME'"
    )


def make_judge(
    spec: str | Mapping[str, Any] | Judge | None,
    *,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    **overrides: Any,
) -> Judge:
    """Build a judge from a CLI string or a config mapping.

    Strings: ``"tests"`` (also ``"none"``/``"off"``),
    ``"local:MODEL_NAME[?backend=llama.cpp&threads=..&dtype=..&max_prompt_tokens=..]"``,
    ``"openai:http://HOST:PORT/v1?model=NAME[&timeout=..&on_error=neutral..]"``. Mappings (from
    YAML) carry ``type`` (``tests|local|openai``) plus the same options, e.g.
    ``{"type": "openai", "base_url": ..., "model": ..., "timeout": 10}``. ``overrides`` win over
    the spec. For ``local``, ``model`` names what :func:`backtrack.models.load_model` loads;
    pass ``model_and_tokenizer`` to reuse objects already in memory instead. A :class:`Judge`
    instance or ``None`` (meaning tests only) is accepted so callers can pass either through.
    """
    if isinstance(spec, Judge):
        return spec
    if spec is None:
        config: dict[str, Any] = {"type": "tests"}
    elif isinstance(spec, str):
        config = _parse_spec_string(spec)
    elif isinstance(spec, Mapping):
        config = dict(spec)
        if "type" not in config and "kind" in config:
            config["type"] = config.pop("kind")
    else:
        raise JudgeConfigError(f"judge spec must be a string or a mapping, got {type(spec)}")
    config.update(overrides)
    kind = str(config.pop("type", "")).lower()

    if kind in _TESTS_NAMES:
        _check_keys("tests", config, set())
        return TestsOnlyJudge()

    if kind == "openai":
        _check_keys("openai", config, {"base_url", "model", "extra_body", *_OPENAI_PARAMS})
        if not config.get("model"):
            raise JudgeConfigError("the openai judge needs a model, e.g. ...?model=gpt-oss-20b")
        if not config.get("base_url"):
            raise JudgeConfigError("the openai judge needs a base_url, e.g. http://HOST:8000/v1")
        kwargs = {
            key: _coerce(key, value, _OPENAI_PARAMS[key]) if key in _OPENAI_PARAMS else value
            for key, value in config.items()
        }
        return OpenAIJudge(**kwargs)

    if kind == "local":
        _check_keys("local", config, {"model", *_LOCAL_PARAMS, *_LOAD_PARAMS})
        name = config.pop("model", None)
        load_kwargs = {
            key: _coerce(key, config.pop(key), _LOAD_PARAMS[key])
            for key in list(config)
            if key in _LOAD_PARAMS
        }
        kwargs = {key: _coerce(key, value, _LOCAL_PARAMS[key]) for key, value in config.items()}
        if model_and_tokenizer is not None:
            model, tokenizer = model_and_tokenizer
        elif name:
            from backtrack.models import load_model

            model, tokenizer = load_model(str(name), **load_kwargs)
        else:
            raise JudgeConfigError(
                "the local judge needs a model name (local:MODEL_NAME) or model_and_tokenizer"
            )
        return LocalJudge(model, tokenizer, **kwargs)

    raise JudgeConfigError(f"unknown judge type {kind!r}; use 'tests', 'local' or 'openai'")

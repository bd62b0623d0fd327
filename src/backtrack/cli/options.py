"""What the commands share: the model and generation options, how flags become settings,
one-line errors, output checks and the model loader of the commands that hold a model.

Defaults are read from the settings objects (:class:`~backtrack.evaluation.settings.EvalSettings`,
whose module imports no torch, so ``--help`` stays fast), never restated here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from backtrack.evaluation.settings import LOADING_KEYS, EvalSettings
from backtrack.flags import spellings
from backtrack.paths import OutputPathError, ensure_writable_directory

err = Console(stderr=True)
# The named default model (``backtrack.models.DEFAULT_MODEL``), spelled out so that `--help`
# does not import torch; a test keeps the two equal.
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
# The backend a command uses unless told (EvalSettings.backend says why).
DEFAULT_BACKEND: str = EvalSettings.default("backend")

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Built-in name (see `backtrack models`), local dir or hub id."
    ),
]


def _with_options(
    command: Callable[..., Any],
    placeholder: str,
    options: Sequence[inspect.Parameter],
    collect: Callable[[dict[str, Any]], Any],
) -> Callable[..., Any]:
    """``command`` with ``options`` in place of its parameter ``placeholder``, which then
    receives ``collect({option: value})`` (typer reads the new signature)."""
    signature = inspect.signature(command, eval_str=True)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
    (at,) = [i for i, p in enumerate(params) if p.name == placeholder]
    names = [option.name for option in options]

    @functools.wraps(command)
    def with_options(**kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in names}
        return command(**kwargs, **{placeholder: collect(given)})

    with_options.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], *options, *params[at + 1 :]]
    )
    return with_options


def generation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` a flag for every declared decoding setting
    (:func:`~backtrack.engine.settings.declared_settings`), in place of its ``generation``
    parameter, which then receives the flags given as flat settings (unset flags left out).

    Each flag is built from its declaration: the spelling, the help text, the type; unset
    (``None``) keeps the setting's default (GenerationConfig's) or a recipe's, so no flag
    restates a default. ``generate``, ``eval`` and ``tune`` share them this way.
    """
    from backtrack.engine.settings import declared_settings

    flags = [
        inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=_flag_annotation(d))
        for d in declared_settings()
    ]  # fmt: skip
    return _with_options(command, "generation", flags, given_settings)


def _declared_flag(settings: type, f: dataclasses.Field, panel: str | None) -> inspect.Parameter:
    """The flag of a field of ``settings`` declared with :func:`backtrack.flags.option`: its
    spellings, help and default."""
    hint = typing.get_type_hints(settings)[f.name]
    spelled = list(spellings(f.name, f.metadata["flag"]))
    if hint is bool:
        spelled[0] = f"{spelled[0]}/--no-{spelled[0].removeprefix('--')}"
    option = typer.Option(*spelled, help=f.metadata["help"], rich_help_panel=panel)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                             annotation=Annotated[hint, option])  # fmt: skip


def settings_options(
    settings: type, placeholder: str, panel: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator giving a command a flag for every field of the dataclass ``settings``
    declared with :func:`backtrack.flags.option`, in place of its parameter ``placeholder``,
    which then receives ``{field: value}``; each flag defaults to the field's default."""
    flags = [
        _declared_flag(settings, f, panel)
        for f in dataclasses.fields(settings)
        if "help" in f.metadata
    ]
    return lambda command: _with_options(command, placeholder, flags, dict)


# ``backtrack eval``'s flags: every EvalSettings field declared with option(), as
# ``evaluation={field: value}``.
eval_options = settings_options(EvalSettings, "evaluation", "Evaluation")


def eval_option(name: str) -> Any:
    """The typed option of :class:`EvalSettings`' flag ``name`` (its spelling and help), for a
    command that takes the same setting outside an evaluation (``report``, ``rescore`` and
    ``check`` take ``--workers``); its default is :func:`eval_default`."""
    (found,) = [f for f in dataclasses.fields(EvalSettings) if f.name == name]
    return _declared_flag(EvalSettings, found, None).annotation


def loading_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the model-loading flags (``--dtype``, ``--device``, ``--quantize``,
    ``--backend``, ``--threads``, ``--n-ctx``: :data:`~backtrack.evaluation.settings.LOADING_KEYS`,
    declared in :class:`EvalSettings`, so ``eval``'s are the same) in place of its ``loading``
    parameter, which then receives ``{setting: value}`` for :func:`load`."""
    by_name = {f.name: f for f in dataclasses.fields(EvalSettings)}
    flags = [_declared_flag(EvalSettings, by_name[name], None) for name in LOADING_KEYS]
    return _with_options(command, "loading", flags, dict)


def _flag_annotation(declared: Any) -> Any:
    """The typer annotation of one setting's flag (``declared``: a ``Declared``)."""
    hint, panel = declared.type, "Generation settings"
    options: dict[str, Any] = {"help": _flag_help(declared), "rich_help_panel": panel}
    if hint is bool:
        flag = declared.flag
        spelled = f"{flag}/--no-{flag.removeprefix('--')}"
        return Annotated[bool | None, typer.Option(spelled, **options)]
    if typing.get_origin(hint) is typing.Literal:
        return Annotated[hint | None, typer.Option(declared.flag, **options)]
    if typing.get_origin(hint) in (Sequence, Mapping, dict, list):
        return Annotated[list[str] | None, typer.Option(declared.flag, **options)]
    kind = int if declared.integral else float
    return Annotated[kind | None, typer.Option(declared.flag, **options)]  # type: ignore[valid-type]


def _flag_help(declared: Any) -> str:
    """A setting's help with its default and bounds (the flag's own default is "unset")."""
    setting, default = declared.setting, declared.default
    if isinstance(default, tuple):
        default = " ".join(repr(v) for v in default) or "none"
    elif default is None or default == {}:
        default = "none"
    bounds = (
        declared.setting.bounds_text()
        if setting.ge or setting.gt or setting.le or setting.lt
        else ""
    )
    return f"{setting.help} [default: {default}{'; ' + bounds if bounds else ''}]"


def given_settings(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the given flags ask for, flat: unset flags (``None``) left out, repeated
    flags as tuples, ``--logit-bias ID=BIAS`` pairs as a mapping. The config's declarations
    check the values (and store a protocol's "off" value as ``None``)."""
    given = {key: value for key, value in flags.items() if value is not None}
    if "logit_bias" in given:
        given["logit_bias"] = _logit_bias(given["logit_bias"])
    return {
        key: tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        for key, value in given.items()
    }


def _logit_bias(pairs: Sequence[str]) -> dict[str, float]:
    """``--logit-bias ID=BIAS`` flags as a mapping (GenerationConfig checks the values)."""
    bias: dict[str, float] = {}
    for pair in pairs:
        token, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            bias[token.strip()] = float(value)
        except ValueError:
            raise fail(f"--logit-bias takes TOKEN_ID=BIAS, got {pair!r}") from None
    return bias


def eval_default(name: str) -> Any:
    """``EvalSettings``' default of ``name``: the CLI's option defaults come from there (the
    loading options of ``generate`` and ``serve`` too: EvalSettings is where they are set)."""
    return EvalSettings.default(name)


def fail(message: str, code: int = 2) -> typer.Exit:
    # soft_wrap: long lines (a pip command naming 22 packages) are never broken by rich, so
    # what the user copies from the terminal is what we printed.
    err.print("[bold red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def writable_output(path: Path, what: str) -> Path:
    """Check an output file's place before any expensive work: create its parent directory
    if needed; refuse a directory, or a place we cannot write, with a one-line error."""
    if path.is_dir():
        raise fail(f"{what} {path} is a directory; give a file path")
    try:
        ensure_writable_directory(path.parent, f"the directory for {what} {path}")
    except OutputPathError as exc:
        raise fail(str(exc)) from exc
    return path


def load(model: str, **loading: Any):
    """Load a model for a command (``loading``: ``load_model``'s keywords, the flags of
    :func:`loading_options`), turning every loading problem into a clear exit (``eval`` loads
    through :func:`~backtrack.evaluation.generation.sources.load_model_for`, from its
    settings)."""
    from backtrack.models import ModelLoadError, load_model

    try:
        return load_model(model, **loading)
    except (ModelLoadError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc

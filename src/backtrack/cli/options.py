"""What the commands share: the model and generation options, how flags become settings,
one-line errors, output checks and the model loader of the commands that hold a model.

Defaults are read from the settings objects (:class:`~backtrack.evaluation.settings.EvalSettings`,
whose module imports no torch, so ``--help`` stays fast), never restated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from backtrack.evaluation.settings import EvalSettings
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
DtypeOpt = Annotated[str, typer.Option(help="auto|bfloat16|float16|float32")]
DeviceOpt = Annotated[str, typer.Option(help="auto|cpu|cuda")]
QuantizeOpt = Annotated[str | None, typer.Option(help="int8 (CPU: dynamic int8; CUDA: 8-bit)")]
BackendOpt = Annotated[
    str,
    typer.Option(
        help="transformers|llama.cpp|auto (auto: llama.cpp for GGUF models on the CPU, when "
        "installed)."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="llama.cpp: CPU threads (default: every core).")
]
NCtxOpt = Annotated[int | None, typer.Option(help="llama.cpp: tokens per sequence (default 4096).")]

# Generation flags, shared by every command that decodes. Each parameter is named by the
# setting it sets (a key of GenerationConfig's flat form, GENERATION_KEYS); where users type
# another name, the flag's spelling is declared here, the one place a flag and its setting
# differ. Unset (None) keeps the setting's default (GenerationConfig's), or a recipe's.
TemperatureOpt = Annotated[float | None, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopKOpt = Annotated[int | None, typer.Option(help="Top-k filter (0: off).")]
TopPOpt = Annotated[float | None, typer.Option(help="Nucleus filter.")]
MinPOpt = Annotated[float | None, typer.Option(help="Min-p filter.")]
MaxNewTokensOpt = Annotated[int | None, typer.Option(help="Length of the final completion.")]
StopOpt = Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")]
PeriodOpt = Annotated[int | None, typer.Option(help="Consult the operator every N tokens.")]
BanOpt = Annotated[str | None, typer.Option(help="accumulate|next|none (default accumulate).")]
MaxRetriesOpt = Annotated[
    int | None,
    typer.Option("--max-retries", help="Resumes at one position before its token is kept."),
]
RollbackWindowOpt = Annotated[
    int | None,
    typer.Option(
        help="Deepest rollback, in tokens behind the furthest position reached (unbounded)."
    ),
]
BanStringOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ban-string",
        help="Banned string, never output: rolled back and resampled (repeatable).",
    ),
]
BanRegexOpt = Annotated[
    list[str] | None,
    typer.Option("--ban-regex", help="Banned regular expression (repeatable)."),
]
BanIgnoreCaseOpt = Annotated[
    bool | None,
    typer.Option(
        "--ban-ignore-case/--no-ban-ignore-case",
        help="Match banned strings and regexes case-insensitively.",
    ),
]
PresencePenaltyOpt = Annotated[
    float | None, typer.Option(help="OpenAI presence penalty, in [-2, 2] (0: off).")
]
FrequencyPenaltyOpt = Annotated[
    float | None, typer.Option(help="OpenAI frequency penalty, in [-2, 2] (0: off).")
]
RepetitionPenaltyOpt = Annotated[
    float | None,
    typer.Option(help="Repetition penalty over prompt and completion, > 0 (1: off; vLLM's)."),
]
DryMultiplierOpt = Annotated[float | None, typer.Option(help="DRY penalty multiplier (0: off).")]
DryBaseOpt = Annotated[float | None, typer.Option(help="DRY exponential base, > 1.")]
DryAllowedLengthOpt = Annotated[
    int | None, typer.Option(help="DRY: longest repeat left unpenalised, in tokens.")
]
DryBreakerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dry-sequence-breaker",
        help='DRY sequence breaker (repeatable; replaces the default \\n : " *).',
    ),
]
LogitBiasOpt = Annotated[
    list[str] | None,
    typer.Option("--logit-bias", help="TOKEN_ID=BIAS added to that logit (repeatable)."),
]
MaxBacktracksOpt = Annotated[int | None, typer.Option(help="Budget: rollbacks.")]
MaxDiscardedOpt = Annotated[
    int | None, typer.Option("--max-discarded", help="Budget: deleted tokens.")
]


def given_settings(**flags: Any) -> dict[str, Any]:
    """The settings the given flags ask for, flat (keyword: setting key, see the options
    above): unset flags (``None``) left out, ``top_k=0`` as "off" (``None``), repeated flags
    as tuples."""
    given = {key: value for key, value in flags.items() if value is not None}
    if given.get("top_k") == 0:
        given["top_k"] = None
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


def load(
    model: str,
    dtype: str = "auto",
    device: str = "auto",
    quantize: str | None = None,
    backend: str = DEFAULT_BACKEND,
    threads: int | None = None,
    n_ctx: int | None = None,
):
    """Load a model for a command, turning every loading problem into a clear exit (``eval``
    loads through :func:`~backtrack.evaluation.sources.load_model_for`, from its settings)."""
    from backtrack.models import ModelLoadError, load_model

    try:
        return load_model(
            model,
            dtype=dtype,
            device=device,
            quantize=quantize,
            backend=backend,
            threads=threads,
            n_ctx=n_ctx,
        )
    except (ModelLoadError, ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc

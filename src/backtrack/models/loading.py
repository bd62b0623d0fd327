"""Resolve a model name to ``(model, tokenizer)``: :func:`load_model`.

A name is one of the built-in names (:data:`~backtrack.models.catalogue.BUILTIN_MODELS`, listed
by ``backtrack models``), a local directory, a ``.gguf`` file (llama.cpp backend), or a Hugging
Face hub id, loaded the usual way for users who have the hub. A packaged built-in model is
prepared first (:mod:`backtrack.models.prepare`); later loads read its cached copy in about a
second. :func:`resolve_backend` says which backend a load would use, without loading.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from backtrack.errors import ModelLoadError
from backtrack.models.catalogue import BUILTIN_MODELS, MODEL_ALIASES, builtin_spec
from backtrack.models.hardware import quantize_int8_cpu, resolve_device, resolve_load_plan
from backtrack.models.hub import hub_access
from backtrack.models.packaged import report_step
from backtrack.models.prepare import prepare_gguf, prepare_model
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model
from backtrack.models.weight_store import CorruptEntryError, verify_entry

__all__ = ["BACKENDS", "load_model", "resolve_backend"]


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
        close = difflib.get_close_matches(
            name.lower(), [*BUILTIN_MODELS, *MODEL_ALIASES], cutoff=0.8
        )
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

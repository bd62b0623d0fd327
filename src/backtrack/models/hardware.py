"""Choosing a device, a dtype and an optional int8 quantization, and refusing bad combinations.

Why this lives apart from model loading: the rules are about the machine, not about any model, and
the benchmarks and the CLI need to ask the same questions ("which dtype would auto pick here?")
without loading anything.

The rules:

* ``device="auto"`` is CUDA when available, else CPU. Asking for a device that is not there is an
  error, never a silent fallback (a benchmark that silently ran on the CPU would lie).
* ``dtype="auto"`` is bfloat16 where the hardware computes it natively (a CPU with AVX512-BF16 or
  AMX-BF16, an ARM CPU with BF16, or a CUDA device that reports bf16 support), else float32.
  Emulated bf16 on an older CPU is slower than float32, so auto does not pick it there.
  Capability comes from ``torch.cpu.get_capabilities()`` (cpuinfo) or, on older torch,
  ``/proc/cpuinfo`` flags; never from timing a matmul, which is noisy and slow.
* ``quantize="int8"`` on CPU is PyTorch dynamic quantization: ``nn.Linear`` weights become int8,
  activations are quantized on the fly and everything else (embeddings, norms, the KV cache)
  stays float32. It needs a float32 model, so it accepts only ``dtype`` auto or float32.
  On CUDA it is bitsandbytes 8-bit, with non-Linear parts in ``dtype`` (auto: float16).

Importing this module does not import torch (the functions that need it import it), so what
only describes the machine (:func:`cpu_name`: result files, the reference-time cache) costs
nothing.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Every spelling of a dtype -> the name of the torch dtype.
DTYPE_NAMES: dict[str, str] = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
QUANTIZE_CHOICES: tuple[str, ...] = ("int8",)


CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[tuple[str, str], ...]:
    """``/proc/cpuinfo`` as (key, value) pairs, every core's in turn (empty where that file
    does not exist: not Linux)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return ()
    pairs = (line.partition(":") for line in text.splitlines())
    return tuple((key.strip(), value.strip()) for key, sep, value in pairs if sep)


def _cpu_flags() -> frozenset[str]:
    """CPU feature names from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    # x86 says "flags", ARM says "Features".
    return frozenset(
        flag for key, value in _cpuinfo() if key in ("flags", "Features") for flag in value.split()
    )


def cpu_name() -> str:
    """This machine's CPU model (``/proc/cpuinfo``'s ``model name``, e.g. ``Intel(R) Xeon(R)
    CPU @ 2.50GHz``), else what :mod:`platform` knows (``x86_64`` at worst): the name result
    files and benchmark reports record, and reference times are cached under."""
    names = [value for key, value in _cpuinfo() if key == "model name" and value]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 arithmetic (so bf16 is faster than fp32)."""
    import torch

    get_caps = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if get_caps is not None:
        try:
            caps = get_caps()
        except Exception:  # cpuinfo can fail in odd sandboxes; fall back to /proc/cpuinfo
            caps = None
        if caps is not None:
            return any(bool(caps.get(k)) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    flags = _cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16", "svebf16"})


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N|mps`` to a device that exists, or raise ``ValueError``."""
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    device = device.strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"unknown device {device!r}; choose auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but CUDA is not available here "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} requested but MPS is not available here")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; choose auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu"
) -> torch.dtype:
    """Map ``auto|bfloat16|float16|float32`` (or a torch dtype) to a torch dtype for ``device``.

    ``auto`` picks bfloat16 only where the hardware has native bf16 (see the module docstring),
    because emulated bf16 is slower than float32 and no more exact.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        return dtype
    key = dtype.strip().lower()
    if key == "auto":
        dev = resolve_device(device) if not isinstance(device, torch.device) else device
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if dev.type == "cpu":
            return torch.bfloat16 if cpu_supports_bf16() else torch.float32
        return torch.float32
    if key not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, bfloat16, float16, float32")
    return getattr(torch, DTYPE_NAMES[key])


def normalize_quantize(quantize: str | None) -> str | None:
    """Return ``None`` or a member of :data:`QUANTIZE_CHOICES`, or raise ``ValueError``."""
    if quantize is None:
        return None
    key = str(quantize).strip().lower()
    if key in ("", "none", "no"):
        return None
    if key not in QUANTIZE_CHOICES:
        raise ValueError(
            f"unknown quantize value {quantize!r}; choose None or one of {list(QUANTIZE_CHOICES)}"
        )
    return key


def resolve_load_plan(
    dtype: str | torch.dtype, device: str | torch.device, quantize: str | None
) -> tuple[torch.device, torch.dtype, str | None]:
    """Validate a (dtype, device, quantize) request together and return the concrete plan.

    The returned dtype is the dtype the weights are *loaded* in; for CPU int8 that is float32,
    which dynamic quantization then converts (Linear weights only).
    """
    import torch

    dev = resolve_device(device)
    quant = normalize_quantize(quantize)
    if quant is None:
        return dev, resolve_dtype(dtype, dev), None
    if dev.type == "cpu":
        if not (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
            requested = resolve_dtype(dtype, dev)
            if requested != torch.float32:
                raise ValueError(
                    f"quantize='int8' on CPU uses PyTorch dynamic quantization, which computes in "
                    f"float32; dtype={dtype!r} cannot be combined with it (use dtype='auto' or "
                    f"'float32', or drop quantize to run in {requested})"
                )
        return dev, torch.float32, quant
    if dev.type == "cuda":
        if isinstance(dtype, str) and dtype.strip().lower() == "auto":
            return dev, torch.float16, quant
        return dev, resolve_dtype(dtype, dev), quant
    raise ValueError(f"quantize={quant!r} is not supported on device {str(dev)!r}; use cpu or cuda")


def quantize_int8_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every ``nn.Linear`` in place; the model must be float32.

    Only Linear weights are quantized, so the KV cache (keys and values are Linear *outputs*)
    stays float32 and can be cropped and extended exactly like an unquantized model's.
    """
    import torch

    for name, param in model.named_parameters():
        if param.dtype != torch.float32:
            raise ValueError(
                f"int8 dynamic quantization needs a float32 model; {name} is {param.dtype}"
            )
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 dynamic quantization runs on CPU only; move the model to cpu first")
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # The eager-mode API is deprecated in favour of torchao but is present and the fastest
        # CPU path measured here (see docs/field-notes.md); silence the deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor", category=UserWarning)
        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model

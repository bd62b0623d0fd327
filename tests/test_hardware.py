"""The CPU as this machine describes it: its name (recorded with results, benchmark reports
and the reference-time cache) and its feature flags. Device, dtype and quantization choices
are tested in test_models.py."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backtrack.evaluation import reference_times, store
from backtrack.models import hardware

# Two cores of an x86 machine, as Linux lists them (abridged).
X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.50GHz
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU @ 2.50GHz
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
"""
# An ARM machine: no "model name", its flags are "Features".
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes crc32 bf16
CPU implementer\t: 0x41
"""


@pytest.fixture
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the hardware module at a cpuinfo file written by the test (None: no file)."""

    def use(text: str | None) -> None:
        path = tmp_path / "cpuinfo"
        if text is not None:
            path.write_text(text)
        monkeypatch.setattr(hardware, "CPUINFO", path)
        hardware._cpuinfo.cache_clear()

    yield use
    hardware._cpuinfo.cache_clear()  # the next test reads the real file again


def test_cpu_name_is_the_model_name(cpuinfo) -> None:
    cpuinfo(X86)
    assert hardware.cpu_name() == "Intel(R) Xeon(R) CPU @ 2.50GHz"


@pytest.mark.parametrize("text", [ARM, "", None], ids=["arm", "empty", "absent"])
def test_cpu_name_without_a_model_name_is_what_platform_knows(cpuinfo, text) -> None:
    cpuinfo(text)
    assert hardware.cpu_name() == (platform.processor() or platform.machine())
    assert hardware.cpu_name()


@pytest.mark.parametrize(
    ("text", "native"),
    [(X86, True), (ARM, True), (X86.replace(" avx512_bf16", ""), False), (None, False)],
    ids=["x86", "arm", "x86-without-bf16", "absent"],
)
def test_bf16_from_cpuinfo_flags_when_torch_cannot_tell(cpuinfo, monkeypatch, text, native):
    """Without ``torch.cpu.get_capabilities`` the flags decide: x86's ``flags`` lines and
    ARM's ``Features``."""
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    cpuinfo(text)
    assert hardware.cpu_supports_bf16() is native


def test_results_and_reference_times_record_the_same_name() -> None:
    """One name everywhere: a result directory's meta and the reference-time cache key."""
    name = hardware.cpu_name()
    assert store.machine_info()["cpu"] == name
    assert reference_times.machine_fingerprint()["cpu"] == name
    real = Path("/proc/cpuinfo")
    if real.is_file() and "model name" in real.read_text(errors="replace"):
        assert name in real.read_text(errors="replace")


def test_describing_the_machine_imports_no_torch() -> None:
    """Naming the CPU (and so the reference-time cache, which re-scoring reads) costs no torch
    import: the models package and its hardware module load torch only when a function that
    needs it runs."""
    code = (
        "import sys\n"
        "import backtrack.models.hardware as hardware\n"
        "import backtrack.evaluation.reference_times\n"
        "import backtrack.evaluation.scoring.rescore\n"
        "assert hardware.cpu_name()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from backtrack.models import resolve_dtype\n"  # the lazy name still resolves
        "assert str(resolve_dtype('fp32')) == 'torch.float32'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

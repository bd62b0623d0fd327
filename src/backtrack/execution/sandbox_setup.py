"""How a sandboxed program's child process is set up: its limits (:class:`SandboxConfig`),
the containment this host supports (:func:`detect_isolation`), and the child's command line,
environment and working directory.

:mod:`backtrack.execution.sandbox` runs the child and reads its verdict; its docstring says
why the sandbox has this shape and what each protection gives.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NOBODY_UID = 65534
NOBODY_GID = 65534
TMPFS_INODES = 16384  # files + directories per fresh tmpfs


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for one run; defaults match HumanEval practice (3 s per program)."""

    timeout_s: float = 3.0
    memory_bytes: int = 2 * 1024**3
    max_file_bytes: int = 10 * 1024**2
    max_procs: int = 64
    output_cap_bytes: int = 16 * 1024
    isolate_network: bool = True
    drop_privileges: bool = True
    python: str = sys.executable
    tmp_root: str | None = None
    tmpfs_bytes: int = 64 * 1024**2

    @property
    def cpu_seconds(self) -> int:
        """CPU limit: a backstop just above the wall-clock limit (the parent kills first)."""
        return math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class Isolation:
    """What containment this host supports; probed once per process."""

    prefix: tuple[str, ...]
    network: bool
    pid_namespace: bool
    can_drop_privileges: bool
    mount_namespace: bool = False


def _probe(cmd: Sequence[str]) -> bool:
    """True when ``cmd true`` runs successfully (quietly, quickly)."""
    try:
        done = subprocess.run(
            [*cmd, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Find the strongest ``unshare`` variant that works here, falling back to none."""
    unshare = shutil.which("unshare")
    can_drop = hasattr(os, "geteuid") and os.geteuid() == 0
    if unshare:
        namespaces = ("--net", "--pid", "--fork", "--kill-child")
        full = (unshare, "--mount", *namespaces)
        if _probe(full):
            return Isolation(full, True, True, can_drop_privileges=can_drop, mount_namespace=True)
        no_mount = (unshare, *namespaces)
        if _probe(no_mount):
            return Isolation(no_mount, True, pid_namespace=True, can_drop_privileges=can_drop)
        net_only = (unshare, "--net")
        if _probe(net_only):
            return Isolation(net_only, True, pid_namespace=False, can_drop_privileges=can_drop)
    return Isolation((), network=False, pid_namespace=False, can_drop_privileges=can_drop)


# The program that runs inside the child, by path (see its module docstring for the steps).
HARNESS_PATH = Path(__file__).resolve().with_name("sandbox_harness.py")


def child_env(workdir: str) -> dict[str, str]:
    """A minimal environment: nothing inherited from the parent (no tokens, no paths)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def make_workdir(config: SandboxConfig, drop: bool) -> str:
    """A fresh private directory the (possibly unprivileged) child may write in."""
    workdir = tempfile.mkdtemp(prefix="backtrack-sbx-", dir=config.tmp_root)
    if drop:
        os.chown(workdir, NOBODY_UID, NOBODY_GID)
    return workdir


def harness_command(
    config: SandboxConfig, iso: Isolation, fds: tuple[int, int], drop: bool
) -> list[str]:
    """Build argv: optional unshare prefix, then the interpreter running the harness file.

    ``-s`` (no user site) plus a constructed environment and the harness removing its own
    directory from sys.path give what ``-I`` gives, while still honouring PYTHONHASHSEED=0
    (``-I`` would ignore it). The order of the arguments is the harness's ``Args``.
    """
    prefix = list(iso.prefix) if config.isolate_network else []
    private_fs = bool(prefix) and iso.mount_namespace
    limits = [
        config.memory_bytes,
        config.cpu_seconds,
        config.max_file_bytes,
        config.max_procs,
        int(drop),
        NOBODY_UID,
        NOBODY_GID,
        config.output_cap_bytes,
        int(private_fs),
        config.tmpfs_bytes,
        TMPFS_INODES,
    ]
    harness = [config.python, "-s", "-B", str(HARNESS_PATH), str(fds[0]), str(fds[1])]
    return prefix + harness + ["program.py"] + [str(x) for x in limits]

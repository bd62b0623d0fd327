"""Run one untrusted program (model output + its tests) in a contained, fresh subprocess.

Why this shape
--------------
The parent may hold a large model in memory, so we never ``os.fork`` it: every program gets a
fresh interpreter through ``subprocess.Popen`` (``start_new_session=True``), its own temporary
working directory, a wall-clock limit enforced by the parent and hard limits applied inside the
child before any user code runs (RLIMIT_AS, RLIMIT_CPU, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_CORE).
What runs inside the child, "the harness", is :mod:`backtrack.execution.sandbox_harness`,
started by path; its docstring lists its steps in order. This module is the parent's side: it
starts the child, waits for it and reads its verdict; how the child is set up (limits, the
containment this host supports, its command line) is :mod:`backtrack.execution.sandbox_setup`.

Where the platform allows it (detected once, see :func:`detect_isolation`):

* ``unshare --mount --net --pid --fork --kill-child`` puts the child in a private network
  namespace (only a down loopback: no connection can be made, not even to 127.0.0.1), a private
  PID namespace (when the child, PID 1 there, dies, the kernel kills every process it spawned,
  even ones that called ``setsid`` to escape the process group) and a private mount namespace;
* in that mount namespace, before any user code and while still root, the harness (through
  ``mount(2)`` via ctypes, no extra process) makes every mount private (nothing propagates
  back), mounts a fresh tmpfs on ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (mode 1777,
  ``SandboxConfig.tmpfs_bytes`` and :data:`TMPFS_INODES` each, nosuid/nodev), bind-mounts the
  working directory back at its own path (it usually lives under ``/tmp``, which the fresh
  tmpfs hides) and writable, and remounts every other mount point read-only. So the program
  can write only to its working directory (removed by the parent afterwards) and to the
  private tmpfs mounts, which vanish with the namespace when its last process exits; writing
  anywhere else fails with ``EROFS``, even for root. The harness writes ``<nonce> fs private``
  to the verdict pipe once all of it took effect;
* when the parent runs as root, the child drops to ``nobody`` (65534) after setting its limits,
  so RLIMIT_NPROC is enforced (root ignores it) and files outside the sandbox directory cannot
  be written or deleted. The interpreter's import path may live in a directory ``nobody``
  cannot traverse (e.g. ``/root/.pyenv``): before dropping, the harness opens each ``sys.path``
  directory and re-points ``sys.path`` at ``/proc/self/fd/N``, which reaches the directory
  without walking its parents.

Pass signal
-----------
A run counts as passed only when the harness writes ``<nonce> passed`` to a pipe after the
program text (which ends with ``check(entry_point)``) has executed to the end without raising.
The nonce is drawn per run by the parent and reaches the harness through a pipe that is read and
closed before user code runs; it is never in argv, the environment or a file. Hence
``exit(0)``, ``sys.exit(0)``, ``os._exit(0)``, ``raise SystemExit``, printing "passed", or
killing the interpreter all score as failures.

Threat model (honest version)
-----------------------------
This is containment for *buggy* model output (infinite loops, memory blow-ups, stray file or
network access, early exits, accidental fork storms), not a security boundary. The harness and
the user code share one interpreter: a program written to attack this harness could walk the
stack (``sys._getframe``) or memory to find the nonce and forge a pass (or forge the
``fs private`` line), and the reliability guard (disabled ``os.system``, ``os.remove``...) is
trivially bypassed through ``posix``.

What the private filesystem gives: nothing a program writes outside its working directory
survives it or is seen by any other process (a stray ``/tmp/cache.pkl`` cannot leak into, or
break, the next program), and the host's files cannot be created, changed or deleted, even by
a program that runs as root. It does not hide anything from reading (the program still sees
the host's files, read-only), the working directory lives on the host's disk until the
parent removes it (bounded per file by RLIMIT_FSIZE, not in total), and a program that keeps
root (``drop_privileges=False``) still holds CAP_SYS_ADMIN in its namespaces, so it could
unmount or remount its way back to the host's filesystem on purpose.

Fallback: ``unshare`` needs root (CAP_SYS_ADMIN); the probe tries all namespaces, then all but
the mount namespace, then the network namespace only, then none, and the program runs in each
case. If a mount fails inside, the harness undoes its mounts (or leaves a partly read-only
tree) and does not report ``fs private``. Without the private filesystem a program can write
to the real ``/tmp`` and, unless privileges were dropped, anywhere root can.
``ExecResult.sandbox`` (:class:`Protections`, also written into every evaluation record and
``backtrack check --json``) records what was in force for each run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backtrack.execution.sandbox_setup import (
    HARNESS_PATH,
    NOBODY_GID,
    NOBODY_UID,
    TMPFS_INODES,
    Isolation,
    SandboxConfig,
    child_env,
    detect_isolation,
    harness_command,
    make_workdir,
)

# The setup's names are importable from here too, where users and the tests take them.
__all__ = [
    "HARNESS_PATH",
    "NOBODY_GID",
    "NOBODY_UID",
    "TMPFS_INODES",
    "ExecResult",
    "Isolation",
    "Protections",
    "SandboxConfig",
    "detect_isolation",
    "run_many",
    "run_program",
]

_VERDICT_MAX_BYTES = 4096
_TRUNCATION_MARK = "\n...[truncated]"


@dataclass(frozen=True)
class Protections:
    """Which protections were in force for one run (recorded with every result).

    ``network``: private network namespace; ``pid``: private PID namespace; ``filesystem``: the
    harness reported a private mount namespace with fresh /tmp, /var/tmp, /dev/shm and the rest
    of the filesystem read-only; ``privileges_dropped``: the program ran as ``nobody``.
    """

    network: bool = False
    pid: bool = False
    filesystem: bool = False
    privileges_dropped: bool = False


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program.

    ``status`` is one of ``passed``, ``failed``, ``timeout``, ``memory``, ``error`` (the program
    does not compile) or ``killed`` (ended by a signal other than SIGXCPU); ``detail`` says more
    (the exception's type, the limit hit, the signal's name).
    """

    passed: bool
    status: str
    duration_s: float
    stdout: str
    stderr: str
    detail: str = ""
    sandbox: Protections = Protections()

    @property
    def network_isolated(self) -> bool:
        return self.sandbox.network

    @property
    def privileges_dropped(self) -> bool:
        return self.sandbox.privileges_dropped


def _read_capped(handle, cap: int) -> str:
    """Read at most ``cap`` bytes of a captured stream, marking truncation."""
    handle.flush()
    size = os.fstat(handle.fileno()).st_size
    handle.seek(0)
    text = handle.read(cap).decode("utf-8", errors="replace")
    return text + _TRUNCATION_MARK if size > cap else text


def _nonce_lines(raw: bytes, nonce: str) -> list[list[str]]:
    """The harness lines carrying our nonce, split into (nonce, word, rest)."""
    lines = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and secrets.compare_digest(parts[0], nonce):
            lines.append(parts)
    return lines


def _parse_verdict(raw: bytes, nonce: str) -> tuple[str, str] | None:
    """Return (status, detail) from the harness line carrying our nonce, else None."""
    for parts in _nonce_lines(raw, nonce):
        if parts[1] in ("passed", "failed", "memory", "error"):
            return parts[1], parts[2] if len(parts) > 2 else ""
    return None


def _filesystem_private(raw: bytes, nonce: str) -> bool:
    """True when the harness reported its private filesystem in place (before user code)."""
    return any(p[1:] == ["fs", "private"] for p in _nonce_lines(raw, nonce))


def _read_pipe(fd: int) -> bytes:
    """Drain what the harness left in the verdict pipe (the child is gone by now)."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    total = 0
    while total < _VERDICT_MAX_BYTES:
        try:
            chunk = os.read(fd, _VERDICT_MAX_BYTES)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _kill_group(pgid: int) -> None:
    """SIGKILL the whole process group; harmless when it is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_contained(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child; on timeout kill its group. Returns True when it timed out.

    We wait with WNOWAIT so the leader stays a zombie (its PID and group ID cannot be reused)
    while we kill any stragglers in its group, then reap it.
    """
    fired = threading.Event()

    def kill_on_timeout() -> None:
        fired.set()
        _kill_group(proc.pid)

    timer = threading.Timer(timeout_s, kill_on_timeout)
    timer.start()
    try:
        while True:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    finally:
        timer.cancel()
    _kill_group(proc.pid)
    proc.wait()
    return fired.is_set()


def _classify(
    timed_out: bool, verdict: tuple[str, str] | None, returncode: int, stderr: str
) -> tuple[str, str]:
    """Map what we observed to (status, detail); only a nonce verdict can say 'passed'."""
    if timed_out:
        return "timeout", "wall-clock limit"
    if verdict is not None:
        return verdict
    if "MemoryError" in stderr:
        return "memory", "MemoryError"
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU:
            return "timeout", "cpu limit"
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return "killed", name
    return "failed", f"exited with code {returncode} before the tests finished"


def _send_nonce(nonce: str) -> int:
    """Put the nonce in a pipe and return its read end (the write end is closed)."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, nonce.encode())
    os.close(write_fd)
    return read_fd


def run_program(program: str, config: SandboxConfig | None = None) -> ExecResult:
    """Execute ``program`` (code that ends by calling its tests) in a fresh contained process."""
    config = config or SandboxConfig()
    iso = detect_isolation()
    drop = config.drop_privileges and iso.can_drop_privileges
    workdir = make_workdir(config, drop)
    nonce = secrets.token_hex(16)
    nonce_r = _send_nonce(nonce)
    verdict_r, verdict_w = os.pipe()
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as handle:
            handle.write(program)
        out = open(os.path.join(workdir, ".stdout"), "w+b")  # noqa: SIM115 - closed below
        err = open(os.path.join(workdir, ".stderr"), "w+b")  # noqa: SIM115 - closed below
        with out, err:
            start = time.monotonic()
            proc = subprocess.Popen(
                harness_command(config, iso, (nonce_r, verdict_w), drop),
                cwd=workdir,
                env=child_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(nonce_r, verdict_w),
                start_new_session=True,
            )
            os.close(nonce_r)
            os.close(verdict_w)
            nonce_r = verdict_w = -1
            timed_out = _wait_contained(proc, config.timeout_s)
            duration = time.monotonic() - start
            stdout = _read_capped(out, config.output_cap_bytes)
            stderr = _read_capped(err, config.output_cap_bytes)
        raw_verdict = _read_pipe(verdict_r)
        verdict = _parse_verdict(raw_verdict, nonce)
    finally:
        for fd in (nonce_r, verdict_w, verdict_r):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    status, detail = _classify(timed_out, verdict, proc.returncode, stderr)
    namespaces = config.isolate_network and bool(iso.prefix)
    return ExecResult(
        passed=status == "passed",
        status=status,
        duration_s=duration,
        stdout=stdout,
        stderr=stderr,
        detail=detail,
        sandbox=Protections(
            network=namespaces and iso.network,
            pid=namespaces and iso.pid_namespace,
            filesystem=_filesystem_private(raw_verdict, nonce),
            privileges_dropped=drop,
        ),
    )


def run_many(
    programs: Sequence[str],
    workers: int = 2,
    config: SandboxConfig | Sequence[SandboxConfig] | None = None,
    on_result: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Run programs concurrently (threads only wait on subprocesses); results keep input order.

    ``config``: one for every program, or one per program (HumanEval+ and MBPP+ problems each
    have their own wall-clock limit). ``on_result(index, result)`` is called as each finishes,
    e.g. to drive a progress bar.
    """
    results: list[ExecResult | None] = [None] * len(programs)
    configs = list(config) if isinstance(config, Sequence) else [config] * len(programs)
    if len(configs) != len(programs):
        raise ValueError(f"{len(configs)} sandbox configs for {len(programs)} programs")

    def one(index: int) -> None:
        result = run_program(programs[index], configs[index])
        results[index] = result
        if on_result is not None:
            on_result(index, result)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(one, i) for i in range(len(programs))]:
            future.result()
    return [r for r in results if r is not None]

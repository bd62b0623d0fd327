"""The sandbox's child program: its pure functions, its protocol with the parent, run by path."""

from __future__ import annotations

import ast
import io
import os
import shutil
import sys
from pathlib import Path

import pytest

from backtrack.execution import sandbox, sandbox_setup
from backtrack.execution import sandbox_harness as harness
from backtrack.execution.sandbox import (
    Isolation,
    SandboxConfig,
    _filesystem_private,
    _parse_verdict,
    detect_isolation,
    run_program,
)

GOOD = "def double(x):\n    return 2 * x\n\nassert double(2) == 4\n"
needs_root = pytest.mark.skipif(
    not detect_isolation().can_drop_privileges, reason="needs root to drop privileges"
)

# ------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("field", "decoded"),
    [
        (b"/plain/path", b"/plain/path"),
        (b"/mnt/with\\040space", b"/mnt/with space"),
        (b"/a\\011tab\\012newline", b"/a\ttab\nnewline"),
        (b"/back\\134slash", b"/back\\slash"),
        (b"\\040\\040", b"  "),
        (b"/not\\089octal", b"/not\\089octal"),  # 8 and 9 are not octal digits
        (b"/short\\04", b"/short\\04"),  # an escape needs three digits
        (b"/trailing\\", b"/trailing\\"),
        (b"", b""),
    ],
)
def test_unescape_decodes_mountinfo_octal_escapes(field: bytes, decoded: bytes) -> None:
    assert harness._unescape(field) == decoded


def test_mount_points_reads_mountinfo_lines() -> None:
    lines = [
        b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
        b"36 22 0:31 / /mnt/a\\040b ro,nosuid,nodev master:2 - tmpfs tmpfs rw\n",
        b"garbage\n",
        b"\n",
    ]
    assert list(harness._mount_points(iter(lines))) == [
        (b"/", [b"rw", b"relatime"]),
        (b"/mnt/a b", [b"ro", b"nosuid", b"nodev"]),
    ]


def test_mount_points_of_this_process() -> None:
    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("no /proc/self/mountinfo")
    with open("/proc/self/mountinfo", "rb") as handle:
        points = dict(harness._mount_points(handle))
    assert b"/" in points and all(opts for opts in points.values())


@pytest.mark.parametrize(
    ("path", "roots", "inside"),
    [
        (b"/tmp", [b"/tmp"], True),
        (b"/tmp/x/y", [b"/var/tmp", b"/tmp"], True),
        (b"/tmpfoo", [b"/tmp"], False),  # a shared prefix is not containment
        (b"/tm", [b"/tmp"], False),
        (b"/tmp/x", [b"/tmp/"], True),  # a trailing slash on the root does not matter
        (b"/anything", [b"/"], True),
        (b"/tmp", [], False),
    ],
)
def test_inside(path: bytes, roots: list[bytes], inside: bool) -> None:
    assert harness._inside(path, roots) is inside


def test_remount_flags_keep_the_safety_options() -> None:
    read_only = harness.MS_REMOUNT | harness.MS_BIND | harness.MS_RDONLY
    assert harness._remount_flags([b"rw", b"relatime"]) == read_only
    flags = harness._remount_flags([b"rw", b"nosuid", b"nodev", b"noexec", b"nosymfollow"])
    keep = harness.MS_NOSUID | harness.MS_NODEV | harness.MS_NOEXEC | harness.MS_NOSYMFOLLOW
    assert flags == read_only | keep


def test_capped_keeps_the_first_characters() -> None:
    raw = io.StringIO()
    capped = harness._Capped(raw, 5)
    assert capped.write("abc") == 3
    assert capped.write("defgh") == 5  # reports everything written, as a stream must
    assert capped.write("ijk") == 3
    print("more", 42, file=capped)
    capped.flush()
    assert raw.getvalue() == "abcde"
    assert not capped.isatty()


def test_capped_converts_to_text_and_survives_a_broken_stream() -> None:
    raw = io.StringIO()
    capped = harness._Capped(raw, 100)
    capped.write(12)
    raw.close()
    assert capped.write("lost") == 4  # the failure is swallowed, and writing stops for good
    assert capped._left == 0


def test_read_all_reads_until_end_of_file() -> None:
    text = "nonce-é" + "x" * 10_000  # longer than one 4096-byte read, not only ASCII
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, text.encode())
        os.close(write_fd)
        assert harness._read_all(read_fd) == text
    finally:
        os.close(read_fd)


def test_forget_dir_removes_the_directory_and_its_aliases(tmp_path: Path) -> None:
    own = tmp_path / "evaluation"
    own.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(own)
    entries = [str(own), "/usr/lib/python3", str(alias), str(own) + "/", str(tmp_path)]
    assert harness._forget_dir(entries, str(alias)) == ["/usr/lib/python3", str(tmp_path)]


# ------------------------------------------------------------- the protocol with the parent


@pytest.mark.parametrize(
    ("status", "detail"),
    [("passed", ""), ("failed", "AssertionError"), ("memory", "MemoryError"), ("error", "X")],
)
def test_verdict_lines_are_what_the_parent_parses(status: str, detail: str) -> None:
    nonce = "0123abcd"
    line = harness.verdict_line(nonce, status, detail)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert _parse_verdict(line, nonce) == (status, detail)
    assert _parse_verdict(line, "another") is None
    assert not _filesystem_private(line, nonce)


def test_filesystem_line_is_what_the_parent_parses() -> None:
    line = harness.verdict_line("n0nce", "fs", "private")
    assert line == b"n0nce fs private\n"
    assert _filesystem_private(line, "n0nce") and _parse_verdict(line, "n0nce") is None


def test_verdict_writes_its_lines_and_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exited(Exception):
        pass

    def fake_exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    read_fd, write_fd = os.pipe()
    try:
        verdict = harness._Verdict(write_fd, "n0nce")
        monkeypatch.setattr(os, "write", None)  # bound before: a program may break os.write
        verdict.line("fs", "private")
        with pytest.raises(Exited) as exited:
            verdict.finish("failed", "ValueError")
        assert exited.value.args == (0,)
    finally:
        monkeypatch.undo()
        os.close(write_fd)
    try:
        assert harness._read_all(read_fd) == "n0nce fs private\nn0nce failed ValueError\n"
    finally:
        os.close(read_fd)


@pytest.mark.parametrize("unshare", [False, True], ids=["bare", "unshare"])
def test_args_read_what_the_parent_builds(unshare: bool) -> None:
    config = SandboxConfig(
        memory_bytes=123, max_file_bytes=456, max_procs=7, output_cap_bytes=89, tmpfs_bytes=1011
    )
    prefix = ("/usr/bin/unshare", "--mount", "--net") if unshare else ()
    iso = Isolation(prefix, network=unshare, pid_namespace=False, can_drop_privileges=True,
                    mount_namespace=unshare)  # fmt: skip
    argv = sandbox_setup.harness_command(config, iso, (11, 12), drop=True)
    assert argv[: len(prefix)] == list(prefix)
    assert argv[len(prefix) :][:4] == [config.python, "-s", "-B", str(sandbox.HARNESS_PATH)]
    args = harness.Args(argv[len(prefix) + 4 :])
    assert (args.nonce_fd, args.verdict_fd, args.program) == (11, 12, "program.py")
    assert (args.memory, args.cpu, args.fsize, args.nproc) == (123, config.cpu_seconds, 456, 7)
    assert (args.drop, args.uid, args.gid) == (True, sandbox.NOBODY_UID, sandbox.NOBODY_GID)
    assert (args.output_cap, args.private_fs) == (89, unshare)
    assert (args.tmpfs_bytes, args.tmpfs_inodes) == (1011, sandbox.TMPFS_INODES)


def test_args_refuse_a_wrong_count() -> None:
    with pytest.raises(ValueError):
        harness.Args(["3", "4", "program.py", "1", "2"])
    with pytest.raises(ValueError):
        harness.Args(["3", "4", "program.py", *["1"] * 12])


# ----------------------------------------------------------------- a standalone module file


def test_harness_path_is_this_module() -> None:
    assert sandbox.HARNESS_PATH.is_absolute() and sandbox.HARNESS_PATH.is_file()
    assert Path(harness.__file__).resolve() == sandbox.HARNESS_PATH


def test_harness_imports_only_the_standard_library() -> None:
    tree = ast.parse(sandbox.HARNESS_PATH.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_no_sibling_module_shadows_the_standard_library() -> None:
    """Python puts the harness's directory first on sys.path until the harness removes it."""
    siblings = {p.stem for p in sandbox.HARNESS_PATH.parent.glob("*.py")}
    assert siblings & sys.stdlib_module_names == set()


def test_program_cannot_import_the_harness_siblings() -> None:
    """Run as root with real paths on sys.path, so they can be compared."""
    program = (
        "import posix, sys\n"
        f"assert {str(sandbox.HARNESS_PATH.parent)!r} not in sys.path, sys.path\n"
        "assert '' not in sys.path and posix.getcwd() not in sys.path, sys.path\n"
        "for name in ('sandbox_harness', 'sandbox', 'data', 'check'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(name)\n"
    )
    result = run_program(program, SandboxConfig(drop_privileges=False))
    assert result.passed, result.stderr


def test_program_compiles_without_the_harness_future_imports() -> None:
    program = "def f(x: int) -> None:\n    pass\n\nassert f.__annotations__['x'] is int\n"
    result = run_program(program + GOOD)
    assert result.passed, result.stderr


@needs_root
def test_harness_that_nobody_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness may live where nobody cannot go (e.g. under /root): it is read before the
    drop; afterwards a traceback merely lacks the harness frame's source line."""
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    copy = hidden / "sandbox_harness.py"
    shutil.copyfile(sandbox.HARNESS_PATH, copy)
    copy.chmod(0o600)
    monkeypatch.setattr(sandbox_setup, "HARNESS_PATH", copy)  # where the command reads it
    assert run_program(GOOD).passed
    program = (
        "import os, sys\n"
        "print(os.getuid(), [os.readlink(p) for p in sys.path])\n"
        "raise ValueError('from the program')\n"
    )
    result = run_program(program)
    assert (result.status, result.detail) == ("failed", "ValueError"), result.stderr
    assert result.sandbox.privileges_dropped
    assert str(copy) in result.stderr and "ValueError: from the program" in result.stderr
    uid, _, path = result.stdout.partition(" ")
    assert int(uid) == sandbox.NOBODY_UID and str(hidden) not in path

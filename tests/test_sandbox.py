"""Hostile and ordinary programs in the sandbox: each is contained and scored correctly."""

from __future__ import annotations

import ast
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from backtrack.evaluation.data import load_humaneval
from backtrack.evaluation.prompts import program_for
from backtrack.execution.sandbox import (
    NOBODY_UID,
    SandboxConfig,
    _filesystem_private,
    _parse_verdict,
    detect_isolation,
    run_many,
    run_program,
)

CHECK = "\ndef check(candidate):\n    assert candidate(2) == 4\n\ncheck(double)\n"
GOOD = "def double(x):\n    return 2 * x\n" + CHECK
FAST = SandboxConfig(timeout_s=1.5)
PRIVATE_TMPS = ("/tmp", "/var/tmp", "/dev/shm")
needs_mount_namespace = pytest.mark.skipif(
    not detect_isolation().mount_namespace,
    reason="no private filesystem on this host: `unshare --mount` fails (needs root)",
)


def _nobody_processes() -> list[int]:
    """PIDs owned by the sandbox user (there should be none once a run is over)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == NOBODY_UID:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


def test_correct_program_passes() -> None:
    result = run_program(GOOD)
    assert result.passed and result.status == "passed"
    assert 0 < result.duration_s < 3


def test_wrong_answer_fails_with_traceback() -> None:
    result = run_program("def double(x):\n    return x\n" + CHECK)
    assert (result.passed, result.status, result.detail) == (False, "failed", "AssertionError")
    assert "AssertionError" in result.stderr


def test_syntax_error_is_error() -> None:
    result = run_program("def double(x:\n" + CHECK)
    assert result.status == "error" and result.detail == "SyntaxError"


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", FAST)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 3


def test_sleeping_program_times_out_on_wall_clock() -> None:
    result = run_program("import time\ntime.sleep(30)\n", SandboxConfig(timeout_s=0.5))
    assert result.status == "timeout"


def test_memory_hog_immediate() -> None:
    result = run_program("block = bytearray(8 * 2**30)\n" + GOOD)
    assert result.status == "memory" and not result.passed


def test_memory_hog_growing() -> None:
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n"
    result = run_program(hog, SandboxConfig(timeout_s=4, memory_bytes=256 * 2**20))
    assert result.status == "memory"


@pytest.mark.skipif(not detect_isolation().can_drop_privileges, reason="needs root to drop")
def test_fork_bomb_is_contained() -> None:
    bomb = (
        "import posix\n"  # os.fork is disabled by the guard; posix.fork is the raw call
        "while True:\n"
        "    try:\n"
        "        posix.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = run_program(bomb, SandboxConfig(timeout_s=1.5, max_procs=32))
    assert result.status == "timeout" and not result.passed
    deadline = time.monotonic() + 3  # the kernel tears the PID namespace down asynchronously
    while _nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _nobody_processes() == []
    assert run_program(GOOD).passed  # the host can still start processes


@pytest.mark.skipif(not detect_isolation().can_drop_privileges, reason="needs root to drop")
def test_files_outside_the_sandbox_are_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    tmp_path.chmod(0o755)
    victim = outside / "keep.txt"
    victim.write_text("precious")
    attack = (
        "import errno, posix\n"
        "errors = []\n"
        f"for action in (lambda: open({str(outside / 'new.txt')!r}, 'w').write('x'),\n"
        f"               lambda: posix.unlink({str(victim)!r}),\n"
        f"               lambda: open({str(victim)!r}, 'w').write('gone')):\n"
        "    try:\n"
        "        action()\n"
        "    except OSError as exc:\n"
        "        errors.append(errno.errorcode[exc.errno])\n"
        "print(errors)\n"
    )
    result = run_program(attack + GOOD)
    assert result.passed, result.stderr
    # nobody lacks permission; with a private filesystem tmp_path (under /tmp) is not even
    # visible (ENOENT), and anything outside /tmp is read-only (EROFS).
    errors = ast.literal_eval(result.stdout.strip())
    assert len(errors) == 3 and set(errors) <= {"EACCES", "EPERM", "ENOENT", "EROFS"}, errors
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


def _under(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == f or path.startswith(f + "/") for f in folders)


WRITER = """
import errno, os, posix
name = {name!r}
print("cwd", posix.getcwd())
for folder in ({tmps!r} + (os.environ["HOME"], posix.getcwd(), ".")):
    with open(os.path.join(folder, name), "w") as handle:
        handle.write("private")
    with open(os.path.join(folder, name)) as handle:
        assert handle.read() == "private"
for folder in {outside!r}:
    try:
        open(os.path.join(folder, name), "w").close()
    except OSError as exc:
        print("refused", folder, errno.errorcode[exc.errno])
    else:
        print("WROTE", folder)
"""


@needs_mount_namespace
@pytest.mark.parametrize("drop", [True, False], ids=["as-nobody", "as-root"])
def test_writes_outside_the_workdir_never_reach_the_host(drop: bool) -> None:
    """/tmp, /var/tmp and /dev/shm are private tmpfs mounts, the rest is read-only.

    As root (``drop=False``) only the mount namespace can be what refuses the writes.
    """
    if drop and not detect_isolation().can_drop_privileges:
        pytest.skip("needs root to drop privileges")
    name = f"backtrack-escape-{secrets.token_hex(8)}"
    home = os.path.realpath(os.path.expanduser("~"))
    outside = ("/etc", "/") if _under(home, PRIVATE_TMPS) else (home, "/etc", "/")
    program = WRITER.format(name=name, tmps=PRIVATE_TMPS, outside=outside)
    result = run_program(program + GOOD, SandboxConfig(drop_privileges=drop))
    assert result.passed, result.stderr  # every write in /tmp, /var/tmp, /dev/shm, cwd worked
    assert result.sandbox.filesystem and result.sandbox.privileges_dropped == drop
    lines = result.stdout.splitlines()
    cwd = lines[0].removeprefix("cwd ")
    refused = {line.split()[1]: line.split()[2] for line in lines if line.startswith("refused")}
    assert "WROTE" not in result.stdout
    if drop and home in refused:  # nobody may lack permission on the parent's home (0700)
        assert refused.pop(home) in ("EROFS", "EACCES")
        outside = outside[1:]
    assert refused == dict.fromkeys(outside, "EROFS")
    for folder in (*PRIVATE_TMPS, home, "/etc", "/", cwd):
        assert not os.path.lexists(os.path.join(folder, name)), folder
    assert not os.path.lexists(cwd)  # the working directory itself is gone too


@needs_mount_namespace
def test_workdir_outside_tmp_still_works() -> None:
    """tmp_root outside /tmp: the working directory is bound onto itself, still writable.

    The base is the user's home (root's under CI), and the program keeps root so that the
    home's own permissions (often 0700) play no part: only the bind mount is under test.
    """
    base = Path.home()
    if _under(str(base.resolve()), PRIVATE_TMPS):
        pytest.skip(f"the home directory {base} is itself under a private tmp directory")
    root = Path(tempfile.mkdtemp(prefix=".backtrack-sandbox-test-", dir=base))
    try:
        program = (
            "import posix\n"
            "cwd = posix.getcwd()\n"
            f"assert cwd.startswith({str(root) + '/'!r}), cwd\n"
            "open('relative.txt', 'w').write('a')\n"
            "open(cwd + '/absolute.txt', 'w').write('b')\n"
            "print(sorted(posix.listdir('.')))\n"
        )
        result = run_program(
            program + GOOD, SandboxConfig(tmp_root=str(root), drop_privileges=False)
        )
        assert result.passed, result.stderr
        assert "'absolute.txt', 'program.py', 'relative.txt'" in result.stdout
        assert result.sandbox.filesystem
        assert list(root.iterdir()) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_filesystem_line_is_not_a_verdict() -> None:
    nonce = "n0nce"
    assert _parse_verdict(b"n0nce fs private\n", nonce) is None
    assert _parse_verdict(b"n0nce fs private\nn0nce passed \n", nonce) == ("passed", "")
    assert _filesystem_private(b"n0nce fs private\nn0nce failed X\n", nonce)
    assert not _filesystem_private(b"other fs private\n", nonce)
    assert not _filesystem_private(b"n0nce passed \n", nonce)


def test_result_records_protections() -> None:
    iso = detect_isolation()
    result = run_program(GOOD)
    assert result.sandbox.network == result.network_isolated == iso.network
    assert result.sandbox.pid == iso.pid_namespace
    assert result.sandbox.privileges_dropped == iso.can_drop_privileges
    assert result.sandbox.filesystem <= iso.mount_namespace  # only inside a mount namespace
    bare = run_program(GOOD, SandboxConfig(isolate_network=False))
    assert not (bare.sandbox.network or bare.sandbox.pid or bare.sandbox.filesystem)


def test_guard_blocks_destructive_calls(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = run_program(f"import os\nos.remove({str(victim)!r})\n" + GOOD)
    assert result.status == "failed" and victim.exists()


def test_network_is_unreachable() -> None:
    if not detect_isolation().network:
        pytest.skip("unshare --net does not work on this host")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    try:
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        result = run_program(program + GOOD)
    finally:
        server.close()
    assert not result.passed and result.status == "failed"
    assert result.network_isolated and not accepted


def test_huge_output_is_truncated_without_hanging() -> None:
    noisy = "import os\nfor _ in range(200000):\n    print('x' * 100)\nos.write(1, b'y' * 10**6)\n"
    config = SandboxConfig(output_cap_bytes=4096)
    result = run_program(noisy + GOOD, config)
    assert result.passed  # printing is not a failure
    assert len(result.stdout) <= 4096 + 20 and result.stdout.endswith("[truncated]")


@pytest.mark.parametrize(
    "escape",
    [
        "exit(0)",
        "import sys\nsys.exit(0)",
        "import os\nos._exit(0)",
        "raise SystemExit(0)",
        "print('passed')\nimport os\nos._exit(0)",
    ],
)
def test_early_exit_is_not_a_pass(escape: str) -> None:
    program = "def double(x):\n    return x\n" + escape + "\n" + CHECK
    result = run_program(program)
    assert not result.passed and result.status == "failed"


def test_redefining_check_is_not_a_pass() -> None:
    """A completion that defines its own check still faces the real tests (defined later)."""
    problem = load_humaneval()[0]
    sneaky = "    return True\n\ndef check(candidate):\n    pass\n"
    result = run_program(program_for(problem, sneaky))
    assert result.status == "failed"


def test_forged_verdict_line_is_not_a_pass() -> None:
    forge = "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'x passed \\n')\n"
    forge += "    except OSError:\n        pass\nos._exit(0)\n"
    assert run_program(forge).status == "failed"


def test_environment_is_minimal() -> None:
    os.environ["BACKTRACK_SECRET_TEST"] = "leak"
    try:
        result = run_program("import os\nprint(sorted(os.environ))\n" + GOOD)
    finally:
        del os.environ["BACKTRACK_SECRET_TEST"]
    assert result.passed and "BACKTRACK_SECRET_TEST" not in result.stdout
    assert "PYTHONHASHSEED" in result.stdout


def test_run_many_keeps_order() -> None:
    programs = [GOOD, "def double(x):\n    return 0\n" + CHECK, "def double(:\n"]
    assert [r.status for r in run_many(programs, workers=2)] == ["passed", "failed", "error"]


def test_all_humaneval_canonical_solutions_pass() -> None:
    problems = load_humaneval()
    start = time.monotonic()
    results = run_many([program_for(p, p.canonical_solution) for p in problems], workers=2)
    elapsed = time.monotonic() - start
    failures = [
        (p.task_id, r.status) for p, r in zip(problems, results, strict=True) if not r.passed
    ]
    assert failures == []
    assert elapsed < 60, f"164 canonical solutions took {elapsed:.1f} s"


# ------------------------------------------------------------------ check command functions


def test_check_one_exit_codes_and_json(tmp_path: Path) -> None:
    import io
    import json

    from backtrack.evaluation.scoring.check import check_file, check_one

    problem = load_humaneval()[0]
    out = io.StringIO()
    assert check_one("HumanEval/0", problem.canonical_solution, as_json=True, out=out) == 0
    payload = json.loads(out.getvalue())
    assert payload["passed"] is True and payload["status"] == "passed"
    assert {"task_id", "duration_s", "stdout", "stderr", "detail", "sandbox"} <= set(payload)
    assert set(payload["sandbox"]) == {"network", "pid", "filesystem", "privileges_dropped"}

    out = io.StringIO()
    assert check_one("0", "    return 'nope'\n", out=out) == 1
    assert out.getvalue().startswith("HumanEval/0: failed")

    assert check_one("HumanEval/999", "", out=io.StringIO()) == 2
    assert check_file("HumanEval/0", tmp_path / "missing.py", out=io.StringIO()) == 2
    completion = tmp_path / "c.py"
    completion.write_text(problem.canonical_solution)
    assert check_file("HumanEval/0", completion, out=io.StringIO()) == 0


def test_check_canonical_subset_and_failure() -> None:
    import io
    import json
    from dataclasses import replace

    from backtrack.evaluation.scoring.check import check_canonical

    problems = load_humaneval()[:3]
    out = io.StringIO()
    assert check_canonical(workers=2, as_json=True, out=out, problems=problems) == 0
    summary = json.loads(out.getvalue())
    assert (summary["total"], summary["passed"], summary["failed"]) == (3, 3, [])
    broken = [replace(problems[0], canonical_solution="    return None\n")]
    out = io.StringIO()
    assert check_canonical(out=out, problems=broken) == 1
    assert "0/1 passed" in out.getvalue()

"""The benchmarks start: each imports what it needs and parses its arguments, run from the
repository root as docs/benchmarks.md runs them. Their figures are not checked here (timing
belongs in the benchmarks, never in tests); what they share, ``benchmarks/common.py``, is."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


@pytest.fixture
def on_benchmarks_path(monkeypatch: pytest.MonkeyPatch):
    """``sys.path`` as ``python benchmarks/bench_x.py`` has it (the script's folder first);
    ``common`` is forgotten afterwards, so that no other test can import it by accident."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    yield
    sys.modules.pop("common", None)


def _load(path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_benchmark_parses_its_arguments(script, on_benchmarks_path, monkeypatch, capsys):
    module = _load(script, monkeypatch)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script.name}")


def test_a_benchmark_runs_from_the_repository_root() -> None:
    """The command the docs give, in a fresh interpreter: the script finds ``common`` and
    the package from the root (bench_sandbox's imports do not load torch: quick)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_sandbox.py", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: bench_sandbox.py")


def test_common_rotates_pairs_ratios_and_finds_a_port(on_benchmarks_path) -> None:
    import socket

    from common import Measured, free_port, paired_ratio, rotated

    assert [rotated("abc", i) for i in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    assert rotated(["x", "y"], 1) == ["y", "x"]  # two configurations: alternating order
    rounds = [
        {"ours": Measured("ours", 1, 30, 1.0), "peer": Measured("peer", 1, 20, 1.0)},
        {"ours": Measured("ours", 1, 20, 1.0), "peer": Measured("peer", 1, 20, 1.0)},
        {"ours": Measured("ours", 1, 10, 1.0), "peer": Measured("peer", 1, 20, 1.0)},
    ]
    assert paired_ratio(rounds, "ours", "peer") == "1.00x (0.50-1.50)"
    assert paired_ratio(rounds[:1], "ours", "peer") == "1.50x"
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))  # nothing held it

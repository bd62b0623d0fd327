"""No install command anywhere names a package that is not this one.

On the package index, ``backtrack`` is an unrelated project (a logging library); this one is
distributed as ``backtrack-decoding`` (the import name and the command stay ``backtrack``).
Every ``pip install`` in the docs, the README, error messages and scripts must say so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# `pip install ... backtrack` or `backtrack[extra]`, not `backtrack-decoding`.
WRONG = re.compile(r"pip install[^\n`\"]*?(?<![\w./-])['\"]?backtrack(?![\w-])")
PLACES = ["README.md", "Makefile", "pyproject.toml", "docs/**/*.md", "src/**/*.py",
          "hub/**/*", "scripts/**/*", "benchmarks/**/*.py"]  # fmt: skip


def _texts():
    for pattern in PLACES:
        for path in sorted(REPO.glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                yield path, path.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize(
    ("line", "wrong"),
    [
        ("pip install 'backtrack[serve]'", True),
        ("    pip install backtrack", True),
        ('raise fail("tune needs Optuna; pip install \\"backtrack[tune]\\"")', True),
        ("pip install 'backtrack-decoding[serve]'", False),
        ("pip install backtrack-decoding", False),
        ("pip install -e '.[test]'", False),
        (".venv/bin/backtrack serve --model x", False),
    ],
)
def test_the_pattern_tells_right_from_wrong(line: str, wrong: bool) -> None:
    assert bool(WRONG.search(line)) is wrong


def test_no_install_command_names_another_package() -> None:
    found = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group()}"
        for path, text in _texts()
        for match in WRONG.finditer(text)
    ]
    assert not found, "install commands naming the wrong package:\n" + "\n".join(found)


def test_the_distribution_and_the_quick_start() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^name = "backtrack-decoding"$', pyproject, re.MULTILINE)
    assert re.search(r'^backtrack = "backtrack.cli:main"$', pyproject, re.MULTILINE)
    assert "pip install backtrack-decoding" in (REPO / "README.md").read_text()

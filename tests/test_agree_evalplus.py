"""scripts/agree_evalplus.py: reading a result directory into unique completions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "agree_evalplus.py"


def _script():
    spec = importlib.util.spec_from_file_location("agree_evalplus", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unique_completions_keep_their_first_verdict_and_weight(tmp_path: Path) -> None:
    agree = _script()
    rows = [
        {
            "config": "base",
            "run": 0,
            "task_id": "HumanEval/1",
            "completion": "a",
            "passed": False,
            "status": "timeout",
        },
        {
            "config": "base",
            "run": 1,
            "task_id": "HumanEval/1",
            "completion": "a",
            "passed": True,
            "status": "passed",
        },
        {
            "config": "base",
            "run": 0,
            "task_id": "HumanEval/2",
            "completion": "a",
            "passed": True,
            "status": "passed",
        },
    ]
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "humaneval-plus"}))
    lines = [json.dumps(r) for r in rows] + ['{"truncated":']
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    meta, records, _ = agree.read_directory(tmp_path)
    assert meta["dataset"] == "humaneval-plus" and len(records) == 3
    verdicts, weight = agree.stored_verdicts(records)
    assert verdicts[("HumanEval/1", "a")]["status"] == "timeout"
    assert weight[("HumanEval/1", "a")] == 2 and weight[("HumanEval/2", "a")] == 1

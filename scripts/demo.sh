#!/usr/bin/env bash
# The main job: a quick, honest comparison on the default model (see README).
set -euo pipefail
out="${1:-runs/demo}"
bin=.venv/bin
$bin/backtrack models
echo
echo "== backtrack generate (default model, probability trend) =="
$bin/backtrack generate --model qwen2.5-coder-0.5b-instruct --operator probability-trend \
  --temperature 0.5 --top-k 50 --seed 1 --max-new-tokens 96 --stop $'\ndef ' \
  --prompt $'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""\n'
